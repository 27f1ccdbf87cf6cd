"""Python client library for the Gemini gRPC gateway (the slim client distribution)."""

from gemini_gateway.client.gateway_client import (
    DEFAULT_MODEL,
    DEFAULT_TARGET,
    GatewayClient,
    SyncGatewayClient,
    model_name,
    response_text,
    text_request,
)
from gemini_gateway.client.tuning import TuningClient, TuningFailed, TuningOperation
from gemini_gateway.client.usage import (
    LabelCount,
    PriceTableInfo,
    TokenCounts,
    UsageClient,
    UsageReport,
    UsageRow,
    parse_since,
)

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TARGET",
    "GatewayClient",
    "LabelCount",
    "PriceTableInfo",
    "SyncGatewayClient",
    "TokenCounts",
    "TuningClient",
    "TuningFailed",
    "TuningOperation",
    "UsageClient",
    "UsageReport",
    "UsageRow",
    "model_name",
    "parse_since",
    "response_text",
    "text_request",
]
