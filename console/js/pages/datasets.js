// Datasets: the list, and one dataset with its logs, exports, re-runs and runs.

import { api, decodeBytes } from "../api.js";
import { announce, download, errorBanner, field, fill, formDialog, h, uid } from "../dom.js";
import { knownModels } from "../filterbar.js";
import { lastSegment, num, showInt, showPercent, showTime } from "../format.js";
import { logTable } from "../logtable.js";

export const EXPORT_FORMATS = [
  ["EXPORT_FORMAT_CSV", "CSV", "csv", "text/csv"],
  ["EXPORT_FORMAT_JSONL", "JSONL (request/response pairs)", "jsonl", "application/jsonl"],
  ["EXPORT_FORMAT_BATCH", "Batch API input (JSONL)", "batch.jsonl", "application/jsonl"],
  ["EXPORT_FORMAT_TUNING", "Tuning examples (JSONL)", "tuning.jsonl", "application/jsonl"],
];

const LOGS_PAGE_SIZE = 25;

function breadcrumbs(...items) {
  return h(
    "nav",
    { class: "breadcrumbs", "aria-label": "Breadcrumbs" },
    h(
      "ol",
      null,
      items.map(([text, href], i) =>
        h("li", i === items.length - 1 ? { "aria-current": "page" } : null, href ? h("a", { href }, text) : text),
      ),
    ),
  );
}

export function runStateBadge(state) {
  const kind = state === "SUCCEEDED" ? "ok" : state === "FAILED" ? "bad" : "run";
  return h("span", { class: `badge ${kind}` }, state || "PENDING");
}

// --- the list ----------------------------------------------------------------------------

export function datasetsPage({ main, signal }) {
  const tokens = [""];
  const tbody = h("tbody");
  const newer = h("button", { type: "button", disabled: true }, "← Newer");
  const older = h("button", { type: "button", disabled: true }, "Older →");
  const message = h("div");
  let next = "";
  fill(
    main,
    h("h1", null, "Datasets"),
    h("p", { class: "muted" }, "Datasets are made on the ", h("a", { href: "#/logs" }, "logs page"), ": select logs, then “Create dataset”."),
    message,
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        null,
        h("caption", { class: "visually-hidden" }, "Datasets, newest first"),
        h(
          "thead",
          null,
          h("tr", null, ["Name", "Description", "Logs", "Created", "Updated"].map((c) => h("th", { scope: "col" }, c))),
        ),
        tbody,
      ),
    ),
    h("nav", { class: "pager", "aria-label": "Pages of datasets" }, newer, older),
  );

  async function load() {
    try {
      const answer = await api.listDatasets({ pageSize: 50, pageToken: tokens[tokens.length - 1] }, { signal });
      const datasets = answer.datasets || [];
      next = answer.nextPageToken || "";
      tbody.replaceChildren(
        ...(datasets.length
          ? datasets.map((dataset) => {
              const id = lastSegment(dataset.name);
              return h(
                "tr",
                null,
                h("td", null, h("a", { href: `#/datasets/${encodeURIComponent(id)}` }, dataset.displayName || id)),
                h("td", { class: "preview" }, dataset.description || ""),
                h("td", { class: "num" }, showInt(dataset.logCount)),
                h("td", { class: "nowrap" }, showTime(dataset.createTime)),
                h("td", { class: "nowrap" }, showTime(dataset.updateTime)),
              );
            })
          : [h("tr", null, h("td", { colspan: 5, class: "empty" }, "No datasets yet."))]),
      );
      newer.disabled = tokens.length === 1;
      older.disabled = !next;
    } catch (caught) {
      if (caught.name !== "AbortError") fill(message, errorBanner(caught));
    }
  }
  newer.addEventListener("click", () => {
    tokens.pop();
    load();
  });
  older.addEventListener("click", () => {
    tokens.push(next);
    load();
  });
  load();
}

// --- one dataset -------------------------------------------------------------------------

/** Downloads the dataset in `format`, assembled from the ExportDataset stream. */
async function exportDataset(id, [format, , extension, type], status, signal) {
  const pieces = [];
  let fileName = `${id}.${extension}`;
  let contentType = type;
  let bytes = 0;
  status.textContent = "Exporting…";
  for await (const message of api.exportDataset(id, format, { signal })) {
    if (message.fileName) fileName = message.fileName;
    if (message.contentType) contentType = message.contentType;
    const data = decodeBytes(message.data);
    bytes += data.length;
    pieces.push(data);
    status.textContent = `Exporting… ${showInt(bytes)} bytes`;
  }
  download(new Blob(pieces, { type: contentType }), fileName);
  status.textContent = `Downloaded ${fileName} (${showInt(bytes)} bytes).`;
  announce(`Downloaded ${fileName}`);
}

function modelName(text) {
  const value = text.trim();
  return value.includes("/") ? value : `models/${value}`;
}

function rerunForm(id, navigate) {
  const models = h("datalist", { id: uid("models") });
  knownModels().then((names) => models.replaceChildren(...names.map((value) => h("option", { value }))));
  const model = h("input", { name: "model", required: true, list: models.id, autocomplete: "off", placeholder: "models/gemini-2.5-pro" });
  const system = h("textarea", { name: "systemInstruction", rows: 3 });
  const temperature = h("input", { name: "temperature", type: "number", min: 0, max: 2, step: 0.05 });
  const mode = h(
    "select",
    { name: "mode" },
    h("option", { value: "DIRECT" }, "Direct (through the gateway)"),
    h("option", { value: "BATCH" }, "Batch API"),
  );
  const concurrency = h("input", { name: "concurrency", type: "number", min: 1, max: 64, step: 1, value: 4 });
  const error = h("div");
  const submit = h("button", { type: "submit", class: "primary" }, "Start re-run");
  const form = h(
    "form",
    { "aria-labelledby": "rerun-heading" },
    h(
      "div",
      { class: "form-grid" },
      field("Model", model, "A base or tuned model; the gateway's models are suggested."),
      field("Temperature override (optional)", temperature),
      field("Mode", mode),
      field("Concurrency (direct mode)", concurrency),
    ),
    h("div", { class: "field", style: "max-width: 60rem; margin-top: 0.8rem" }, h("label", { for: (system.id = uid("system")) }, "System instruction override (optional)"), system),
    error,
    h("div", { class: "toolbar" }, submit),
    models,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.replaceChildren();
    submit.disabled = true;
    const body = { model: modelName(model.value), mode: mode.value, concurrency: Number(concurrency.value) || 4 };
    if (system.value.trim()) body.systemInstruction = { parts: [{ text: system.value }] };
    if (temperature.value !== "") body.generationConfig = { temperature: Number(temperature.value) };
    try {
      const operation = await api.rerunDataset(id, body);
      const runName = (operation.metadata && operation.metadata.name) || operation.name;
      announce("Re-run started");
      navigate(`/datasets/${encodeURIComponent(id)}/runs/${encodeURIComponent(lastSegment(runName))}`);
    } catch (caught) {
      fill(error, errorBanner(caught));
      submit.disabled = false;
    }
  });
  return form;
}

function runsTable(id, runs) {
  if (!runs.length) return h("p", { class: "muted" }, "No re-runs yet.");
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      null,
      h("caption", { class: "visually-hidden" }, "Re-runs, newest first"),
      h(
        "thead",
        null,
        h(
          "tr",
          null,
          ["Run", "Model", "Mode", "State", "Started", "Answered", "Same text", "Similarity", "Cost (orig. → re-run)"].map((c) =>
            h("th", { scope: "col" }, c),
          ),
        ),
      ),
      h(
        "tbody",
        null,
        runs.map((run) => {
          const summary = run.summary || {};
          const runId = lastSegment(run.name);
          return h(
            "tr",
            null,
            h("td", null, h("a", { href: `#/datasets/${encodeURIComponent(id)}/runs/${encodeURIComponent(runId)}` }, runId)),
            h("td", { class: "mono" }, run.model),
            h("td", null, run.mode || "DIRECT"),
            h("td", null, runStateBadge(run.state)),
            h("td", { class: "nowrap" }, showTime(run.createTime)),
            h("td", { class: "num" }, `${showInt(summary.completedCount)} / ${showInt(summary.requestCount)}`),
            h("td", { class: "num" }, showInt(summary.sameTextCount)),
            h("td", { class: "num" }, showPercent(summary.meanTextSimilarity)),
            h("td", { class: "num" }, `$${num(summary.originalCost).toFixed(6)} → $${num(summary.rerunCost).toFixed(6)}`),
          );
        }),
      ),
    ),
  );
}

export function datasetPage({ main, params, signal, navigate }) {
  const id = params.dataset;
  const head = h("div", null, h("h1", null, id));
  const message = h("div");
  const logsSlot = h("div", { "aria-live": "polite" });
  const runsSlot = h("div");
  const exportStatus = h("p", { class: "muted", role: "status" });
  const logTokens = [""];
  let nextLogs = "";
  const newer = h("button", { type: "button", disabled: true }, "← Newer");
  const older = h("button", { type: "button", disabled: true }, "Older →");

  const exportButtons = EXPORT_FORMATS.map((format) => {
    const button = h("button", { type: "button", dataset: { format: format[0] } }, `Download ${format[1]}`);
    button.addEventListener("click", async () => {
      for (const b of exportButtons) b.disabled = true;
      try {
        await exportDataset(id, format, exportStatus, signal);
      } catch (caught) {
        if (caught.name !== "AbortError") fill(exportStatus, errorBanner(caught));
      } finally {
        for (const b of exportButtons) b.disabled = false;
      }
    });
    return button;
  });

  const deleteButton = h("button", { type: "button", class: "danger" }, "Delete dataset…");
  deleteButton.addEventListener("click", async () => {
    const confirmBox = h("input", { type: "checkbox", name: "confirm" });
    const done = await formDialog({
      title: "Delete dataset",
      description: "The dataset and its runs are deleted; its logs stay (and expire like any other log).",
      submitLabel: "Delete",
      fields: [h("label", { class: "check" }, confirmBox, "Yes, delete it")],
      onSubmit: async (data) => {
        if (!data.get("confirm")) throw new Error("Tick the box to confirm.");
        await api.deleteDataset(id);
        return true;
      },
    });
    if (done) navigate("/datasets");
  });

  fill(
    main,
    breadcrumbs(["Datasets", "#/datasets"], [id]),
    head,
    message,
    h("section", { "aria-labelledby": "export-heading" }, h("h2", { id: "export-heading" }, "Export"), h("div", { class: "toolbar" }, exportButtons), exportStatus),
    h("section", { "aria-labelledby": "rerun-heading" }, h("h2", { id: "rerun-heading" }, "Re-run"), h("p", { class: "muted" }, "Replays every logged request of the dataset against a model and keeps each new answer beside the original."), rerunForm(id, navigate)),
    h("section", { "aria-labelledby": "runs-heading" }, h("h2", { id: "runs-heading" }, "Runs"), runsSlot),
    h(
      "section",
      { "aria-labelledby": "dataset-logs-heading" },
      h("h2", { id: "dataset-logs-heading" }, "Logs in this dataset"),
      logsSlot,
      h("nav", { class: "pager", "aria-label": "Pages of the dataset's logs" }, newer, older),
    ),
    h("div", { class: "toolbar" }, deleteButton),
  );

  api
    .getDataset(id, { signal })
    .then((dataset) => {
      const crumb = main.querySelector('.breadcrumbs [aria-current="page"]');
      if (crumb && dataset.displayName) crumb.textContent = dataset.displayName;
      fill(
        head,
        h("div", { class: "page-head" }, h("h1", null, dataset.displayName || id)),
        dataset.description ? h("p", null, dataset.description) : null,
        h(
          "dl",
          { class: "facts" },
          h("div", { class: "fact" }, h("dt", null, "Logs"), h("dd", null, showInt(dataset.logCount))),
          h("div", { class: "fact" }, h("dt", null, "Created"), h("dd", null, showTime(dataset.createTime))),
          h("div", { class: "fact" }, h("dt", null, "Updated"), h("dd", null, showTime(dataset.updateTime))),
          h("div", { class: "fact" }, h("dt", null, "Id"), h("dd", { class: "mono" }, id)),
        ),
      );
      document.title = `${dataset.displayName || id} · Gemini gateway`;
    })
    .catch((caught) => {
      if (caught.name !== "AbortError") fill(head, h("h1", null, id), errorBanner(caught));
    });

  async function loadLogs() {
    try {
      const answer = await api.listLogs(
        { filter: `dataset = "${id}"`, pageSize: LOGS_PAGE_SIZE, pageToken: logTokens[logTokens.length - 1] },
        { signal },
      );
      nextLogs = answer.nextPageToken || "";
      fill(logsSlot, logTable(answer.logs || [], "The dataset's logs, newest first"));
      newer.disabled = logTokens.length === 1;
      older.disabled = !nextLogs;
    } catch (caught) {
      if (caught.name !== "AbortError") fill(logsSlot, errorBanner(caught));
    }
  }
  newer.addEventListener("click", () => {
    logTokens.pop();
    loadLogs();
  });
  older.addEventListener("click", () => {
    logTokens.push(nextLogs);
    loadLogs();
  });
  loadLogs();

  api
    .listRuns(id, { pageSize: 20 }, { signal })
    .then((answer) => fill(runsSlot, runsTable(id, answer.runs || [])))
    .catch((caught) => {
      if (caught.name !== "AbortError") fill(runsSlot, errorBanner(caught));
    });
}
