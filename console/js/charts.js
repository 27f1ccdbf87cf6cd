// Hand-written SVG charts: stacked bars (usage over time) and a line (tuning loss).
// Each chart is an <svg role="img"> with a title and a description; the pages show the same
// numbers in a table for screen readers and keyboard users.

import { s, uid } from "./dom.js";

export const SERIES_COLOURS = 8;

export function seriesColour(index) {
  return `var(--series-${index % SERIES_COLOURS})`;
}

/** About `count` round tick values from 0 (or `min`) to at least `max` (whole numbers only
 * when `integer`). */
export function niceTicks(max, count = 5, min = 0, integer = false) {
  const span = max - min;
  if (!(span > 0)) return [min, min + 1];
  const raw = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const steps = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).filter((m) => !integer || Number.isInteger(m));
  const step = steps.find((m) => m >= raw) || Math.max(1, Math.ceil(raw));
  const first = Math.floor(min / step) * step;
  const ticks = [];
  for (let value = first; value < max + step * 0.999; value += step) {
    ticks.push(Number(value.toPrecision(12)));
  }
  return ticks;
}

function frame({ width, height, title, description }) {
  const titleId = uid("chart-title");
  const descId = uid("chart-desc");
  return s(
    "svg",
    {
      class: "chart",
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-labelledby": `${titleId} ${descId}`,
      preserveAspectRatio: "xMinYMin meet",
    },
    s("title", { id: titleId }, title),
    s("desc", { id: descId }, description),
  );
}

function yAxis(svg, { ticks, y, left, right, format }) {
  const grid = s("g", { class: "grid" });
  const axis = s("g", { class: "axis" });
  for (const tick of ticks) {
    const at = y(tick);
    grid.append(s("line", { x1: left, x2: right, y1: at, y2: at }));
    axis.append(s("text", { x: left - 6, y: at + 4, "text-anchor": "end" }, format(tick)));
  }
  svg.append(grid, axis);
}

/**
 * Stacked bars. `buckets`: x labels in order; `series`: [{name, values}] with one value per
 * bucket. `format` shows a value.
 */
export function stackedBars({ buckets, series, format = String, title, description }) {
  const width = 900;
  const height = 320;
  const margin = { top: 12, right: 12, bottom: 48, left: 72 };
  const svg = frame({ width, height, title, description });
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  const totals = buckets.map((_, i) => series.reduce((sum, item) => sum + (item.values[i] || 0), 0));
  const ticks = niceTicks(Math.max(0, ...totals), 5);
  const top = ticks[ticks.length - 1] || 1;
  const y = (value) => margin.top + plotHeight - (value / top) * plotHeight;
  yAxis(svg, { ticks, y, left: margin.left, right: width - margin.right, format });

  const slot = plotWidth / Math.max(1, buckets.length);
  const barWidth = Math.max(2, Math.min(48, slot * 0.7));
  const bars = s("g", { class: "bars" });
  const labels = s("g", { class: "axis" });
  const labelEvery = Math.max(1, Math.ceil(buckets.length / 12));
  buckets.forEach((bucket, i) => {
    const x = margin.left + slot * i + (slot - barWidth) / 2;
    let base = 0;
    series.forEach((item, seriesIndex) => {
      const value = item.values[i] || 0;
      if (value <= 0) return;
      const y0 = y(base);
      const y1 = y(base + value);
      base += value;
      bars.append(
        s(
          "rect",
          {
            class: "bar",
            x: x.toFixed(1),
            y: y1.toFixed(1),
            width: barWidth.toFixed(1),
            height: Math.max(0.5, y0 - y1).toFixed(1),
            fill: seriesColour(seriesIndex),
            "data-series": item.name,
            "data-bucket": bucket,
          },
          s("title", null, `${bucket} · ${item.name}: ${format(value)}`),
        ),
      );
    });
    if ((buckets.length - 1 - i) % labelEvery === 0) {  // the newest bucket always labelled
      labels.append(
        s(
          "text",
          { x: (x + barWidth / 2).toFixed(1), y: height - margin.bottom + 16, "text-anchor": "middle" },
          bucket,
        ),
      );
    }
  });
  svg.append(
    s("line", {
      class: "baseline",
      x1: margin.left,
      x2: width - margin.right,
      y1: y(0),
      y2: y(0),
      stroke: "currentColor",
      "stroke-opacity": "0.4",
    }),
    bars,
    labels,
  );
  return svg;
}

/** A line through `points` ([{x, y}]), x and y numeric; axis titles `xLabel`, `yLabel`. */
export function lineChart({ points, xLabel, yLabel, title, description, format = String }) {
  const width = 760;
  const height = 300;
  const margin = { top: 14, right: 16, bottom: 46, left: 64 };
  const svg = frame({ width, height, title, description });
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
  const xMin = Math.min(...xs);
  const xMax = Math.max(...xs);
  const yTicks = niceTicks(Math.max(...ys), 5, Math.min(0, ...ys));
  const yMin = yTicks[0];
  const yMax = yTicks[yTicks.length - 1];
  const x = (value) => margin.left + (xMax === xMin ? plotWidth / 2 : ((value - xMin) / (xMax - xMin)) * plotWidth);
  const y = (value) => margin.top + plotHeight - ((value - yMin) / (yMax - yMin || 1)) * plotHeight;
  yAxis(svg, { ticks: yTicks, y, left: margin.left, right: width - margin.right, format });

  const xAxis = s("g", { class: "axis" });
  const wholeX = xs.every(Number.isInteger);
  for (const tick of niceTicks(xMax, Math.min(8, Math.max(1, xMax - xMin)), xMin, wholeX)) {
    if (tick < xMin || tick > xMax) continue;
    xAxis.append(s("text", { x: x(tick), y: height - margin.bottom + 16, "text-anchor": "middle" }, String(tick)));
  }
  xAxis.append(
    s("text", { x: margin.left + plotWidth / 2, y: height - 6, "text-anchor": "middle" }, xLabel),
    s(
      "text",
      { x: 14, y: margin.top + plotHeight / 2, "text-anchor": "middle", transform: `rotate(-90 14 ${margin.top + plotHeight / 2})` },
      yLabel,
    ),
  );
  const path = points.map((p, i) => `${i ? "L" : "M"}${x(p.x).toFixed(1)},${y(p.y).toFixed(1)}`).join(" ");
  const dots = s("g", { class: "points" });
  if (points.length <= 200) {
    for (const p of points) {
      dots.append(
        s(
          "circle",
          { class: "point", cx: x(p.x).toFixed(1), cy: y(p.y).toFixed(1), r: 3 },
          s("title", null, `${xLabel} ${p.x}: ${format(p.y)}`),
        ),
      );
    }
  }
  svg.append(xAxis, s("path", { class: "line", d: path }), dots);
  return svg;
}
