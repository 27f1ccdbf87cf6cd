"""The request headers the HTTP face reads besides the bearer token, and their forms.

One place for what http_face.py reads and openapi.py documents: the caller's request id and
W3C trace context, passed on as gRPC metadata, and its deadline, `Grpc-Timeout`.
"""

from __future__ import annotations

# Passed on as gRPC metadata under these names (lower case, as gRPC metadata keys are).
PASSED_HEADERS = ("x-request-id", "traceparent", "tracestate")
# tracestate's limit (W3C: 32 list members of up to 256 characters each may be cut to fit
# 512); a request id is at most 128 characters, a traceparent 55.
PASSED_HEADER_MAX = 512

# The caller's deadline in gRPC's own form (the gRPC over HTTP/2 spec): at most 8 digits and
# a unit, Hours, Minutes, Seconds, milliseconds, microseconds or nanoseconds.
TIMEOUT_HEADER = "Grpc-Timeout"
TIMEOUT_PATTERN = r"([0-9]{1,8})([HMSmun])"
TIMEOUT_UNIT_S = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
