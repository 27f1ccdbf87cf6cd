// A re-run: live progress while it runs (WatchOperation), then original and re-run side by
// side with the text differences marked, tokens, cost, latency and similarity.

import { api } from "../api.js";
import { announce, errorBanner, fill, h } from "../dom.js";
import { contentText, lastSegment, num, showCost, showDuration, showInt, showPercent, showTime, statusName } from "../format.js";
import { diffSides } from "../diff.js";
import { runStateBadge } from "./datasets.js";

const POLL_MS = 1000;
const DONE = new Set(["SUCCEEDED", "FAILED"]);

function fact(label, value) {
  return h("div", { class: "fact" }, h("dt", null, label), h("dd", null, value));
}

function pair(original, rerun) {
  return `${original} → ${rerun}`;
}

function summaryFacts(run) {
  const s = run.summary || {};
  const originalTokens = s.originalTokens || {};
  const rerunTokens = s.rerunTokens || {};
  return h(
    "dl",
    { class: "facts", "aria-label": "Summary" },
    fact("Requests", showInt(s.requestCount)),
    fact("Answered", showInt(s.completedCount)),
    fact("Failed", showInt(s.failedCount)),
    fact("Same text", `${showInt(s.sameTextCount)} of ${showInt(s.completedCount)}`),
    fact("Mean similarity", showPercent(s.meanTextSimilarity)),
    fact("Total tokens (orig. → re-run)", pair(showInt(originalTokens.total), showInt(rerunTokens.total))),
    fact("Output tokens (orig. → re-run)", pair(showInt(originalTokens.candidates), showInt(rerunTokens.candidates))),
    fact("Cost (orig. → re-run)", pair(showCost(s.originalCost), showCost(s.rerunCost))),
    fact("Median latency (orig. → re-run)", pair(showDuration(s.originalLatencyP50), showDuration(s.rerunLatencyP50))),
  );
}

function side(title, output, text) {
  const out = output || {};
  const tokens = out.tokens || {};
  return h(
    "div",
    { class: "compare-side" },
    h("h4", null, title, out.model ? h("span", { class: "muted mono" }, ` · ${out.model}`) : null),
    h(
      "p",
      { class: "meta" },
      `${showInt(tokens.total)} tokens (${showInt(tokens.prompt)} in, ${showInt(tokens.candidates)} out) · ` +
        `${showCost(out.estimatedCost)} · ${out.latency ? showDuration(out.latency) : "no latency"}` +
        `${out.finishReason ? ` · ${out.finishReason}` : ""}`,
    ),
    out.error && out.error.code ? h("p", { class: "status bad" }, `${statusName(out.error)}: ${out.error.message || ""}`) : null,
    text,
  );
}

function resultItem(result, index) {
  const original = result.original || {};
  const rerun = result.rerun || {};
  const rerunText = rerun.text || (result.response ? contentText(((result.response.candidates || [])[0] || {}).content) : "");
  const { left, right } = diffSides(original.text || "", rerunText);
  const logId = lastSegment(result.log);
  return h(
    "li",
    { class: "result" },
    h(
      "div",
      { class: "result-head" },
      h("h3", null, `Request ${index + 1}`),
      h("a", { href: `#/logs/${encodeURIComponent(logId)}` }, `log ${logId}`),
      h("span", { class: `badge ${result.sameText ? "ok" : ""}` }, result.sameText ? "same text" : "text differs"),
      h("span", null, `similarity ${showPercent(result.textSimilarity)}`),
    ),
    h("div", { class: "compare" }, side("Original", original, left), side("Re-run", rerun, right)),
  );
}

export function runPage({ main, params, signal }) {
  const datasetId = params.dataset;
  const runId = params.run;
  const head = h("div", null, h("h1", null, `Run ${runId}`));
  const progress = h("div", { class: "progress" });
  const progressText = h("span", { role: "status", "aria-live": "polite" });
  const summary = h("div");
  const overrides = h("div");
  const results = h("div");
  const message = h("div");
  fill(
    main,
    h(
      "nav",
      { class: "breadcrumbs", "aria-label": "Breadcrumbs" },
      h(
        "ol",
        null,
        h("li", null, h("a", { href: "#/datasets" }, "Datasets")),
        h("li", null, h("a", { href: `#/datasets/${encodeURIComponent(datasetId)}` }, datasetId)),
        h("li", { "aria-current": "page" }, `run ${runId}`),
      ),
    ),
    head,
    progress,
    message,
    h("h2", null, "Summary"),
    summary,
    overrides,
    h("h2", null, "Original and re-run, side by side"),
    h("p", { class: "muted" }, "Words only in the original are struck through; words only in the re-run are highlighted."),
    results,
  );

  let shownState = "";
  function showRun(run) {
    const s = run.summary || {};
    const total = num(s.requestCount);
    const done = num(s.completedCount);
    if (run.state !== shownState) {
      fill(
        head,
        h(
          "div",
          { class: "page-head" },
          h("h1", null, `Re-run on ${run.model || "?"}`),
          runStateBadge(run.state),
        ),
        h(
          "p",
          { class: "muted" },
          `${run.mode || "DIRECT"} mode · started ${showTime(run.createTime)}` +
            `${run.endTime ? ` · ended ${showTime(run.endTime)}` : ""}${run.batch ? ` · batch ${run.batch}` : ""}`,
        ),
      );
      shownState = run.state;
    }
    const bar = h("progress", { max: Math.max(total, 1), value: done, "aria-label": "Requests answered" });
    progressText.textContent = `${showInt(done)} of ${showInt(total)} requests answered${DONE.has(run.state) ? "" : "…"}`;
    fill(progress, bar, progressText);
    fill(summary, summaryFacts(run));
    if (run.error && run.error.code) fill(message, errorBanner(new Error(`${statusName(run.error)}: ${run.error.message || ""}`)));
    const pairs = [];
    if (run.systemInstruction) pairs.push(["System instruction", contentText(run.systemInstruction)]);
    if (run.generationConfig) pairs.push(["Generation config", JSON.stringify(run.generationConfig)]);
    fill(
      overrides,
      pairs.length
        ? [h("h2", null, "Overrides"), h("dl", { class: "pairs" }, pairs.flatMap(([k, v]) => [h("dt", null, k), h("dd", { class: "mono" }, v)]))]
        : null,
    );
  }

  function showResults(run) {
    const items = run.results || [];
    fill(
      results,
      items.length
        ? h("ol", { class: "results", style: "list-style: none; padding: 0" }, items.map(resultItem))
        : h("p", { class: "muted" }, DONE.has(run.state) ? "No results." : "Results appear when the run ends."),
    );
  }

  async function full() {
    const run = await api.getRun(datasetId, runId, { signal });
    showRun(run);
    showResults(run);
    return run;
  }

  async function follow(run) {
    const name = run.name || `projects/-/datasets/${datasetId}/runs/${runId}`;
    try {
      for await (const message of api.watchOperation(name, { signal })) {
        const operation = message.operation || {};
        const latest = operation.response || operation.metadata;
        if (latest) showRun(latest);
        if (operation.done) break;
      }
    } catch {
      if (signal.aborted) return;
      // No watch for this operation: poll the run instead.
      let current = run;
      while (!DONE.has(current.state) && !signal.aborted) {
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
        current = await api.getRun(datasetId, runId, { signal });
        showRun(current);
      }
    }
    if (signal.aborted) return;
    const finished = await full();
    announce(`Re-run ${finished.state === "SUCCEEDED" ? "finished" : finished.state.toLowerCase()}`);
  }

  full()
    .then((run) => {
      if (!DONE.has(run.state)) return follow(run);
      return null;
    })
    .catch((caught) => {
      if (caught.name !== "AbortError") fill(message, errorBanner(caught));
    });
}
