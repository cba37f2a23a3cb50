// Small SVG charts of watcher run durations: samples are [unixTime, seconds] pairs, oldest first.

import { clockTime, formatDuration, h, s } from "./util.js";

const MAX_BARS = 60;

/** min, median, max, last and mean of the samples' durations. */
export function durationStats(samples) {
  const values = samples.map((p) => p[1]);
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  return {
    count: values.length,
    last: values[values.length - 1],
    min: sorted[0],
    max: sorted[sorted.length - 1],
    median,
    mean: values.reduce((a, b) => a + b, 0) / values.length,
  };
}

function bars(samples, width, height, top) {
  const shown = samples.slice(-MAX_BARS);
  const max = Math.max(...shown.map((p) => p[1]), 1e-9);
  const step = width / Math.max(shown.length, 8);
  const gap = step > 4 ? 1 : 0;
  return shown.map(([at, seconds], i) => {
    const barHeight = Math.max(1, (seconds / max) * (height - top));
    return s("rect", {
      class: i === shown.length - 1 ? "bar last" : "bar",
      x: (i * step).toFixed(2),
      y: (height - barHeight).toFixed(2),
      width: Math.max(1, step - gap).toFixed(2),
      height: barHeight.toFixed(2),
    }, s("title", {}, `${clockTime(at)}: ${formatDuration(seconds)}`));
  });
}

/** A tiny bar sparkline for a table cell. */
export function sparkline(samples, name) {
  const stats = durationStats(samples);
  if (!stats) return h("span", { class: "muted" }, "—");
  const width = 96, height = 22;
  return s("svg", {
    class: "sparkline", viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-label": `${name}: last ${formatDuration(stats.last)}, max ${formatDuration(stats.max)} over ${stats.count} runs`,
  }, bars(samples, width, height, 1));
}

/** A card with a bar chart of a watcher's recent run durations and their statistics. */
export function durationChart(samples, name) {
  const stats = durationStats(samples);
  const width = 300, height = 72;
  const title = h("h3", { class: "chart-title" }, name);
  if (!stats) return h("figure", { class: "chart", "data-watcher": name }, title, h("p", { class: "muted" }, "no timed runs yet"));
  const svg = s("svg", {
    class: "bars", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img",
    "aria-label": `Run durations of ${name}, oldest to newest: median ${formatDuration(stats.median)}, max ${formatDuration(stats.max)}`,
  },
  s("line", { class: "axis", x1: 0, x2: width, y1: height - 0.5, y2: height - 0.5 }),
  s("line", { class: "gridline", x1: 0, x2: width, y1: 4.5, y2: 4.5 }),
  bars(samples, width, height, 5));
  return h("figure", { class: "chart", "data-watcher": name },
    title,
    h("div", { class: "chart-body" }, h("span", { class: "chart-max small muted" }, formatDuration(stats.max)), svg),
    h("figcaption", { class: "small" },
      h("span", {}, "last ", h("strong", {}, formatDuration(stats.last))),
      h("span", {}, "median ", h("strong", {}, formatDuration(stats.median))),
      h("span", {}, "max ", h("strong", {}, formatDuration(stats.max))),
      h("span", { class: "muted" }, `${stats.count} run${stats.count === 1 ? "" : "s"}`)));
}
