"""Python client library for the Gemini gRPC gateway (the slim client distribution)."""

from gemini_gateway.client.datasets import DatasetClient, ExportedFile, ExportFormat, LogChange
from gemini_gateway.client.gateway_client import (
    DEFAULT_MODEL,
    DEFAULT_TARGET,
    GatewayClient,
    SyncGatewayClient,
    model_name,
    response_text,
    text_request,
)
from gemini_gateway.client.logs import (
    LogClient,
    LogPage,
    LogTail,
    dataset_name,
    log_name,
    parse_duration,
)
from gemini_gateway.client.runs import RunClient, RunFailed, RunOperation, run_name
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
    "DatasetClient",
    "ExportFormat",
    "ExportedFile",
    "GatewayClient",
    "LabelCount",
    "LogChange",
    "LogClient",
    "LogPage",
    "LogTail",
    "PriceTableInfo",
    "RunClient",
    "RunFailed",
    "RunOperation",
    "SyncGatewayClient",
    "TokenCounts",
    "TuningClient",
    "TuningFailed",
    "TuningOperation",
    "UsageClient",
    "UsageReport",
    "UsageRow",
    "dataset_name",
    "log_name",
    "model_name",
    "parse_duration",
    "parse_since",
    "response_text",
    "run_name",
    "text_request",
]
