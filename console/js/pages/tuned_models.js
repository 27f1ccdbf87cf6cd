// Tuned models: the list with their states; one model with its hyperparameters, its loss
// curve (tuningTask.snapshots) and, while it is being tuned, its operation's live progress.

import { api } from "../api.js";
import { announce, errorBanner, fill, h } from "../dom.js";
import { lineChart } from "../charts.js";
import { lastSegment, num, showInt, showTime } from "../format.js";

const POLL_MS = 1000;

function stateBadge(state) {
  const kind = state === "ACTIVE" ? "ok" : state === "FAILED" ? "bad" : "run";
  return h("span", { class: `badge ${kind}` }, state || "STATE_UNSPECIFIED");
}

export function tunedModelsPage({ main, signal }) {
  const tokens = [""];
  let next = "";
  const tbody = h("tbody");
  const message = h("div");
  const newer = h("button", { type: "button", disabled: true }, "← Previous");
  const older = h("button", { type: "button", disabled: true }, "Next →");
  fill(
    main,
    h("h1", null, "Tuned models"),
    message,
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        null,
        h("caption", { class: "visually-hidden" }, "Tuned models"),
        h("thead", null, h("tr", null, ["Name", "Id", "Base model", "State", "Created", "Updated"].map((c) => h("th", { scope: "col" }, c)))),
        tbody,
      ),
    ),
    h("nav", { class: "pager", "aria-label": "Pages of tuned models" }, newer, older),
  );

  async function load() {
    try {
      const answer = await api.listTunedModels({ pageSize: 50, pageToken: tokens[tokens.length - 1] }, { signal });
      const models = answer.tunedModels || [];
      next = answer.nextPageToken || "";
      tbody.replaceChildren(
        ...(models.length
          ? models.map((model) => {
              const id = lastSegment(model.name);
              return h(
                "tr",
                null,
                h("td", null, h("a", { href: `#/tuned-models/${encodeURIComponent(id)}` }, model.displayName || id)),
                h("td", { class: "mono" }, id),
                h("td", { class: "mono" }, model.baseModel || (model.tunedModelSource && model.tunedModelSource.tunedModel) || "—"),
                h("td", null, stateBadge(model.state)),
                h("td", { class: "nowrap" }, showTime(model.createTime)),
                h("td", { class: "nowrap" }, showTime(model.updateTime)),
              );
            })
          : [h("tr", null, h("td", { colspan: 6, class: "empty" }, "No tuned models."))]),
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

function lossCurve(snapshots) {
  const points = (snapshots || [])
    .filter((snapshot) => snapshot.meanLoss !== undefined)
    .map((snapshot) => ({ x: num(snapshot.step), y: num(snapshot.meanLoss), epoch: num(snapshot.epoch) }));
  if (!points.length) return h("p", { class: "muted" }, "No tuning snapshots yet.");
  const last = points[points.length - 1];
  return h(
    "figure",
    { style: "margin: 0" },
    lineChart({
      points,
      xLabel: "step",
      yLabel: "mean loss",
      title: "Loss curve",
      description: `Mean loss over ${points.length} steps, from ${points[0].y.toFixed(4)} at step ${points[0].x} to ${last.y.toFixed(4)} at step ${last.x}.`,
      format: (v) => Number(v).toFixed(3),
    }),
    h(
      "details",
      null,
      h("summary", null, "Loss values"),
      h(
        "table",
        null,
        h("thead", null, h("tr", null, ["Step", "Epoch", "Mean loss"].map((c) => h("th", { scope: "col" }, c)))),
        h(
          "tbody",
          null,
          points.map((p) => h("tr", null, h("td", { class: "num" }, String(p.x)), h("td", { class: "num" }, String(p.epoch)), h("td", { class: "num" }, p.y.toFixed(4)))),
        ),
      ),
    ),
  );
}

function pairs(items) {
  return h(
    "dl",
    { class: "pairs" },
    items.filter(([, v]) => v !== undefined && v !== null && v !== "").flatMap(([k, v]) => [h("dt", null, k), h("dd", null, String(v))]),
  );
}

export function tunedModelPage({ main, params, query, signal }) {
  const id = params.model;
  const head = h("div", null, h("h1", null, id));
  const progress = h("div");
  const curve = h("div");
  const details = h("div");
  const message = h("div");
  fill(
    main,
    h(
      "nav",
      { class: "breadcrumbs", "aria-label": "Breadcrumbs" },
      h("ol", null, h("li", null, h("a", { href: "#/tuned-models" }, "Tuned models")), h("li", { "aria-current": "page" }, id)),
    ),
    head,
    message,
    progress,
    h("h2", null, "Loss curve"),
    curve,
    details,
  );

  function show(model) {
    const task = model.tuningTask || {};
    const hp = task.hyperparameters || {};
    fill(
      head,
      h("div", { class: "page-head" }, h("h1", null, model.displayName || id), stateBadge(model.state)),
      model.description ? h("p", null, model.description) : null,
    );
    fill(curve, lossCurve(task.snapshots));
    fill(
      details,
      h("h2", null, "Hyperparameters"),
      pairs([
        ["Epochs", hp.epochCount],
        ["Batch size", hp.batchSize],
        ["Learning rate", hp.learningRate],
        ["Learning rate multiplier", hp.learningRateMultiplier],
      ]),
      h("h2", null, "Model"),
      pairs([
        ["Name", model.name],
        ["Base model", model.baseModel || (model.tunedModelSource && model.tunedModelSource.tunedModel)],
        ["Temperature", model.temperature],
        ["Top p", model.topP],
        ["Top k", model.topK],
        ["Created", showTime(model.createTime)],
        ["Updated", showTime(model.updateTime)],
        ["Tuning started", task.startTime ? showTime(task.startTime) : ""],
        ["Tuning completed", task.completeTime ? showTime(task.completeTime) : ""],
      ]),
    );
  }

  function showProgress(operation) {
    const meta = operation.metadata || {};
    const total = num(meta.totalSteps);
    const done = num(meta.completedSteps);
    const percent = meta.completedPercent !== undefined ? num(meta.completedPercent) : total ? (100 * done) / total : 0;
    fill(
      progress,
      h("h2", null, "Tuning progress"),
      h(
        "div",
        { class: "progress" },
        h("progress", { max: 100, value: percent, "aria-label": "Tuning progress" }),
        h("span", { role: "status" }, `${operation.done ? "Done" : "Tuning"}: step ${showInt(done)} of ${showInt(total)} (${percent.toFixed(0)} %)`),
      ),
      h("p", { class: "muted mono" }, operation.name),
    );
    if (meta.snapshots && meta.snapshots.length) fill(curve, lossCurve(meta.snapshots));
  }

  /** The model's tuning operation: from the page's query, else ListOperations of the model. */
  async function operationName() {
    if (query.get("operation")) return query.get("operation");
    try {
      const answer = await api.listTunedModelOperations(id, { signal });
      const operations = answer.operations || [];
      return operations.length ? operations[0].name : "";
    } catch {
      return "";
    }
  }

  async function follow() {
    const name = await operationName();
    if (name) {
      try {
        for await (const update of api.watchOperation(name, { signal })) {
          if (update.operation) showProgress(update.operation);
          if (update.operation && update.operation.done) break;
        }
      } catch (caught) {
        if (signal.aborted) return;
        fill(message, h("p", { class: "muted" }, `Live progress unavailable (${caught.message}); checking the model every second.`));
      }
    }
    // Without a watch (or after it), read the model until it is no longer being created.
    let model = await api.getTunedModel(id, { signal });
    while (model.state === "CREATING" && !signal.aborted) {
      show(model);
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      model = await api.getTunedModel(id, { signal });
    }
    show(model);
    announce(`Tuned model ${model.state === "ACTIVE" ? "ready" : model.state}`);
  }

  api
    .getTunedModel(id, { signal })
    .then((model) => {
      show(model);
      if (model.state === "CREATING" || query.get("operation")) return follow();
      return null;
    })
    .catch((caught) => {
      if (caught.name !== "AbortError") fill(message, errorBanner(caught));
    });
}
