"""The console's workflows in Chromium, against the real gateway, emulator and seeded store:
filter the logs, select rows, create a dataset, export it in every format (the files are read
back), read one log as a conversation, re-run a dataset and see the comparison, switch logging
off and see new calls not logged (and back on, with the live tail), the usage chart stacked by a
label with its CSV, and a tuned model's loss curve and live tuning progress."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest

from gemini_gateway.client.gateway_client import GatewayClient, text_request
from gemini_gateway.emulator.tuning import TUNING_KEY
from gemini_gateway.generated.google.ai.generativelanguage.v1beta import (
    model_service_pb2,
    model_service_pb2_grpc,
    tuned_model_pb2,
)
from gemini_gateway.server.app import start_gateway
from gemini_gateway.server.config import Settings
from tests.browser.conftest import FLASH, PRO, SEED_CALLS, Console, until

pytestmark = pytest.mark.asyncio(loop_scope="session")

_ids = itertools.count()
RERUN_DELAY_MS = 1000
SEARCH_PROMPTS = {prompt for _, prompt, labels in SEED_CALLS if labels.get("team") == "search"}


async def rows(page: Any) -> Any:
    return page.locator("main table tbody tr:not(:has(td.empty))")


async def row_count(page: Any, expected: int) -> None:
    """Waits until the logs table shows `expected` rows."""
    table_rows = await rows(page)
    await until(lambda: _count_is(table_rows, expected))


async def _count_is(locator: Any, expected: int) -> bool:
    return await locator.count() == expected


async def download(page: Any, button_name: str) -> tuple[str, str]:
    """Clicks a download button; (the file's suggested name, its text)."""
    async with page.expect_download() as info:
        await page.get_by_role("button", name=button_name).click()
    file = await info.value
    path = await file.path()
    text = await asyncio.to_thread(Path(path).read_text, encoding="utf-8")
    return file.suggested_filename, text


async def shot(page: Any, screenshots: Path, name: str) -> None:
    await page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)


# --- logs, selection, datasets, exports -----------------------------------------------------


async def test_filter_select_create_dataset_and_export(
    page: Any, console: Console, screenshots: Path
) -> None:
    await page.goto("/#/logs")
    await row_count(page, console.seeded["log_count"])
    await page.get_by_text("Development mode").wait_for()
    first_rows = await (await rows(page)).all_inner_texts()
    assert "weather" in first_rows[0] and "Where is my refund" in first_rows[-1]  # newest first

    # Filter: property Label, key team, value search; the composed AIP-160 filter is shown.
    await page.get_by_label("Property").select_option("label")
    await page.locator("select:has(option[value=team])").wait_for(state="attached")
    await page.get_by_label("Label key").select_option("team")
    await page.get_by_label("Label value").fill("search")
    await page.get_by_role("button", name="Add to filter").click()
    assert await page.get_by_label("Filter (AIP-160, editable)").input_value() == (
        'labels.team = "search"'
    )
    await row_count(page, len(SEARCH_PROMPTS))
    assert "filter=labels.team" in page.url
    texts = await (await rows(page)).all_inner_texts()
    assert all("team=search" in text for text in texts)

    # Select all rows, then untick one: three selected.
    await page.get_by_label("Select every log on this page").check()
    await page.get_by_text(f"{len(SEARCH_PROMPTS)} selected").wait_for()
    last = (await rows(page)).last
    await last.get_by_role("checkbox").uncheck()
    await page.get_by_text(f"{len(SEARCH_PROMPTS) - 1} selected").wait_for()
    unticked = await last.locator("td.preview").inner_text()
    chosen = SEARCH_PROMPTS - {unticked}
    await shot(page, screenshots, "logs-filtered-selected")

    await page.get_by_role("button", name="Create dataset…").click()
    dialog = page.get_by_role("dialog", name="Create dataset")
    await dialog.get_by_label("Name").fill("Search calls")
    await dialog.get_by_label("Description (optional)").fill("Calls of the search team")
    await dialog.get_by_role("button", name="Create dataset").click()
    await page.get_by_text("Dataset “Search calls” created with 3 logs").wait_for()
    await page.get_by_role("link", name="Open the dataset").click()

    await page.get_by_role("heading", name="Search calls", level=1).wait_for()
    await page.get_by_text("Calls of the search team").wait_for()
    await row_count(page, len(chosen))
    dataset_id = page.url.rsplit("/", 1)[1]
    await shot(page, screenshots, "dataset")

    name, text = await download(page, "Download CSV")
    assert name.endswith(".csv")
    table = list(csv.DictReader(io.StringIO(text)))
    assert {row["prompt"] for row in table} == chosen
    assert all(row["status"] == "OK" and row["response"] for row in table)

    name, text = await download(page, "Download JSONL (request/response pairs)")
    lines = [json.loads(line) for line in text.splitlines()]
    assert name.endswith(".jsonl") and len(lines) == len(chosen)
    assert all(line["request"]["contents"] and line["response"]["candidates"] for line in lines)
    assert {line["labels"]["team"] for line in lines} == {"search"}

    name, text = await download(page, "Download Batch API input (JSONL)")
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == len(chosen) and all(line["key"] and line["request"] for line in lines)

    name, text = await download(page, "Download Tuning examples (JSONL)")
    lines = [json.loads(line) for line in text.splitlines()]
    assert {line["text_input"] for line in lines} == chosen
    assert all(line["output"] for line in lines)

    # The dataset is listed, and its logs say they belong to it.
    await page.goto("/#/datasets")
    await page.get_by_role("link", name="Search calls").wait_for()
    await shot(page, screenshots, "datasets")
    listing = await console.face(
        "GET", f"/v1/projects/-/logs?filter=dataset%20%3D%20%22{dataset_id}%22"
    )
    assert {log["promptPreview"] for log in listing["logs"]} == chosen


async def test_log_detail_conversation(page: Any, console: Console, screenshots: Path) -> None:
    await page.goto('/#/logs?filter=labels.team%20%3D%20"weather"')
    await row_count(page, 1)
    await (await rows(page)).first.get_by_role("link").click()

    await page.get_by_role("heading", name="Conversation").wait_for()
    conversation = page.get_by_role("list", name="Conversation, in order")
    turns = conversation.locator(":scope > li")
    assert await turns.count() == 5
    texts = await turns.all_inner_texts()
    assert texts[0].startswith("System instruction") and "terse weather assistant" in texts[0]
    assert texts[1].startswith("User") and "Weather in Lisbon?" in texts[1]
    assert "Function call: get_weather" in texts[2] and '"city": "Lisbon"' in texts[2]
    assert "Function response: get_weather" in texts[3] and "temperature_c" in texts[3]
    assert texts[4].startswith("Response") and "finish reason STOP" in texts[4]
    await page.get_by_text("generationConfig.temperature").wait_for()
    for figure in ("Latency", "Prompt tokens", "Total tokens", "Finish reason"):
        await page.get_by_text(figure, exact=True).wait_for()

    toggle = page.get_by_role("button", name="Show raw JSON")
    await toggle.click()
    raw = page.get_by_label("Raw JSON of the log")
    await raw.wait_for()
    assert (
        await page.get_by_role("button", name="Hide raw JSON").get_attribute("aria-expanded")
        == "true"
    )
    log = json.loads(await raw.inner_text())
    assert log["request"]["systemInstruction"]["parts"][0]["text"].startswith("You are a terse")
    await shot(page, screenshots, "log-detail")

    # The keyboard reaches the page's controls in order: breadcrumb link, then the toggle.
    await page.get_by_role("link", name="Logs", exact=True).last.focus()
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Hide raw JSON"


# --- re-runs ---------------------------------------------------------------------------------


async def test_rerun_shows_comparison(page: Any, console: Console, screenshots: Path) -> None:
    billing = [
        name
        for prompt, name in console.seeded["logs"].items()
        if prompt in ("Where is my refund for order 1182?", "Explain invoice line 4")
    ]
    dataset = await console.face(
        "POST",
        "/v1/projects/-/datasets",
        {"dataset": {"displayName": "Billing questions"}, "logNames": billing},
    )
    dataset_id = dataset["name"].rsplit("/", 1)[1]
    await page.goto(f"/#/datasets/{dataset_id}")
    await page.get_by_role("heading", name="Billing questions").wait_for()

    watched: list[int] = []
    page.on("response", lambda r: watched.append(r.status) if ":watch" in r.url else None)
    await page.get_by_label("Model").fill(PRO)
    # The emulator holds each re-run call DELAY ms (a magic token of the system instruction),
    # one call at a time: the run stays RUNNING long enough to be seen progressing.
    await page.get_by_label("System instruction override (optional)").fill(
        f"Answer in one short sentence. [[fault:headers_delay:{RERUN_DELAY_MS}]]"
    )
    await page.get_by_label("Temperature override (optional)").fill("0.5")
    await page.get_by_label("Concurrency (direct mode)").fill("1")
    await page.get_by_role("button", name="Start re-run").click()

    await page.wait_for_url(re.compile(r"/runs/"))
    await page.get_by_text(re.compile(r"^[01] of 2 requests answered…$")).wait_for()
    await page.locator(".badge", has_text=re.compile("^(PENDING|RUNNING)$")).wait_for()
    await page.get_by_text("SUCCEEDED", exact=True).wait_for(timeout=20_000)
    assert watched and set(watched) == {200}  # followed live through WatchOperation
    await page.get_by_text("2 of 2 requests answered").wait_for()
    results = page.locator("li.result")
    await until(lambda: _count_is(results, 2))
    for result in await results.all():
        sides = result.locator(".compare-side")
        assert await sides.count() == 2
        original, rerun = await sides.all_inner_texts()
        assert original.startswith("Original") and FLASH in original
        assert rerun.startswith("Re-run") and PRO in rerun
    assert await page.locator("li.result ins").count() > 0  # the re-run's own words, marked
    overrides = page.locator("dl.pairs", has=page.get_by_text("System instruction"))
    await overrides.get_by_text("Answer in one short sentence.").wait_for()
    for figure in ("Mean similarity", "Cost (orig. → re-run)", "Median latency (orig. → re-run)"):
        await page.get_by_text(figure).wait_for()
    await shot(page, screenshots, "run")

    # The dataset lists the run.
    await page.get_by_role("link", name=dataset_id).click()
    await page.get_by_role("heading", name="Runs").wait_for()
    await page.locator("td .badge", has_text="SUCCEEDED").wait_for()


# --- logging settings and the live tail ------------------------------------------------------


async def test_logging_off_then_live_tail(page: Any, console: Console, screenshots: Path) -> None:
    probe = f"probe{next(_ids)}"
    try:
        await page.goto("/#/settings")
        await page.get_by_text("Logs kept", exact=True).wait_for()  # the settings are read
        switch = page.get_by_label("Log generate calls of this project")
        assert await switch.is_checked()
        await switch.uncheck()
        await page.get_by_role("button", name="Save settings").click()
        await page.get_by_text("Saved: logging is off.").wait_for()
        await shot(page, screenshots, "settings-off")

        await console.generate(FLASH, "Not to be logged", {"probe": probe, "phase": "off"})
        await console.flush()
        await page.goto(f'/#/logs?filter=labels.probe%20%3D%20"{probe}"')
        await page.get_by_text("No logs match this filter.").wait_for()

        await page.goto("/#/settings")
        await page.get_by_text("Logs kept", exact=True).wait_for()  # the settings are read
        switch = page.get_by_label("Log generate calls of this project")
        assert not await switch.is_checked()
        await switch.check()
        await page.get_by_role("button", name="Save settings").click()
        await page.get_by_text("Saved: logging is on.").wait_for()

        # Live: a new call shows up at the top without reloading.
        await page.goto(f'/#/logs?filter=labels.probe%20%3D%20"{probe}"')
        await page.get_by_text("No logs match this filter.").wait_for()
        await page.get_by_label("Live").check()
        await page.get_by_text("following new logs").wait_for()
        await console.generate(FLASH, "Logged live", {"probe": probe, "phase": "on"})
        await row_count(page, 1)
        assert "phase=on" in await (await rows(page)).first.inner_text()
        await page.get_by_text("1 new").wait_for()
        await shot(page, screenshots, "logs-live")
        await page.get_by_label("Live").uncheck()
    finally:
        await console.face("PATCH", "/v1/projects/-/loggingSettings", {"enabled": True})


# --- usage -----------------------------------------------------------------------------------


async def test_usage_stacked_by_label(page: Any, console: Console, screenshots: Path) -> None:
    await page.goto("/#/usage")
    await page.get_by_role("heading", name="Usage", level=1).wait_for()
    await page.locator("#main svg rect.bar").first.wait_for()
    stack = page.get_by_label("Stack by", exact=True)
    await page.locator("option[value='labels.team']").wait_for(state="attached")
    await stack.select_option("labels.team")

    await page.wait_for_url(re.compile(r"groupBy=labels\.team"))
    teams = {"search", "billing", "support", "weather"}
    bars = page.locator("#main svg rect.bar")
    await until(lambda: _series(bars, teams))
    legend = page.get_by_role("list", name="Legend")
    assert teams <= set((await legend.inner_text()).split("\n"))
    table = page.get_by_role("table", name=re.compile("Totals per labels.team"))
    body = await table.locator("tbody th").all_inner_texts()
    assert teams <= set(body)
    await shot(page, screenshots, "usage")

    name, text = await download(page, "Download CSV")
    assert name == "usage-day-by-labels-team.csv"
    lines = list(csv.DictReader(io.StringIO(text)))
    assert teams <= {line["labels.team"] for line in lines}
    footer = await table.locator("tfoot td").all_inner_texts()
    assert sum(int(line["requests"]) for line in lines) == int(footer[0].replace(",", ""))

    # Measure tokens, by the hour: the same groups.
    await page.get_by_label("Buckets", exact=True).select_option("HOUR")
    await page.get_by_label("Measure", exact=True).select_option("tokens")
    await page.wait_for_url(re.compile(r"metric=tokens"))
    await until(lambda: _series(bars, teams))
    await page.get_by_role(
        "img", name=re.compile("Total tokens per hour, stacked by labels.team")
    ).wait_for()


async def _series(bars: Any, expected: set[str]) -> bool:
    names = await bars.evaluate_all("(rects) => rects.map((r) => r.dataset.series)")
    return expected <= set(names)


# --- tuned models ----------------------------------------------------------------------------


async def test_tuned_model_loss_curve(page: Any, console: Console, screenshots: Path) -> None:
    model = await console.face("GET", "/v1beta/tunedModels/console-increment")
    snapshots = model["tuningTask"]["snapshots"]
    assert len(snapshots) > 3

    await page.goto("/#/tuned-models")
    row = page.locator("tr", has_text="Console increment")
    await row.locator(".badge", has_text="ACTIVE").wait_for()
    await shot(page, screenshots, "tuned-models")
    await row.get_by_role("link", name="Console increment").click()

    await page.get_by_role("heading", name="Console increment", level=1).wait_for()
    curve = page.get_by_role("img", name=re.compile("Loss curve"))
    await curve.wait_for()
    assert await curve.locator("path.line").count() == 1
    assert await curve.locator("circle.point").count() == len(snapshots)
    await page.get_by_text("Epochs").wait_for()
    assert await page.locator("dt:text-is('Batch size') + dd").inner_text() == "2"
    await shot(page, screenshots, "tuned-model")


async def test_tuning_progress_is_live(page: Any, console: Console, screenshots: Path) -> None:
    tuning = console.emulator.app[TUNING_KEY]
    saved, tuning.tuning_seconds = tuning.tuning_seconds, 3.0
    try:
        models = model_service_pb2_grpc.ModelServiceStub(console.channel)
        operation = await models.CreateTunedModel(
            model_service_pb2.CreateTunedModelRequest(
                tuned_model_id=f"live-{next(_ids)}",
                tuned_model=tuned_model_pb2.TunedModel(
                    display_name="Live tuning",
                    base_model="models/gemini-1.5-flash-001-tuning",
                    tuning_task=tuned_model_pb2.TuningTask(
                        hyperparameters=tuned_model_pb2.Hyperparameters(
                            epoch_count=5, batch_size=1
                        ),
                        training_data=tuned_model_pb2.Dataset(
                            examples=tuned_model_pb2.TuningExamples(
                                examples=[
                                    tuned_model_pb2.TuningExample(
                                        text_input=str(n), output=str(n * 2)
                                    )
                                    for n in range(1, 5)
                                ]
                            )
                        ),
                    ),
                ),
            )
        )
    finally:
        tuning.tuning_seconds = saved
    model_id = operation.name.split("/")[1]
    await page.goto(f"/#/tuned-models/{model_id}")  # its operation is found (ListOperations)
    progress = page.get_by_role("progressbar", name="Tuning progress")
    await progress.wait_for()
    await page.get_by_text(re.compile(r"Tuning: step \d+ of 20")).wait_for()
    await page.get_by_text(operation.name, exact=True).wait_for()
    await page.locator(".badge", has_text="ACTIVE").wait_for(timeout=15_000)
    await page.get_by_text("Done: step 20 of 20 (100 %)").wait_for()
    assert await page.locator("circle.point").count() == 20
    await shot(page, screenshots, "tuning-live")


# --- auth ------------------------------------------------------------------------------------


async def test_token_is_kept_for_the_tab_and_sent(page: Any, console: Console) -> None:
    await page.goto("/#/datasets")
    await page.get_by_label("Access token").fill("secret-token-1")
    async with page.expect_request(re.compile(r"/v1/projects/-/datasets")) as sent:
        await page.get_by_role("button", name="Use token").click()
    request = await sent.value
    assert request.headers["authorization"] == "Bearer secret-token-1"
    assert await page.evaluate("sessionStorage.getItem('gemini-gateway-console.token')") == (
        "secret-token-1"
    )
    assert await page.get_by_label("Access token").input_value() == ""  # not left on screen
    await page.get_by_text("Token in use for this tab").wait_for()
    await page.get_by_role("button", name="Forget").click()
    await page.get_by_text("No token").wait_for()
    assert await page.evaluate("sessionStorage.getItem('gemini-gateway-console.token')") is None


# --- paging, selecting every page, the limit banner ------------------------------------------


async def test_paging_select_every_page_and_limit_banner(
    page: Any, console: Console, screenshots: Path
) -> None:
    await page.goto('/#/logs?pageSize=3&filter=labels.team%20%3D%20"search"')
    await row_count(page, 3)
    first_page = await (await rows(page)).all_inner_texts()
    await page.get_by_role("button", name="Older →").click()
    await row_count(page, len(SEARCH_PROMPTS) - 3)
    await page.get_by_text("Page 2").wait_for()
    await page.get_by_role("button", name="← Newer").click()
    await row_count(page, 3)
    assert await (await rows(page)).all_inner_texts() == first_page

    # Every row of this page, then every log the filter matches, on every page.
    await page.get_by_label("Select every log on this page").check()
    await page.get_by_role("button", name="Select every log matching this filter").click()
    await page.get_by_text("All logs matching this filter are selected, on every page.").wait_for()
    await page.get_by_role("button", name="Create dataset…").click()
    dialog = page.get_by_role("dialog", name="Create dataset")
    await dialog.get_by_text('From every log matching “labels.team = "search"”.').wait_for()
    await dialog.get_by_label("Name").fill("Every search call")
    await dialog.get_by_role("button", name="Create dataset").click()
    await page.get_by_text(
        f"Dataset “Every search call” created with {len(SEARCH_PROMPTS)} logs"
    ).wait_for()

    # At its limit (STOP_LOGGING), the project's logs page says so and offers to delete.
    settings = await console.face("GET", "/v1/projects/-/loggingSettings")
    try:
        await console.face(
            "PATCH", "/v1/projects/-/loggingSettings", {"maxLogs": int(settings["logCount"])}
        )
        await page.goto("/#/logs")
        banner = page.get_by_role("alert").filter(has_text="Log limit reached")
        await banner.wait_for()
        await banner.get_by_role("button", name="Delete logs…").wait_for()
        await shot(page, screenshots, "logs-limit-reached")
    finally:
        await console.face(
            "PATCH", "/v1/projects/-/loggingSettings", {"maxLogs": int(settings["maxLogs"])}
        )


# --- accessibility basics --------------------------------------------------------------------

UNNAMED_CONTROLS = """() => [...document.querySelectorAll(
    "main input, main select, main textarea, main button, header input, header button, main a")]
  .filter((el) => !el.closest("[hidden]") && el.type !== "hidden")
  .filter((el) => {
    const labelled = (el.labels && el.labels.length) || el.getAttribute("aria-label")
      || el.getAttribute("aria-labelledby");
    const text = el.textContent.trim();
    return !(labelled || (["BUTTON", "A"].includes(el.tagName) && text));
  })
  .map((el) => el.outerHTML.slice(0, 120))"""


async def test_every_control_has_a_name(page: Any, console: Console) -> None:
    dataset = (await console.face("GET", "/v1/projects/-/datasets"))["datasets"][0]
    log = next(iter(console.seeded["logs"].values()))
    # Each page, and what shows that its data has arrived.
    routes = {
        "/#/logs": "main tbody tr a",
        f"/#/logs/{log.rsplit('/', 1)[1]}": "main ol.conversation",
        "/#/datasets": "main tbody tr a",
        f"/#/datasets/{dataset['name'].rsplit('/', 1)[1]}": "main tbody tr a",
        "/#/usage": "main tfoot th",
        "/#/tuned-models": "main tbody tr a",
        "/#/tuned-models/console-increment": "main svg.chart",
        "/#/settings": "main dt:text-is('Logs kept')",
    }
    for route, loaded in routes.items():
        await page.goto(route)
        await page.locator(loaded).first.wait_for()
        assert await page.evaluate(UNNAMED_CONTROLS) == [], route
        assert await page.locator("main h1").count() == 1, route


# --- beside TLS ------------------------------------------------------------------------------


async def test_the_console_over_https_beside_tls(
    browser: Any, console: Console, pki: Path, tmp_path: Path
) -> None:
    """A gateway that serves TLS serves its console over HTTPS with the same certificate: the
    settings load and the live tail follows a new call, through the JSON face's calls."""
    gateway = await start_gateway(
        Settings(
            port=0,
            upstream="emulator",
            upstream_url=console.emulator.url,
            logging_enabled=True,
            store_url=f"sqlite+aiosqlite:///{tmp_path}/tls.db",
            console_port=0,
            tls_cert_file=pki / "server.crt",
            tls_key_file=pki / "server.key",
        )
    )
    assert gateway.console is not None and gateway.console.url.startswith("https://")
    # Chromium does not know the test CA: the certificate is what the other tests check.
    context = await browser.new_context(base_url=gateway.console.url, ignore_https_errors=True)
    context.set_default_timeout(10_000)
    tab = await context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    try:
        await tab.goto("/#/settings")
        await tab.get_by_text("Logs kept", exact=True).wait_for()  # the settings are read
        await tab.goto("/#/logs")
        await tab.get_by_text("No logs yet.", exact=False).wait_for()
        await tab.get_by_label("Live").check()
        await tab.get_by_text("following new logs").wait_for()
        ca = (pki / "ca.crt").read_bytes()
        async with GatewayClient(gateway.target, root_certificates=ca) as client:
            await client.generate(text_request(FLASH, "Over TLS", {"probe": "tls"}))
        await row_count(tab, 1)
        assert "probe=tls" in await (await rows(tab)).first.inner_text()
    finally:
        await context.close()
        await gateway.stop(0)
    assert not errors, f"script errors in the console: {errors}"
