import asyncio
import os

from gemini_gateway.client import UsageClient, parse_since

TARGET = os.environ.get("GEMINI_GATEWAY_TARGET", "127.0.0.1:50051")
TOKEN = os.environ.get("GEMINI_GATEWAY_TOKEN")  # None: a gateway without callers configured


async def main() -> None:
    async with UsageClient(TARGET, token=TOKEN) as usage:
        report = await usage.query(
            ["labels.team", "model"],
            filter='labels.env = "prod"',
            start=parse_since("7d"),  # also "24h", "90m", "2w" or "2026-11-01T00:00:00Z"
            bucket="day",  # or "hour", or None for one row per group
        )
        for row in report.rows:
            cost = row.estimated_cost
            print(row.bucket_start, row.group, row.request_count, row.tokens.total, cost)
        print("total cost:", report.totals.estimated_cost, report.price_table.currency)
        print("prices read on", report.price_table.read_on, "from", report.price_table.source)
        keys = await usage.label_keys()  # [LabelCount(name="team", request_count=10), ...]
        teams = await usage.label_values("team")
        print("label keys:", keys)
        print("teams:", teams)


asyncio.run(main())
