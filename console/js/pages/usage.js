// Usage: cost, tokens or requests over time (day or hour buckets), stacked by a chosen group
// (a label key or a call property), a grouped table below, the filter bar, and CSV download.

import { api } from "../api.js";
import { download, errorBanner, fill, h, uid } from "../dom.js";
import { SERIES_COLOURS, seriesColour, stackedBars } from "../charts.js";
import { filterBar } from "../filterbar.js";
import { localInputToRfc3339, num, showCost, showInt } from "../format.js";

const MAX_PAGES = 20;
const MAX_BUCKETS = 500;
const PROPERTIES = ["model", "method", "status", "caller"];
const METRICS = {
  cost: { label: "Estimated cost", value: (row) => num(row.estimatedCost) },
  tokens: { label: "Total tokens", value: (row) => num(row.tokens && row.tokens.total) },
  requests: { label: "Requests", value: (row) => num(row.requestCount) },
};
const BUCKETS = { DAY: 86_400_000, HOUR: 3_600_000 };
// Buckets a chart shows at least when no range is chosen: two weeks of days, a day of hours.
const MIN_BUCKETS = { DAY: 14, HOUR: 24 };
const NONE = "(none)";

/** Every row of a query, following page tokens (at most MAX_PAGES pages). */
async function allRows(body, signal) {
  const rows = [];
  let token = "";
  let answer = {};
  for (let page = 0; page < MAX_PAGES; page += 1) {
    answer = await api.queryUsage({ ...body, pageSize: 1000, pageToken: token || undefined }, { signal });
    rows.push(...(answer.rows || []));
    token = answer.nextPageToken || "";
    if (!token) break;
  }
  return { rows, totals: answer.totals || {}, priceTable: answer.priceTable || {} };
}

function bucketLabel(time, bucket) {
  const date = new Date(time);
  const day = date.toLocaleDateString("en-US", { month: "short", day: "numeric", timeZone: "UTC" });
  if (bucket === "DAY") return day;
  return `${day} ${String(date.getUTCHours()).padStart(2, "0")}:00`;
}

function toLocalInput(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const local = new Date(date.getTime() - date.getTimezoneOffset() * 60_000);
  return local.toISOString().slice(0, 19);
}

function csvCell(value) {
  const text = String(value ?? "");
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/** The rows as CSV: one line per bucket and group. */
export function usageCsv(rows, groupBy) {
  const header = [
    "bucket_start",
    ...(groupBy ? [groupBy] : []),
    "requests",
    "errors",
    "incomplete",
    "prompt_tokens",
    "candidates_tokens",
    "cached_tokens",
    "thoughts_tokens",
    "total_tokens",
    "estimated_cost",
  ];
  const lines = [header.join(",")];
  for (const row of rows) {
    const t = row.tokens || {};
    lines.push(
      [
        row.bucketStartTime || "",
        ...(groupBy ? [(row.groupValues || {})[groupBy] ?? NONE] : []),
        num(row.requestCount),
        num(row.errorCount),
        num(row.incompleteCount),
        num(t.prompt),
        num(t.candidates),
        num(t.cached),
        num(t.thoughts),
        num(t.total),
        num(row.estimatedCost),
      ]
        .map(csvCell)
        .join(","),
    );
  }
  return `${lines.join("\n")}\n`;
}

export function usagePage({ main, query, signal, navigate }) {
  const state = {
    groupBy: query.get("groupBy") || "",
    bucket: query.get("bucket") === "HOUR" ? "HOUR" : "DAY",
    metric: METRICS[query.get("metric")] ? query.get("metric") : "cost",
    filter: query.get("filter") || "",
    from: query.get("from") || "",
    to: query.get("to") || "",
  };
  let series = { rows: [] };
  let loading = null;

  const go = (changes) => navigate("/usage", { ...state, ...changes });

  const groupBy = h("select", { id: uid("group-by") }, h("option", { value: "" }, "Nothing (all calls)"));
  const groupOptions = h("optgroup", { label: "Call property" }, PROPERTIES.map((p) => h("option", { value: p }, p)));
  const labelOptions = h("optgroup", { label: "Label key" });
  groupBy.append(labelOptions, groupOptions);
  const bucket = h("select", { id: uid("bucket") }, h("option", { value: "DAY" }, "Day (UTC)"), h("option", { value: "HOUR" }, "Hour (UTC)"));
  const metric = h("select", { id: uid("metric") }, Object.entries(METRICS).map(([k, m]) => h("option", { value: k }, m.label)));
  const from = h("input", { type: "datetime-local", step: 1, id: uid("from") });
  const to = h("input", { type: "datetime-local", step: 1, id: uid("to") });
  const csvButton = h("button", { type: "button", disabled: true }, "Download CSV");

  const controls = h(
    "form",
    { class: "filter-row", "aria-label": "Chart settings" },
    h("div", { class: "field" }, h("label", { for: groupBy.id }, "Stack by"), groupBy),
    h("div", { class: "field" }, h("label", { for: bucket.id }, "Buckets"), bucket),
    h("div", { class: "field" }, h("label", { for: metric.id }, "Measure"), metric),
    h("div", { class: "field" }, h("label", { for: from.id }, "From"), from),
    h("div", { class: "field" }, h("label", { for: to.id }, "To"), to),
    h("button", { type: "submit" }, "Apply range"),
    csvButton,
  );
  const bar = filterBar({
    name: "Filter usage",
    properties: ["model", "label", "method", "status", "caller"],
    filter: state.filter,
    onApply: (filter) => go({ filter }),
  });
  const totals = h("div");
  const chart = h("figure", { class: "chart-figure", style: "margin: 0" });
  const table = h("div");
  const message = h("div");
  fill(
    main,
    h("h1", null, "Usage"),
    h("p", { class: "muted" }, "Generate calls recorded by the gateway, with their estimated cost from its price table."),
    bar.element,
    controls,
    message,
    totals,
    chart,
    h("h2", null, "By group"),
    table,
  );

  function syncControls() {
    groupBy.value = state.groupBy;
    bucket.value = state.bucket;
    metric.value = state.metric;
    from.value = toLocalInput(state.from);
    to.value = toLocalInput(state.to);
    bar.setFilter(state.filter);
  }

  api
    .listLabelKeys({ pageSize: 200 }, { signal })
    .then((answer) => {
      const keys = (answer.labelKeys || []).map((item) => item.key);
      if (state.groupBy.startsWith("labels.") && !keys.includes(state.groupBy.slice(7))) keys.unshift(state.groupBy.slice(7));
      labelOptions.replaceChildren(...keys.map((key) => h("option", { value: `labels.${key}` }, `labels.${key}`)));
      groupBy.value = state.groupBy;
    })
    .catch(() => {});

  groupBy.addEventListener("change", () => go({ groupBy: groupBy.value }));
  bucket.addEventListener("change", () => go({ bucket: bucket.value }));
  metric.addEventListener("change", () => go({ metric: metric.value }));
  controls.addEventListener("submit", (event) => {
    event.preventDefault();
    go({ from: localInputToRfc3339(from.value), to: localInputToRfc3339(to.value) });
  });
  csvButton.addEventListener("click", () => {
    const name = `usage-${state.bucket.toLowerCase()}${state.groupBy ? `-by-${state.groupBy.replace(/[^a-z0-9_-]+/gi, "-")}` : ""}.csv`;
    download(new Blob([usageCsv(series.rows, state.groupBy)], { type: "text/csv" }), name);
  });

  function drawChart() {
    const measure = METRICS[state.metric];
    const step = BUCKETS[state.bucket];
    const times = [...new Set(series.rows.map((row) => row.bucketStartTime).filter(Boolean))].map((t) => Date.parse(t));
    if (!times.length) {
      fill(chart, h("p", { class: "empty" }, "No calls in this range."));
      return;
    }
    // The range asked for; without one, the data's, and at least MIN_BUCKETS up to now.
    const floor = (time) => Math.floor(time / step) * step;
    const end = state.to ? floor(Date.parse(state.to) - 1) : Math.max(floor(Date.now()), ...times);
    let start = state.from ? floor(Date.parse(state.from)) : Math.min(...times, end - (MIN_BUCKETS[state.bucket] - 1) * step);
    start = Math.max(start, end - (MAX_BUCKETS - 1) * step);
    const buckets = [];
    for (let t = start; t <= end; t += step) buckets.push(t);
    const index = new Map(buckets.map((t, i) => [t, i]));
    const byGroup = new Map();
    for (const row of series.rows) {
      const group = state.groupBy ? (row.groupValues || {})[state.groupBy] || NONE : "all calls";
      if (!byGroup.has(group)) byGroup.set(group, new Array(buckets.length).fill(0));
      const i = index.get(Date.parse(row.bucketStartTime));
      if (i !== undefined) byGroup.get(group)[i] += measure.value(row);
    }
    // The largest groups get their own colour; the rest are stacked together.
    let groups = [...byGroup.entries()]
      .map(([name, values]) => ({ name, values, total: values.reduce((a, b) => a + b, 0) }))
      .sort((a, b) => b.total - a.total);
    if (groups.length > SERIES_COLOURS) {
      const kept = groups.slice(0, SERIES_COLOURS - 1);
      const rest = groups.slice(SERIES_COLOURS - 1);
      kept.push({
        name: `other (${rest.length})`,
        values: buckets.map((_, i) => rest.reduce((sum, g) => sum + g.values[i], 0)),
      });
      groups = kept;
    }
    const format = state.metric === "cost" ? (v) => showCost(v, series.priceTable.currency) : (v) => showInt(v);
    const labels = buckets.map((t) => bucketLabel(t, state.bucket));
    const title = `${measure.label} per ${state.bucket === "DAY" ? "day" : "hour"}${state.groupBy ? `, stacked by ${state.groupBy}` : ""}`;
    fill(
      chart,
      stackedBars({
        buckets: labels,
        series: groups,
        format,
        title,
        description: `${labels.length} buckets from ${labels[0]} to ${labels[labels.length - 1]} (UTC); ${groups.length} groups; the table below lists the same totals.`,
      }),
      h(
        "figcaption",
        null,
        h(
          "ul",
          { class: "legend", "aria-label": "Legend" },
          groups.map((g, i) => h("li", null, h("span", { class: "swatch", style: `background: ${seriesColour(i)}`, "aria-hidden": "true" }), g.name)),
        ),
      ),
    );
  }

  function drawTable(grouped) {
    const rows = grouped.rows;
    const currency = grouped.priceTable.currency;
    const groupLabel = state.groupBy || "Group";
    const line = (cells, tag = "td") => h("tr", null, cells.map(([v, cls], i) => (i === 0 && tag === "td" ? h("th", { scope: "row" }, v) : h(tag, { class: cls }, v))));
    const cellsOf = (row, name) => {
      const t = row.tokens || {};
      return [
        [name],
        [showInt(row.requestCount), "num"],
        [showInt(row.errorCount), "num"],
        [showInt(t.prompt), "num"],
        [showInt(t.candidates), "num"],
        [showInt(t.total), "num"],
        [showCost(row.estimatedCost, currency), "num"],
      ];
    };
    fill(
      table,
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          null,
          h("caption", null, `Totals per ${groupLabel} over the range`),
          h(
            "thead",
            null,
            h("tr", null, [groupLabel, "Requests", "Errors", "Prompt tokens", "Output tokens", "Total tokens", "Estimated cost"].map((c) => h("th", { scope: "col" }, c))),
          ),
          h(
            "tbody",
            null,
            rows.length
              ? rows.map((row) => line(cellsOf(row, state.groupBy ? (row.groupValues || {})[state.groupBy] || NONE : "all calls")))
              : h("tr", null, h("td", { colspan: 7, class: "empty" }, "No calls.")),
          ),
          h("tfoot", null, line(cellsOf(grouped.totals, "Total"))),
        ),
      ),
      grouped.priceTable.source
        ? h("p", { class: "muted" }, `Prices: ${grouped.priceTable.source}, read on ${grouped.priceTable.readOn} (${currency}).`)
        : null,
    );
    const t = grouped.totals;
    fill(
      totals,
      h(
        "dl",
        { class: "facts" },
        h("div", { class: "fact" }, h("dt", null, "Requests"), h("dd", null, showInt(t.requestCount))),
        h("div", { class: "fact" }, h("dt", null, "Errors"), h("dd", null, showInt(t.errorCount))),
        h("div", { class: "fact" }, h("dt", null, "Total tokens"), h("dd", null, showInt(t.tokens && t.tokens.total))),
        h("div", { class: "fact" }, h("dt", null, "Estimated cost"), h("dd", null, showCost(t.estimatedCost, currency))),
      ),
    );
  }

  async function load() {
    if (loading) loading.abort();
    const controller = new AbortController();
    loading = controller;
    signal.addEventListener("abort", () => controller.abort(), { once: true });
    message.replaceChildren();
    chart.setAttribute("aria-busy", "true");
    csvButton.disabled = true;
    const body = {
      filter: state.filter || undefined,
      startTime: state.from || undefined,
      endTime: state.to || undefined,
      groupBy: state.groupBy ? [state.groupBy] : undefined,
    };
    try {
      const [timeSeries, grouped] = await Promise.all([
        allRows({ ...body, timeBucket: `TIME_BUCKET_${state.bucket}` }, controller.signal),
        allRows(body, controller.signal),
      ]);
      series = timeSeries;
      drawChart();
      drawTable(grouped);
      csvButton.disabled = false;
    } catch (caught) {
      if (caught.name !== "AbortError") fill(message, errorBanner(caught));
    } finally {
      chart.removeAttribute("aria-busy");
    }
  }

  syncControls();
  load();
  return {
    update(next) {
      state.groupBy = next.get("groupBy") || "";
      state.bucket = next.get("bucket") === "HOUR" ? "HOUR" : "DAY";
      state.metric = METRICS[next.get("metric")] ? next.get("metric") : "cost";
      state.filter = next.get("filter") || "";
      state.from = next.get("from") || "";
      state.to = next.get("to") || "";
      syncControls();
      load();
    },
  };
}
