import asyncio
import os

from gemini_gateway.client import GatewayClient, response_text, text_request

TARGET = os.environ.get("GEMINI_GATEWAY_TARGET", "127.0.0.1:50051")


async def main() -> None:
    async with GatewayClient(TARGET) as gateway:
        answer = await gateway.generate(
            text_request("gemini-2.5-flash", "Hi", labels={"team": "search"})
        )
        print(response_text(answer))
        async for chunk in gateway.stream(text_request("gemini-2.5-flash", "Tell me a story")):
            print(response_text(chunk), end="", flush=True)
        print()


asyncio.run(main())
