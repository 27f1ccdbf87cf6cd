"""Runs Google's official gRPC client (google-ai-generativelanguage) against a gateway.

Executed in a subprocess by test_official_client.py: the official package defines the
same message names as generated/, so the two cannot share one process.
Usage: python official_client_script.py HOST:PORT [generate [v1beta|v1] | tune]
-> prints a JSON report. `generate` uses the v1beta client unless told v1.
"""

import importlib
import json
import sys

import grpc
from google.ai import generativelanguage_v1beta as glm
from google.ai.generativelanguage_v1beta.services.model_service.transports import (
    ModelServiceGrpcTransport,
)
from google.api_core import exceptions
from google.rpc import error_details_pb2


def clients(target: str, version: str):
    """The version's client package and its two clients, over one plain channel."""
    api = importlib.import_module(f"google.ai.generativelanguage_{version}")
    channel = grpc.insecure_channel(target)
    generative_transports = importlib.import_module(
        f"{api.__name__}.services.generative_service.transports"
    )
    model_transports = importlib.import_module(f"{api.__name__}.services.model_service.transports")
    generative = api.GenerativeServiceClient(
        transport=generative_transports.GenerativeServiceGrpcTransport(channel=channel)
    )
    models = api.ModelServiceClient(
        transport=model_transports.ModelServiceGrpcTransport(channel=channel)
    )
    return api, generative, models


def main(target: str, version: str = "v1beta") -> dict:
    api, generative, models = clients(target, version)
    contents = [api.Content(role="user", parts=[api.Part(text="official client [[chunks:3]]")])]
    report: dict = {"version": version}

    response = generative.generate_content(model="models/gemini-2.5-flash", contents=contents)
    report["generate_text"] = response.candidates[0].content.parts[0].text
    report["generate_finish"] = response.candidates[0].finish_reason.name
    report["generate_total_tokens"] = response.usage_metadata.total_token_count

    stream = generative.stream_generate_content(
        request=api.GenerateContentRequest(model="models/gemini-2.5-flash", contents=contents)
    )
    report["stream_texts"] = [chunk.candidates[0].content.parts[0].text for chunk in stream]

    counted = generative.count_tokens(model="models/gemini-2.5-flash", contents=contents)
    report["count_tokens"] = counted.total_tokens

    report["models"] = [m.name for m in models.list_models(request=api.ListModelsRequest())]
    report["model"] = models.get_model(name="models/gemini-2.5-flash").name

    embedded = generative.embed_content(model="models/text-embedding-004", content=contents[0])
    report["embedding_size"] = len(embedded.embedding.values)

    quota = [api.Content(role="user", parts=[api.Part(text="[[fault:429]]")])]
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


def tune(target: str) -> dict:
    """create_tuned_model(...).result(): polls google.longrunning.Operations on the gateway."""
    channel = grpc.insecure_channel(target)
    models = glm.ModelServiceClient(transport=ModelServiceGrpcTransport(channel=channel))
    examples = [glm.TuningExample(text_input=str(n), output=str(n + 1)) for n in range(1, 8)] + [
        glm.TuningExample(text_input="seven", output="eight")
    ]
    tuned_model = glm.TunedModel(
        display_name="Official Increment",
        base_model="models/gemini-1.5-flash-001-tuning",
        tuning_task=glm.TuningTask(
            hyperparameters=glm.Hyperparameters(epoch_count=2, batch_size=4),
            training_data=glm.Dataset(examples=glm.TuningExamples(examples=examples)),
        ),
    )
    operation = models.create_tuned_model(tuned_model=tuned_model)
    result = operation.result(timeout=60)
    metadata = operation.metadata
    return {
        "operation": operation.operation.name,
        "name": result.name,
        "state": result.state.name,
        "snapshots": len(result.tuning_task.snapshots),
        "metadata_type": type(metadata).__name__,
        "metadata_total_steps": metadata.total_steps,
        "metadata_snapshots": len(metadata.snapshots),
        "last_loss": metadata.snapshots[-1].mean_loss if metadata.snapshots else None,
    }


if __name__ == "__main__":
    command = sys.argv[2] if len(sys.argv) > 2 else "generate"
    if command == "tune":
        report = tune(sys.argv[1])
    else:
        report = main(sys.argv[1], *sys.argv[3:4])
    print(json.dumps(report))
