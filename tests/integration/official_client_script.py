"""Runs Google's official gRPC client (google-ai-generativelanguage) against a gateway.

Executed in a subprocess by test_official_client.py: the official package defines the
same message names as generated/, so the two cannot share one process.
Usage: python official_client_script.py HOST:PORT  -> prints a JSON report.
"""

import json
import sys

import grpc
from google.ai import generativelanguage_v1beta as glm
from google.ai.generativelanguage_v1beta.services.generative_service.transports import (
    GenerativeServiceGrpcTransport,
)
from google.ai.generativelanguage_v1beta.services.model_service.transports import (
    ModelServiceGrpcTransport,
)
from google.api_core import exceptions
from google.rpc import error_details_pb2


def main(target: str) -> dict:
    channel = grpc.insecure_channel(target)
    generative = glm.GenerativeServiceClient(
        transport=GenerativeServiceGrpcTransport(channel=channel)
    )
    models = glm.ModelServiceClient(transport=ModelServiceGrpcTransport(channel=channel))
    contents = [glm.Content(role="user", parts=[glm.Part(text="official client [[chunks:3]]")])]
    report: dict = {}

    response = generative.generate_content(model="models/gemini-2.5-flash", contents=contents)
    report["generate_text"] = response.candidates[0].content.parts[0].text
    report["generate_finish"] = response.candidates[0].finish_reason.name
    report["generate_total_tokens"] = response.usage_metadata.total_token_count

    stream = generative.stream_generate_content(
        request=glm.GenerateContentRequest(model="models/gemini-2.5-flash", contents=contents)
    )
    report["stream_texts"] = [chunk.candidates[0].content.parts[0].text for chunk in stream]

    counted = generative.count_tokens(model="models/gemini-2.5-flash", contents=contents)
    report["count_tokens"] = counted.total_tokens

    report["models"] = [m.name for m in models.list_models(request=glm.ListModelsRequest())]

    quota = [glm.Content(role="user", parts=[glm.Part(text="[[fault:429]]")])]
    try:
        generative.generate_content(model="models/gemini-2.5-flash", contents=quota)
        report["quota_error"] = None
    except exceptions.ResourceExhausted as exc:
        retry = [d for d in exc.details if isinstance(d, error_details_pb2.RetryInfo)]
        report["quota_error"] = {
            "status": exc.grpc_status_code.name,
            "retry_delay_s": retry[0].retry_delay.seconds if retry else None,
        }
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
