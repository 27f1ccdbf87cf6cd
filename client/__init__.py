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

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TARGET",
    "GatewayClient",
    "SyncGatewayClient",
    "TuningClient",
    "TuningFailed",
    "TuningOperation",
    "model_name",
    "response_text",
    "text_request",
]
