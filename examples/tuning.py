import asyncio
import os

import grpc

from gemini_gateway.client.tuning import (
    CreateTunedModelMetadata,
    TunedModel,
    TuningClient,
    TuningFailed,
    build_tuned_model,
    load_examples,
)

TARGET = os.environ.get("GEMINI_GATEWAY_TARGET", "127.0.0.1:50051")


def show(metadata: CreateTunedModelMetadata) -> None:
    print(f"{metadata.completed_steps}/{metadata.total_steps}")


async def main() -> None:
    async with grpc.aio.insecure_channel(TARGET) as channel:
        tuning = TuningClient(channel, api_key=None)  # or metadata=[("x-goog-api-key", key)]
        model = build_tuned_model(
            load_examples("docs/examples/increment.jsonl"), "Increment", epochs=5, batch_size=4
        )
        operation = await tuning.create(model, tuned_model_id="increment")
        try:
            tuned = await operation.result(timeout=600, on_progress=show)
        except TuningFailed as failure:
            print(failure.code, failure.message)  # from the operation's google.rpc.Status
            return
        print(tuned.name, TunedModel.State.Name(tuned.state))  # tunedModels/increment ACTIVE

        async for item in tuning.list(filter="increment"):
            print(item.name, item.display_name)
        await tuning.update("increment", description="adds one", temperature=0.2)
        await tuning.delete("increment")


asyncio.run(main())
