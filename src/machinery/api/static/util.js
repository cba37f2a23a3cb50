// Small helpers shared by the dashboard's modules: DOM building, time and number formatting.

const SVG_NS = "http://www.w3.org/2000/svg";

/** Set attributes, properties and listeners on an element from a plain object. */
function apply(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: h("a", {href: "#/"}, "text", child, ...). */
export function h(tag, attrs, ...children) {
  return append(apply(document.createElement(tag), attrs), children);
}

/** An SVG element, like h(). */
export function s(tag, attrs, ...children) {
  return append(apply(document.createElementNS(SVG_NS, tag), attrs), children);
}

/** Replace an element's children. */
export function replaceChildren(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** "3s", "4m 10s", "2h 5m", "3d 4h" for a number of seconds. */
export function formatSpan(seconds) {
  const total = Math.max(0, Math.round(seconds));
  if (total < 60) return `${total}s`;
  const m = Math.floor(total / 60), sec = total % 60;
  if (m < 60) return sec ? `${m}m ${sec}s` : `${m}m`;
  const hr = Math.floor(m / 60), min = m % 60;
  if (hr < 24) return min ? `${hr}h ${min}m` : `${hr}h`;
  const d = Math.floor(hr / 24), hrs = hr % 24;
  return hrs ? `${d}d ${hrs}h` : `${d}d`;
}

/** Relative text for a Unix time: "12s ago", "in 40s", "just now". */
export function formatRelative(unix, now = Date.now() / 1000) {
  const delta = now - unix;
  if (Math.abs(delta) < 1.5) return "just now";
  return delta > 0 ? `${formatSpan(delta)} ago` : `in ${formatSpan(-delta)}`;
}

/** A <time> element whose text the page's clock keeps up to date (see refreshTimes). */
export function timeAgo(unix, { empty = "—" } = {}) {
  if (unix === null || unix === undefined || !(unix > 0)) return h("span", { class: "muted" }, empty);
  const date = new Date(unix * 1000);
  return h("time", {
    datetime: date.toISOString(),
    title: date.toLocaleString(),
    "data-ts": String(unix),
  }, formatRelative(unix));
}

/** Re-render every relative time on the page (once a second: only the local clock moves). */
export function refreshTimes(root = document) {
  const now = Date.now() / 1000;
  for (const el of root.querySelectorAll("time[data-ts]")) {
    const text = formatRelative(Number(el.dataset.ts), now);
    if (el.textContent !== text) el.textContent = text;
  }
}

/** "850 µs", "12.3 ms", "1.52 s", "2m 3s". */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
  if (seconds < 0.001) return `${Math.round(seconds * 1e6)} µs`;
  if (seconds < 1) return `${(seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1)} ms`;
  if (seconds < 60) return `${seconds.toFixed(2)} s`;
  return formatSpan(seconds);
}

/** Local wall-clock "HH:MM:SS" of a Unix time. */
export function clockTime(unix) {
  const d = new Date(unix * 1000);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

/** Call fn at most once per `wait` ms, trailing (coalesces bursts of events). */
export function coalesce(fn, wait) {
  let timer = null;
  let again = false;
  const run = async () => {
    again = false;
    try {
      await fn();
    } finally {
      timer = again ? setTimeout(run, wait) : null;
    }
  };
  return () => {
    if (timer === null) timer = setTimeout(run, wait);
    else again = true;
  };
}

/** A fetch error carrying the HTTP status and the API's {"error": ...} text. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** fetch + JSON, throwing ApiError with the API's own error text on failure. */
export async function fetchJSON(url, options = {}) {
  let response;
  try {
    response = await fetch(url, { cache: "no-store", ...options });
  } catch (err) {
    throw new ApiError(0, `cannot reach the server: ${err.message || err}`);
  }
  let body = null;
  const text = await response.text();
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const detail = body && typeof body.error === "string" ? body.error : (text || response.statusText);
    throw new ApiError(response.status, detail);
  }
  return body;
}

/** Is a keyboard event aimed at a text field (so single-key shortcuts must not fire)? */
export function typingIn(event) {
  const el = event.target;
  if (!(el instanceof Element)) return false;
  return el.closest("input, textarea, select, [contenteditable=''], [contenteditable='true']") !== null;
}
