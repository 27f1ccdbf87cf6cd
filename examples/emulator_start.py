import asyncio

import aiohttp

from gemini_gateway.emulator import EmulatorSettings, start_emulator


async def main() -> None:
    handle = await start_emulator(EmulatorSettings(chunk_delay_ms=20))
    try:
        print("emulator at", handle.url)  # http://127.0.0.1:<port>; also handle.port, handle.app
        url = f"{handle.url}/v1beta/models/gemini-2.5-flash:generateContent"
        body = {"contents": [{"parts": [{"text": "Hello"}]}]}
        async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
            answer = await response.json()
        print(answer["candidates"][0]["content"]["parts"][0]["text"])
    finally:
        await handle.close()


asyncio.run(main())
