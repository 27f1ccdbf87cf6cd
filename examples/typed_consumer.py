"""A service that calls the gateway with only the slim client distribution installed.

    pip install ./client
    python examples/typed_consumer.py --target 127.0.0.1:50051

`make lint` type-checks this file with mypy --strict: the generated .pyi stubs give every
message field and stub method a type, so a misspelt field fails the check, not production.
"""

from __future__ import annotations

import argparse
import asyncio

from gemini_gateway.client import GatewayClient, SyncGatewayClient, response_text, text_request
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    generative_service_pb2,
)


def summary(response: generative_service_pb2.GenerateContentResponse) -> str:
    usage = response.usage_metadata
    tokens: int = usage.prompt_token_count + usage.candidates_token_count
    return f"{response_text(response)!r} ({tokens} tokens, {response.model_version})"


async def call_async(target: str) -> None:
    async with GatewayClient(target) as client:
        request = text_request("gemini-2.5-flash", "Hello from a typed consumer")
        request.generation_config.temperature = 0.2
        print("async:", summary(await client.generate(request, timeout=10)))
        async for chunk in client.stream(request, timeout=10):
            print("chunk:", response_text(chunk))


def call_sync(target: str) -> None:
    with SyncGatewayClient(target) as client:
        count = client.count_tokens("gemini-2.5-flash", "How many tokens is this?")
        print("sync: total_tokens =", count.total_tokens)
        print("models:", ", ".join(model.name for model in client.list_models()[:3]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    args = parser.parse_args()
    asyncio.run(call_async(args.target))
    call_sync(args.target)


if __name__ == "__main__":
    main()
