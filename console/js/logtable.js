// The table of logs, shared by the logs page (with checkboxes) and a dataset's page.

import { h } from "./dom.js";
import { lastSegment, num, showDuration, showInt, showTime, statusCode, statusName } from "./format.js";

export function statusCell(status) {
  const ok = statusCode(status) === 0;
  return h(
    "span",
    { class: `status ${ok ? "ok" : "bad"}`, title: status && status.message ? status.message : null },
    statusName(status),
  );
}

export function labelChips(labels) {
  const entries = Object.entries(labels || {}).sort(([a], [b]) => a.localeCompare(b));
  if (!entries.length) return h("span", { class: "muted" }, "—");
  return h(
    "span",
    { class: "labels" },
    entries.map(([key, value]) => h("span", { class: "label-chip" }, `${key}=${value}`)),
  );
}

function tokensCell(tokens) {
  const t = tokens || {};
  return h(
    "td",
    {
      class: "num",
      title: `prompt ${showInt(t.prompt)} · output ${showInt(t.candidates)} · cached ${showInt(t.cached)} · thoughts ${showInt(t.thoughts)}`,
    },
    showInt(t.total),
  );
}

export const LOG_COLUMNS = ["Time", "Model", "Method", "Status", "Labels", "Tokens", "Latency", "Prompt"];

/** One <tr> for `log`; `check` is the checkbox cell's content, when the table has one. */
export function logRow(log, { check } = {}) {
  const id = lastSegment(log.name);
  const row = h(
    "tr",
    { dataset: { name: log.name } },
    check ? h("td", { class: "check-cell" }, check) : null,
    h(
      "td",
      { class: "nowrap" },
      h("a", { href: `#/logs/${encodeURIComponent(id)}`, title: `Open log ${id}` }, showTime(log.createTime)),
    ),
    h("td", { class: "mono" }, log.model || "—"),
    h("td", null, log.method || "—"),
    h("td", null, statusCell(log.status), log.incomplete ? h("span", { class: "badge" }, " incomplete") : null),
    h("td", null, labelChips(log.labels)),
    tokensCell(log.tokens),
    h("td", { class: "num" }, showDuration(log.latency)),
    h(
      "td",
      { class: "preview", title: log.promptPreview || "" },
      log.promptPreview || h("span", { class: "muted" }, "(no text in the last turn)"),
    ),
  );
  return row;
}

/** A whole table of `logs` (no checkboxes). */
export function logTable(logs, caption) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      null,
      caption ? h("caption", null, caption) : null,
      h("thead", null, h("tr", null, LOG_COLUMNS.map((c) => h("th", { scope: "col" }, c)))),
      h(
        "tbody",
        null,
        logs.length
          ? logs.map((log) => logRow(log))
          : h("tr", null, h("td", { colspan: LOG_COLUMNS.length, class: "empty" }, "No logs.")),
      ),
    ),
  );
}

export function totalTokens(log) {
  return num(log.tokens && log.tokens.total);
}
