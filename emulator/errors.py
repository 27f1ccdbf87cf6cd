"""Errors in the shape Google's API returns them: {"error": {code, message, status, details}}."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gemini_gateway.emulator.wire import json_response

TYPE_PREFIX = "type.googleapis.com/google.rpc."

# google.rpc.Code name -> HTTP status, as Google's HTTP front end maps them.
HTTP_STATUS = {
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}

# google.rpc.Code numbers, used where an error is embedded in an Operation.
RPC_CODE = {
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}

RATE_LIMIT_DOCS = "https://ai.google.dev/gemini-api/docs/rate-limits"


class ApiError(Exception):
    """An error answered as a Google error body; raised by handlers, rendered by middleware."""

    def __init__(
        self,
        status: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []
        self.http_status = http_status or HTTP_STATUS.get(status, 500)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": self.http_status,
            "message": self.message,
            "status": self.status,
        }
        if self.details:
            error["details"] = self.details
        return {"error": error}

    def response(self) -> web.Response:
        return json_response(self.body(), status=self.http_status)


def detail(type_name: str, **fields: Any) -> dict[str, Any]:
    """One entry of `details`, e.g. detail("RetryInfo", retryDelay="7s")."""
    return {"@type": TYPE_PREFIX + type_name, **fields}


def bad_request(message: str, violations: list[tuple[str, str]] | None = None) -> ApiError:
    """400 INVALID_ARGUMENT, with a BadRequest detail when field violations are known."""
    details = []
    if violations:
        details.append(
            detail(
                "BadRequest",
                fieldViolations=[{"field": name, "description": text} for name, text in violations],
            )
        )
    return ApiError("INVALID_ARGUMENT", message, details)


def invalid_field(request_type: str, name: str, description: str) -> ApiError:
    """Google's validation message: '* GenerateContentRequest.contents: contents is not ...'."""
    return bad_request(f"* {request_type}.{name}: {description}\n", [(name, description)])


def not_found(message: str) -> ApiError:
    return ApiError("NOT_FOUND", message)


def unknown_url(path: str) -> ApiError:
    """404 for a path no route serves; the text is what Google's front end says."""
    return not_found(f"The requested URL {path} was not found on this server.")


def method_not_allowed(method: str, path: str) -> ApiError:
    """405 for a verb the path does not take.

    google.rpc has no code for this; UNIMPLEMENTED (the method is not served here) is the
    one that maps sensibly to gRPC, and the HTTP status stays 405.
    """
    return ApiError(
        "UNIMPLEMENTED",
        f"The request method {method} is inappropriate for the URL {path}.",
        http_status=405,
    )


def model_not_found(model: str, version: str, method: str) -> ApiError:
    return not_found(
        f"models/{model} is not found for API version {version}, or is not supported for "
        f"{method}. Call ListModels to see the list of available models and their supported "
        "methods."
    )


def quota_exceeded(model: str, retry_seconds: int = 7) -> ApiError:
    """429 as the free tier returns it: QuotaFailure + Help + RetryInfo."""
    metric = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
    message = (
        "You exceeded your current quota, please check your plan and billing details. "
        f"For more information on this error, head to: {RATE_LIMIT_DOCS}. To monitor your "
        "current usage, head to: https://ai.dev/usage?tab=rate-limit. \n"
        f"* Quota exceeded for metric: {metric}, limit: 10, model: {model}\n"
        f"Please retry in {retry_seconds}.0s."
    )
    return ApiError(
        "RESOURCE_EXHAUSTED",
        message,
        [
            detail(
                "QuotaFailure",
                violations=[
                    {
                        "quotaMetric": metric,
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": model},
                        "quotaValue": "10",
                    }
                ],
            ),
            detail(
                "Help",
                links=[
                    {"description": "Learn more about Gemini API quotas", "url": RATE_LIMIT_DOCS}
                ],
            ),
            detail("RetryInfo", retryDelay=f"{retry_seconds}s"),
        ],
    )


def missing_api_key() -> ApiError:
    return ApiError(
        "PERMISSION_DENIED",
        "Method doesn't allow unregistered callers (callers without established identity). "
        "Please use API Key or other form of API consumer identity to call this API.",
    )


def invalid_api_key() -> ApiError:
    return ApiError(
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
        [
            detail(
                "ErrorInfo",
                reason="API_KEY_INVALID",
                domain="googleapis.com",
                metadata={"service": "generativelanguage.googleapis.com"},
            ),
            detail(
                "LocalizedMessage",
                locale="en-US",
                message="API key not valid. Please pass a valid API key.",
            ),
        ],
    )


# Errors selected by the numeric faults; messages are the ones Google sends for these codes.
_FAULT_ERRORS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: (
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, "
        "login cookie or other valid authentication credential.",
    ),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    409: ("ABORTED", "The operation was aborted."),
    499: ("CANCELLED", "The operation was cancelled."),
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    501: ("UNIMPLEMENTED", "Operation is not implemented, or supported, or enabled."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}

FAULT_HTTP_CODES = frozenset({*_FAULT_ERRORS, 429})


def fault_error(http_code: int, model: str) -> ApiError:
    """The error a numeric fault (`429`, `503`, ...) answers with."""
    if http_code == 429:
        return quota_exceeded(model)
    status, message = _FAULT_ERRORS[http_code]
    return ApiError(status, message, http_status=http_code)


PROXY_ERROR_HTML = """<!DOCTYPE html>
<html lang=en>
  <meta charset=utf-8>
  <title>Error 502 (Server Error)!!1</title>
  <p><b>502.</b> <ins>That's an error.</ins>
  <p>The server encountered a temporary error and could not complete your request.<p>Please \
try again in 30 seconds.  <ins>That's all we know.</ins>
</html>
"""


def proxy_error_page() -> web.Response:
    """What a failing proxy in front of the API answers: 502 with an HTML page."""
    return web.Response(status=502, text=PROXY_ERROR_HTML, content_type="text/html")
