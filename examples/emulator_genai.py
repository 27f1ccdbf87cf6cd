import asyncio

from google import genai
from google.genai import types

from gemini_gateway.emulator import start_emulator


async def main() -> None:
    handle = await start_emulator()
    try:
        client = genai.Client(
            api_key="test-key", http_options=types.HttpOptions(base_url=handle.url)
        )
        # The async API: the emulator serves from this same event loop.
        response = await client.aio.models.generate_content(
            model="gemini-2.5-flash", contents="Hello from google-genai"
        )
        print(response.text)
    finally:
        await handle.close()


asyncio.run(main())
