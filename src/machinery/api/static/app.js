// The machinery dashboard: machines, their graphs, watchers and history, and the live events.
//
// Everything live arrives over one EventSource (server-sent events); nothing polls. After the
// stream (re)connects, the page reads the current state once from the JSON API, then applies
// each event as it comes. The same page runs on an agent (data-mode="agent", its /api/v1 API)
// and on the fleet server (data-mode="fleet", /api/fleet, built from NATS and the nodes' own
// answers; transition buttons only when it was started with a signing key: data-control="on").

import { durationChart, sparkline } from "./charts.js";
import { bestDirection, flashTransition, renderGraph, setCurrent } from "./graph.js";
import {
  ApiError, clockTime, coalesce, fetchJSON, formatDuration, h, refreshTimes, replaceChildren,
  timeAgo, typingIn,
} from "./util.js";

const MODE = document.documentElement.dataset.mode === "fleet" ? "fleet" : "agent";
const CONTROL = MODE === "fleet" && document.documentElement.dataset.control === "on";
const TOKEN_KEY = MODE === "fleet" ? "machinery.fleet.token" : "machinery.token";
const MAX_EVENTS = 500;
const MAX_HISTORY = 300;
const MAX_SAMPLES = 60;
const TRANSITION_TYPE = "io.choria.machine.v1.transition";
const enc = encodeURIComponent;

// -- where the data comes from --------------------------------------------------------------

const agentSource = {
  eventsURL: "/api/v1/events",
  canFire: true,
  async overview() {
    const [health, list] = await Promise.all([fetchJSON("/healthz"), fetchJSON("/api/v1/machines")]);
    return {
      identity: health.identity,
      version: health.version,
      nodes: [{ identity: health.identity, last_seen: null, machines: list.machines }],
    };
  },
  async machine(ref) {
    const base = `/api/v1/machines/${enc(ref.name)}`;
    const summary = await fetchJSON(base);
    // A manifest that could not be loaded has no graph or watchers: do not ask for them.
    if (!summary.state && ["invalid", "refused"].includes(summary.status)) {
      return { summary, graph: null, graphError: null, watchers: [], history: [], complete: true };
    }
    const [graph, watchers, history] = await Promise.allSettled([
      fetchJSON(`${base}/graph`), fetchJSON(`${base}/watchers`), fetchJSON(`${base}/history?limit=100`),
    ]);
    return {
      summary,
      graph: graph.status === "fulfilled" ? graph.value : null,
      graphError: graph.status === "rejected" ? graph.reason : null,
      watchers: watchers.status === "fulfilled" ? watchers.value.watchers : null,
      history: history.status === "fulfilled" ? history.value.history : null,
      complete: true,
    };
  },
  async watchers(ref) {
    return (await fetchJSON(`/api/v1/machines/${enc(ref.name)}/watchers`)).watchers;
  },
  async olderHistory(ref, before) {
    return (await fetchJSON(`/api/v1/machines/${enc(ref.name)}/history?limit=100&before=${before}`)).history;
  },
  fire(ref, transition, token) {
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    return fetchJSON(`/api/v1/machines/${enc(ref.name)}/transition`, {
      method: "POST", headers, body: JSON.stringify({ transition }),
    });
  },
};

// A fleet transition's outcome on one node, as the HTTP status an agent would have answered.
const OUTCOME_STATUS = { refused: 403, invalid: 409, failed: 502, no_answer: 504, skipped: 409 };

function fleetTransition(body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  return fetchJSON("/api/fleet/transition", { method: "POST", headers, body: JSON.stringify(body) });
}

const fleetSource = {
  eventsURL: "/api/fleet/events",
  canFire: CONTROL,
  async fire(ref, transition, token) {
    const answer = await fleetTransition({ machine: ref.name, transition, identity: ref.identity }, token);
    const outcome = answer.outcomes[0];
    if (!outcome) throw new ApiError(504, `${ref.identity} did not answer`);
    if (outcome.outcome !== "done") throw new ApiError(OUTCOME_STATUS[outcome.outcome] || 502, outcome.message);
    return {
      changed: outcome.from_state !== outcome.to_state || outcome.message === "changed",
      from_state: outcome.from_state,
      to_state: outcome.to_state,
    };
  },
  async overview() {
    const body = await fetchJSON("/api/fleet/nodes");
    return { identity: "", version: body.version, nodes: body.nodes, broker: body.broker };
  },
  async machine(ref) {
    return fetchJSON(`/api/fleet/nodes/${enc(ref.identity)}/machines/${enc(ref.name)}`);
  },
  async watchers(ref) {
    return (await this.machine(ref)).watchers;
  },
};

const source = MODE === "fleet" ? fleetSource : agentSource;

// -- the page's state -----------------------------------------------------------------------

const app = {
  identity: "",
  version: "",
  broker: null,
  loaded: false,
  loadError: null,
  machines: new Map(), // key -> summary (+ identity)
  nodes: new Map(), // identity -> {identity, last_seen}
  route: { view: "list" },
  detail: null,
  events: [],
  paused: false,
  unseen: 0,
  listFilter: "",
  nodeFilter: "",
  opened: false,
  firing: false,
  selection: { machine: "", transition: "", where: "", pending: null, answer: null, error: null },
};

const keyOf = (identity, name) => (MODE === "agent" ? name : `${identity}\u0000${name}`);
const machineHref = (identity, name) => (MODE === "agent"
  ? `#/machine/${enc(name)}`
  : `#/node/${enc(identity)}/machine/${enc(name)}`);
const main = document.getElementById("main");

function statusClass(value) {
  return `status-${String(value || "unknown").replace(/[^a-z0-9_-]/gi, "")}`;
}

function badge(text, kind) {
  return h("span", { class: ["badge", kind] }, text);
}

// -- routing --------------------------------------------------------------------------------

function parseRoute() {
  const hash = location.hash;
  const parts = hash.startsWith("#/") ? hash.slice(2).split("/").map(decodeURIComponent) : [];
  if (MODE === "agent" && parts[0] === "machine" && parts[1]) return { view: "machine", identity: app.identity, name: parts[1] };
  if (MODE === "fleet" && parts[0] === "node" && parts[1]) {
    if (parts[2] === "machine" && parts[3]) return { view: "machine", identity: parts[1], name: parts[3] };
    return { view: "list", node: parts[1] };
  }
  return { view: "list" };
}

function onRoute() {
  if (location.hash && !location.hash.startsWith("#/")) return; // an in-page anchor
  app.route = parseRoute();
  if (app.route.view === "list" && MODE === "fleet") app.nodeFilter = app.route.node || "";
  render();
  if (app.route.view === "machine") loadDetail();
}

// -- loading --------------------------------------------------------------------------------

async function loadOverview() {
  try {
    const body = await source.overview();
    app.identity = body.identity || app.identity;
    app.version = body.version || app.version;
    app.broker = body.broker || null;
    const machines = new Map();
    app.nodes = new Map();
    for (const node of body.nodes) {
      app.nodes.set(node.identity, { identity: node.identity, last_seen: node.last_seen ?? null, answering: node.answering ?? null });
      for (const m of node.machines) {
        const summary = { ...m, identity: m.identity || node.identity };
        machines.set(keyOf(summary.identity, summary.name), summary);
      }
    }
    app.machines = machines;
    app.loadError = null;
  } catch (err) {
    app.loadError = err;
  }
  app.loaded = true;
  if (MODE === "agent" && app.route.view === "machine") app.route.identity = app.identity;
  renderHeader();
  updateMachineFilterOptions();
  if (app.route.view === "list") renderList();
}

async function loadDetail() {
  const ref = app.route;
  if (ref.view !== "machine") return;
  const key = keyOf(ref.identity, ref.name);
  const token = Symbol("load");
  app.detailLoad = token;
  let data;
  try {
    data = await source.machine(ref);
  } catch (err) {
    if (app.detailLoad !== token) return;
    app.detail = { key, ref, error: err };
    renderMachine();
    return;
  }
  if (app.detailLoad !== token) return; // the user went elsewhere meanwhile
  app.detail = {
    key,
    ref: { identity: ref.identity, name: ref.name },
    summary: data.summary,
    graph: data.graph,
    graphError: data.graphError || null,
    watchers: data.watchers || [],
    history: (data.history || []).slice(0, MAX_HISTORY),
    historyDone: !data.history || data.history.length < 100 || MODE === "fleet",
    flash: null,
  };
  if (data.summary) app.machines.set(key, { ...app.machines.get(key), ...data.summary, identity: ref.identity });
  renderMachine();
}

const refreshWatchers = coalesce(async () => {
  const detail = app.detail;
  if (!detail || !detail.summary || MODE !== "agent") return;
  try {
    const watchers = await source.watchers(detail.ref);
    if (app.detail !== detail) return;
    detail.watchers = watchers;
    renderWatchers();
  } catch {
    // The next event or reconnect refreshes again; the table keeps what it had.
  }
}, 500);

const refreshOverview = coalesce(loadOverview, 500);

async function refreshAll() {
  await loadOverview();
  if (app.route.view === "machine") await loadDetail();
}

// -- rendering: header ----------------------------------------------------------------------

function renderHeader() {
  const sub = document.getElementById("brand-sub");
  if (MODE === "fleet") {
    const broker = app.broker ? ` · ${app.broker.connected ? "NATS connected" : "NATS disconnected"}` : "";
    sub.textContent = `fleet · ${app.nodes.size} node${app.nodes.size === 1 ? "" : "s"}${broker}`;
  } else {
    sub.textContent = app.identity ? `${app.identity}${app.version ? ` · ${app.version}` : ""}` : "";
  }
}

function setConnection(state, text) {
  const conn = document.getElementById("conn");
  conn.dataset.state = state;
  document.getElementById("conn-text").textContent = text;
}

// Re-rendering a view must not throw the keyboard user's focus away: remember what had it.
function focusMemo() {
  const el = document.activeElement;
  if (!el || el === document.body || !main.contains(el)) return null;
  if (el.id) return `#${CSS.escape(el.id)}`;
  for (const attr of ["data-transition", "data-key", "data-watcher"]) {
    const value = el.getAttribute(attr);
    if (value !== null) return `${el.tagName.toLowerCase()}[${attr}="${CSS.escape(value)}"]`;
  }
  return null;
}

function restoreFocus(selector) {
  if (!selector) return;
  const el = main.querySelector(selector);
  if (el) el.focus({ preventScroll: true });
}

function render() {
  if (app.route.view === "machine") {
    if (!app.detail || app.detail.key !== keyOf(app.route.identity, app.route.name)) {
      main.setAttribute("aria-busy", "true");
      replaceChildren(main, h("p", { class: "muted" }, `Loading ${app.route.name}…`));
    } else renderMachine();
  } else renderList();
}

// -- rendering: the machine list ------------------------------------------------------------

function visibleMachines() {
  const needle = app.listFilter.trim().toLowerCase();
  return [...app.machines.values()]
    .filter((m) => !app.nodeFilter || m.identity === app.nodeFilter)
    .filter((m) => !needle || [m.name, m.state, m.status, m.identity, m.version]
      .some((v) => v && String(v).toLowerCase().includes(needle)))
    .sort((a, b) => (a.name === b.name ? String(a.identity).localeCompare(b.identity) : a.name.localeCompare(b.name)));
}

function countsText(machines) {
  const parts = [`${machines.length} machine${machines.length === 1 ? "" : "s"}`];
  const tally = new Map();
  const by = MODE === "agent" ? (m) => m.status : (m) => (m.state ? m.state : "state not seen yet");
  for (const m of machines) tally.set(by(m), (tally.get(by(m)) || 0) + 1);
  return parts.concat([...tally.entries()].sort().map(([k, n]) => `${n} ${k}`));
}

function machineRow(m) {
  const key = keyOf(m.identity, m.name);
  const cells = [
    h("th", { scope: "row", "data-label": "Machine" },
      h("a", { href: machineHref(m.identity, m.name), class: "machine-link", "data-key": key }, m.name)),
  ];
  if (MODE === "fleet") {
    cells.push(h("td", { "data-label": "Node", class: "node-cell" },
      h("a", { href: `#/node/${enc(m.identity)}`, tabindex: "-1" }, m.identity)));
  }
  cells.push(
    h("td", { "data-label": "Status" }, badge(m.status || "unknown", statusClass(m.status))),
    h("td", { "data-label": "State", class: "state-cell" },
      m.state ? h("span", { class: "state-pill", "data-state": m.state }, m.state) : h("span", { class: "muted" }, "—")),
    h("td", { "data-label": "Since", class: "since-cell" }, timeAgo(m.state_entered)),
    h("td", { "data-label": "Version" }, m.version || h("span", { class: "muted" }, "—")),
  );
  if (MODE === "fleet") {
    const last = m.last_transition;
    cells.push(h("td", { "data-label": "Last transition" },
      last ? [h("code", {}, last.transition), " ", h("span", { class: "muted small" }, `${last.from_state} → ${last.to_state}`)]
        : h("span", { class: "muted" }, "—")));
  }
  return h("tr", { class: ["machine-row", statusClass(m.status)], "data-row": key, "data-machine": m.name, "data-node": m.identity }, cells);
}

function errorsRow(m, columns) {
  const problems = [...(m.errors || []), ...(m.warnings || [])];
  if (!problems.length) return null;
  return h("tr", { class: "problems-row", "data-problems": keyOf(m.identity, m.name) },
    h("td", { colspan: columns },
      h("ul", { class: "problems", "aria-label": `Problems of ${m.name}` },
        (m.errors || []).map((e) => h("li", { class: "problem error" }, h("code", {}, e))),
        (m.warnings || []).map((w) => h("li", { class: "problem warning" }, h("span", { class: "sr-only" }, "warning: "), h("code", {}, w))))));
}

function renderList() {
  if (app.route.view !== "list") return;
  const memo = focusMemo();
  main.removeAttribute("aria-busy");
  document.title = MODE === "fleet" ? "machinery fleet" : `machinery · ${app.identity || "agent"}`;
  if (!app.loaded) {
    replaceChildren(main, h("p", { class: "muted" }, "Loading…"));
    return;
  }
  const heading = MODE === "fleet"
    ? h("h1", { id: "view-title" }, "Fleet", app.nodeFilter ? h("span", { class: "muted" }, ` · ${app.nodeFilter}`) : null)
    : h("h1", { id: "view-title" }, "Machines", app.identity ? h("span", { class: "muted" }, ` on ${app.identity}`) : null);
  const machines = visibleMachines();
  const columns = MODE === "fleet" ? 7 : 5;
  const body = h("tbody", {});
  for (const m of machines) {
    body.append(machineRow(m));
    const problems = errorsRow(m, columns);
    if (problems) body.append(problems);
  }
  const headers = ["Machine", ...(MODE === "fleet" ? ["Node"] : []), "Status", "State", "In state since", "Version",
    ...(MODE === "fleet" ? ["Last transition"] : [])];
  const table = h("table", { class: "machines", id: "machine-table", "aria-describedby": "machine-counts" },
    h("caption", { class: "sr-only" }, "Machines, with their status and state. Use the arrow keys to move between them."),
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
    body);
  body.addEventListener("keydown", onListKey);
  const filter = h("input", {
    id: "machine-filter", type: "search", value: app.listFilter, placeholder: "name, state, status…",
    "aria-keyshortcuts": "/", spellcheck: "false", autocomplete: "off",
    oninput: (e) => { app.listFilter = e.target.value; renderListBody(); },
  });
  const error = app.loadError
    ? h("div", { class: "notice error", role: "alert" }, `Cannot load the machines: ${app.loadError.message}`)
    : null;
  replaceChildren(main,
    h("section", { class: "view view-list", "aria-labelledby": "view-title" },
      h("div", { class: "view-head" }, heading,
        h("p", { class: "counts", id: "machine-counts" }, countsText(machines).map((t, i) => h("span", { class: i ? "count" : "count total" }, t)))),
      error,
      MODE === "fleet" ? nodeList() : null,
      CONTROL ? selectionPanel() : null,
      h("div", { class: "tools" }, h("label", { for: "machine-filter" }, "Filter"), filter),
      table,
      machines.length ? null : h("p", { class: "empty muted" }, app.machines.size
        ? "No machine matches the filter."
        : MODE === "fleet" ? "No machine seen on NATS yet: events appear as the agents publish them." : "No machines in the store.")));
  restoreFocus(memo);
}

// Only the rows, so typing in the filter keeps its focus.
function renderListBody() {
  const table = document.getElementById("machine-table");
  if (!table) return renderList();
  const machines = visibleMachines();
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const m of machines) {
    body.append(machineRow(m));
    const problems = errorsRow(m, MODE === "fleet" ? 7 : 5);
    if (problems) body.append(problems);
  }
  const counts = document.getElementById("machine-counts");
  if (counts) replaceChildren(counts, countsText(machines).map((t, i) => h("span", { class: i ? "count" : "count total" }, t)));
}

// Fire one transition on every node a filter selects (the same clauses as `machinery fleet --where`).
// Its fields and last result live in app.selection: the list view is rebuilt as events arrive.
function selectionPanel() {
  const sel = app.selection;
  const field = (id, key, label, placeholder) => h("label", { for: id }, label,
    h("input", {
      id, type: "text", placeholder, spellcheck: "false", autocomplete: "off", value: sel[key],
      oninput: (e) => { sel[key] = e.target.value; },
    }));
  return h("section", { class: "panel selection", "aria-labelledby": "selection-title" },
    h("div", { class: "panel-head" }, h("h2", { id: "selection-title" }, "Transition on a selection"),
      h("p", { class: "muted small" }, "Signed by the dashboard; each node checks the signature.")),
    h("form", { id: "selection-form", class: "selection-form", onsubmit: fireSelection },
      field("selection-machine", "machine", "Machine", "nginx"),
      field("selection-transition", "transition", "Transition", "maintenance"),
      field("selection-where", "where", "Where", "identity=web* os.family=debian"),
      h("button", { type: "submit", id: "selection-fire" }, "Fire")),
    h("div", { id: "selection-result", role: "status" }, selectionResult()));
}

function selectionResult() {
  const { pending, answer, error } = app.selection;
  if (pending) return [h("p", { class: "result pending" }, pending)];
  if (error) {
    return [h("div", { class: "notice error", role: "alert" },
      h("strong", {}, error.status ? `Refused (HTTP ${error.status})` : "Failed"), `: ${error.message}`)];
  }
  if (!answer) return [];
  const counts = Object.entries(answer.counts).map(([k, n]) => `${k.replace("_", " ")}: ${n}`).join(", ");
  return [
    h("p", { class: "result ok", id: "selection-counts" }, answer.outcomes.length ? counts : "No node matches."),
    answer.outcomes.length ? h("table", { class: "machines", id: "selection-outcomes" },
      h("thead", {}, h("tr", {}, ["Node", "Outcome", "From", "To", "Detail"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, answer.outcomes.map((o) => h("tr", { "data-node": o.identity, "data-outcome": o.outcome },
        h("td", {}, o.identity), h("td", {}, o.outcome.replace("_", " ")), h("td", {}, o.from_state || ""),
        h("td", {}, o.to_state || ""), h("td", {}, o.message))))) : null,
    answer.missing.length ? h("p", { class: "muted small" }, `Did not answer: ${answer.missing.join(", ")}`) : null,
  ];
}

function renderSelectionResult() {
  const box = document.getElementById("selection-result");
  if (box) replaceChildren(box, selectionResult());
}

async function fireSelection(event) {
  event.preventDefault();
  if (app.firing) return;
  const sel = app.selection;
  const machine = sel.machine.trim();
  const transition = sel.transition.trim();
  const where = sel.where.split(/\s+/).filter(Boolean);
  app.firing = true;
  Object.assign(sel, { pending: `Firing ${transition} on ${machine}…`, answer: null, error: null });
  renderSelectionResult();
  try {
    sel.answer = await fleetTransition({ machine, transition, where }, sessionStorage.getItem(TOKEN_KEY));
  } catch (err) {
    sel.error = err;
  } finally {
    sel.pending = null;
    app.firing = false;
    renderSelectionResult();
  }
}

function nodeList() {
  const nodes = [...app.nodes.values()].sort((a, b) => a.identity.localeCompare(b.identity));
  const count = (identity) => [...app.machines.values()].filter((m) => m.identity === identity).length;
  const button = (identity, label, extra) => h("li", {},
    h("a", {
      href: identity ? `#/node/${enc(identity)}` : "#/",
      class: "node-chip", "aria-current": (app.nodeFilter || "") === identity ? "true" : null, "data-node": identity,
    }, h("span", { class: "node-name" }, label), extra));
  return h("nav", { class: "nodes", "aria-label": "Nodes" },
    h("ul", {},
      button("", "All nodes", h("span", { class: "muted small" }, ` ${app.machines.size}`)),
      nodes.map((n) => button(n.identity, n.identity, [
        h("span", { class: "muted small" }, ` ${count(n.identity)} · seen `, timeAgo(n.last_seen)),
        n.answering === false ? h("span", { class: "badge status-failed not-answering", "data-answering": "false" }, "not answering") : null]))));
}

function onListKey(event) {
  const links = [...main.querySelectorAll("a.machine-link")];
  const at = links.indexOf(document.activeElement);
  if (at < 0) return;
  let next = null;
  if (event.key === "ArrowDown" || event.key === "j") next = links[Math.min(links.length - 1, at + 1)];
  else if (event.key === "ArrowUp" || event.key === "k") next = links[Math.max(0, at - 1)];
  else if (event.key === "Home") next = links[0];
  else if (event.key === "End") next = links[links.length - 1];
  if (next) {
    event.preventDefault();
    next.focus();
  }
}

// Bursts of events (a fleet replaying its history) must not rebuild the list per event: at most
// once per frame.
function perFrame(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      fn();
    });
  };
}

const scheduleList = perFrame(() => {
  if (app.route.view === "list") renderList();
});

const scheduleCounts = perFrame(() => {
  const counts = document.getElementById("machine-counts");
  if (counts) replaceChildren(counts, countsText(visibleMachines()).map((t, i) => h("span", { class: i ? "count" : "count total" }, t)));
});

function patchListRow(key, flash) {
  if (app.route.view !== "list") return;
  const m = app.machines.get(key);
  const row = main.querySelector(`tr[data-row="${CSS.escape(key)}"]`);
  if (!m || !row) return scheduleList();
  const fresh = machineRow(m);
  // Keep the first cell (the link, which may have focus); swap the others.
  [...fresh.cells].slice(1).forEach((cell, i) => row.cells[i + 1].replaceWith(cell));
  if (flash) {
    row.classList.remove("flash");
    void row.offsetWidth;
    row.classList.add("flash");
  }
  scheduleCounts();
}

// -- rendering: one machine -----------------------------------------------------------------

function renderMachine() {
  const detail = app.detail;
  if (!detail || app.route.view !== "machine") return;
  const memo = focusMemo();
  main.removeAttribute("aria-busy");
  const { ref } = detail;
  document.title = `${ref.name} · machinery`;
  const crumbs = h("nav", { class: "crumbs", "aria-label": "Breadcrumb" },
    h("ol", {},
      h("li", {}, h("a", { href: "#/" }, MODE === "fleet" ? "Fleet" : "Machines")),
      MODE === "fleet" ? h("li", {}, h("a", { href: `#/node/${enc(ref.identity)}` }, ref.identity)) : null,
      h("li", {}, h("span", { "aria-current": "page" }, ref.name))));
  if (detail.error) {
    const notFound = detail.error instanceof ApiError && detail.error.status === 404;
    replaceChildren(main, h("section", { class: "view view-machine", "aria-labelledby": "view-title" }, crumbs,
      h("h1", { id: "view-title" }, ref.name),
      h("div", { class: "notice error", role: "alert" },
        notFound ? `There is no machine ${ref.name}${MODE === "fleet" ? ` on ${ref.identity}` : ""}.` : `Cannot load ${ref.name}: ${detail.error.message}`)));
    return;
  }
  const m = detail.summary;
  const panels = [];
  const problems = [...(m.errors || []), ...(m.warnings || [])];
  if (problems.length) {
    panels.push(h("section", { class: "panel problems-panel", "aria-labelledby": "problems-title" },
      h("h2", { id: "problems-title" }, m.errors?.length ? "Errors" : "Warnings"),
      h("ul", { class: "problems" },
        (m.errors || []).map((e) => h("li", { class: "problem error" }, h("code", {}, e))),
        (m.warnings || []).map((w) => h("li", { class: "problem warning" }, h("code", {}, w))))));
  }
  if (source.canFire && detail.graph) panels.push(transitionsPanel());
  if (detail.graph) {
    panels.push(h("section", { class: "panel graph-panel", "aria-labelledby": "graph-title" },
      h("div", { class: "panel-head" }, h("h2", { id: "graph-title" }, "State graph"),
        MODE === "fleet" ? h("p", { class: "muted small" }, "States and transitions seen on NATS so far") : null),
      h("div", { class: "graph-wrap", id: "graph" }),
      transitionsTable(detail.graph)));
  } else if (detail.graphError && !m.errors?.length) {
    panels.push(h("div", { class: "notice error", role: "alert" }, `Cannot load the graph: ${detail.graphError.message}`));
  }
  if (detail.graph || detail.watchers.length) {
    panels.push(h("section", { class: "panel", "aria-labelledby": "watchers-title" },
      h("h2", { id: "watchers-title" }, "Watchers"),
      h("div", { id: "watchers" })));
    panels.push(h("div", { class: "panel-row" },
      h("section", { class: "panel", "aria-labelledby": "durations-title" },
        h("h2", { id: "durations-title" }, "Run durations"),
        h("div", { class: "charts", id: "charts" })),
      h("section", { class: "panel", "aria-labelledby": "history-title" },
        h("h2", { id: "history-title" }, "History"),
        h("ol", { class: "timeline", id: "timeline", "aria-label": "Transitions, newest first" }),
        h("p", { id: "history-foot" }))));
  }
  replaceChildren(main, h("section", { class: "view view-machine", "aria-labelledby": "view-title" },
    crumbs, machineHead(m), panels));
  if (detail.graph) {
    renderGraphInto();
    renderButtons();
  }
  renderWatchers();
  renderHistory();
  restoreFocus(memo);
}

function machineHead(m) {
  const detail = app.detail;
  const facts = [
    ["State", h("span", { class: "state-pill", id: "detail-state", "data-state": m.state || "" }, m.state || "—")],
    ["In state since", h("span", { id: "detail-since" }, timeAgo(m.state_entered))],
    ["Version", m.version || "—"],
  ];
  if (MODE === "fleet") facts.push(["Node", h("a", { href: `#/node/${enc(detail.ref.identity)}` }, detail.ref.identity)]);
  if (m.start_time && m.start_time > 0) facts.push(["Started", timeAgo(m.start_time)]);
  if (MODE === "fleet" && m.last_seen) facts.push(["Last event", timeAgo(m.last_seen)]);
  if (m.id) facts.push(["Instance", h("code", { class: "small" }, m.id)]);
  if (m.path) facts.push(["Directory", h("code", { class: "small path" }, m.path)]);
  return h("header", { class: "machine-head" },
    h("div", { class: "title-row" }, h("h1", { id: "view-title" }, m.name), badge(m.status || "unknown", statusClass(m.status))),
    h("dl", { class: "facts" }, facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v)))));
}

function availableTransitions() {
  const { graph, summary } = app.detail;
  if (!graph) return [];
  const names = new Map();
  for (const e of graph.edges) if (e.source === graph.current && !names.has(e.transition)) names.set(e.transition, e);
  // On the fleet, the node's own answer says what can be fired (the graph only knows what was seen).
  const known = MODE === "fleet" ? summary?.available_transitions : null;
  if (Array.isArray(known)) {
    return known.map((t) => names.get(t) || { source: graph.current, transition: t, destination: "?", description: "" })
      .sort((a, b) => a.transition.localeCompare(b.transition));
  }
  return [...names.values()].sort((a, b) => a.transition.localeCompare(b.transition));
}

function transitionsPanel() {
  return h("section", { class: "panel", "aria-labelledby": "fire-title" },
    h("div", { class: "panel-head" }, h("h2", { id: "fire-title" }, "Transitions available now"),
      h("p", { class: "muted small", id: "fire-hint" }, tokenHint())),
    h("div", { class: "transition-buttons", id: "transition-buttons", role: "group", "aria-labelledby": "fire-title" }),
    h("p", { class: "result", id: "transition-result", role: "status" }),
    h("div", { class: "notice error", id: "transition-error", role: "alert", hidden: true }));
}

function tokenHint() {
  if (MODE === "fleet") {
    return sessionStorage.getItem(TOKEN_KEY)
      ? "Requests carry the dashboard token set above; each node checks the dashboard's signature."
      : "No token set: paste the token the dashboard printed when it started.";
  }
  return sessionStorage.getItem(TOKEN_KEY)
    ? "Requests carry the API token set above."
    : "No API token set: the agent may refuse (paste its token above).";
}

function renderButtons() {
  const box = document.getElementById("transition-buttons");
  if (!box) return;
  const focused = document.activeElement?.closest?.("#transition-buttons") ? document.activeElement.dataset.transition : null;
  const items = availableTransitions();
  box.replaceChildren(...(items.length ? items.map((e) => h("button", {
    type: "button", class: "transition-btn", "data-transition": e.transition,
    title: e.description || `${e.source} → ${e.destination}`,
    onclick: () => fire(e.transition),
  }, h("span", { class: "t-name" }, e.transition), h("span", { class: "t-dest", "aria-hidden": "true" }, `→ ${e.destination}`),
  h("span", { class: "sr-only" }, `, to ${e.destination}`))) : [h("p", { class: "muted" }, "None: no transition leaves this state.")]));
  if (focused) (box.querySelector(`[data-transition="${CSS.escape(focused)}"]`) || box.querySelector("button"))?.focus();
}

// After firing on the fleet: the dashboard asked the node again, so it knows what can be fired now.
async function refreshAvailable(detail) {
  try {
    const doc = await source.machine(detail.ref);
    if (app.detail !== detail || !doc.summary || !detail.summary) return;
    detail.summary.state = doc.summary.state;
    detail.summary.available_transitions = doc.summary.available_transitions;
    renderButtons();
  } catch {
    // The buttons fall back to the transitions seen so far.
  }
}

async function fire(transition) {
  if (app.firing) return; // one request at a time: a double click must not fire twice
  app.firing = true;
  const detail = app.detail;
  const result = document.getElementById("transition-result");
  const error = document.getElementById("transition-error");
  const buttons = [...document.querySelectorAll("#transition-buttons button")];
  buttons.forEach((b) => { b.setAttribute("aria-disabled", "true"); b.classList.add("busy"); });
  result.className = "result pending";
  result.textContent = `Firing ${transition}…`;
  try {
    const answer = await source.fire(detail.ref, transition, sessionStorage.getItem(TOKEN_KEY));
    error.hidden = true;
    error.textContent = "";
    result.className = "result ok";
    if (MODE === "fleet") refreshAvailable(detail);
    result.textContent = answer.changed
      ? `${transition}: ${answer.from_state} → ${answer.to_state}`
      : `${transition} is valid in ${answer.from_state} and changed nothing`;
  } catch (err) {
    result.className = "result";
    result.textContent = "";
    const status = err instanceof ApiError ? err.status : 0;
    const hints = MODE === "fleet" ? {
      401: "The dashboard wants its token: paste the one it printed when it started.",
      403: "The node refused the signed request (does it trust the dashboard's key in control.public_keys?).",
      409: "The machine is not in a state where this transition is allowed (it may just have moved).",
      504: "The node did not answer.",
    } : {
      401: "The agent wants a valid API token: paste it in the token field at the top.",
      403: "The agent has no token configured for state changes (set http.token_file).",
      409: "The machine is not in a state where this transition is allowed (it may just have moved).",
    };
    replaceChildren(error,
      h("strong", {}, status ? `Refused (HTTP ${status})` : "Failed"), `: ${err.message}`,
      hints[status] ? h("span", { class: "hint" }, ` ${hints[status]}`) : null);
    error.hidden = false;
  } finally {
    app.firing = false;
    for (const b of document.querySelectorAll("#transition-buttons button")) {
      b.removeAttribute("aria-disabled");
      b.classList.remove("busy");
    }
  }
}

function renderGraphInto() {
  const wrap = document.getElementById("graph");
  const { graph } = app.detail;
  if (!wrap || !graph) return;
  const direction = bestDirection(graph, wrap.clientWidth);
  wrap.replaceChildren(renderGraph(graph, direction));
  wrap.dataset.direction = direction;
}

function transitionsTable(graph) {
  return h("details", { class: "graph-table" },
    h("summary", {}, "Transitions as a table"),
    h("table", { class: "compact" },
      h("thead", {}, h("tr", {}, ["From", "Transition", "To", "Description"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, graph.edges.map((e) => h("tr", {},
        h("td", {}, e.source), h("td", {}, h("code", {}, e.transition)), h("td", {}, e.destination), h("td", {}, e.description || ""))))));
}

function watcherRow(w) {
  const status = w.status || {};
  const active = w.active === null || w.active === undefined
    ? h("span", { class: "muted" }, "—")
    : badge(w.active ? "active" : "idle", w.active ? "status-running" : "status-stopped");
  const samples = status.durations || [];
  return h("tr", { "data-watcher": w.name },
    h("th", { scope: "row", "data-label": "Watcher" }, w.name),
    h("td", { "data-label": "Type" }, h("code", {}, w.type)),
    h("td", { "data-label": "Active" }, active),
    h("td", { "data-label": "Last outcome" }, status.outcome ? badge(status.outcome, `outcome-${String(status.outcome).replace(/[^a-z0-9_-]/gi, "")}`) : "—",
      status.last_error ? h("span", { class: "small error-text", title: status.last_error }, " ⚠ ", status.last_error) : null),
    h("td", { "data-label": "Last run" }, timeAgo(status.last_run)),
    h("td", { "data-label": "Duration" }, formatDuration(status.last_duration)),
    h("td", { "data-label": "Next run" }, timeAgo(status.next_run)),
    h("td", { "data-label": "Runs", class: "num" }, status.runs ?? "—"),
    h("td", { "data-label": "Recent" }, sparkline(samples, w.name)));
}

function renderWatchers() {
  const detail = app.detail;
  const box = document.getElementById("watchers");
  if (!detail || !box) return;
  if (!detail.watchers.length) {
    box.replaceChildren(h("p", { class: "muted" }, MODE === "fleet" ? "No watcher state seen yet." : "This machine has no watchers."));
  } else {
    box.replaceChildren(h("table", { class: "watchers" },
      h("thead", {}, h("tr", {}, ["Watcher", "Type", "Active", "Last outcome", "Last run", "Duration", "Next run", "Runs", "Recent"]
        .map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, detail.watchers.map(watcherRow))));
  }
  renderCharts();
}

function renderCharts() {
  const box = document.getElementById("charts");
  if (!box) return;
  const timed = app.detail.watchers.filter((w) => (w.status?.durations || []).length);
  box.replaceChildren(...(timed.length
    ? timed.map((w) => durationChart(w.status.durations, w.name))
    : [h("p", { class: "muted" }, "No timed watcher runs yet (exec and similar watchers report how long they ran).")]));
}

function historyItem(item, fresh) {
  return h("li", { class: ["tl-item", fresh && "flash"], "data-seq": item.seq ?? "" },
    h("span", { class: "tl-time" }, timeAgo(item.timestamp), h("span", { class: "small muted" }, ` ${clockTime(item.timestamp)}`)),
    h("span", { class: "tl-change" },
      h("span", { class: "state-pill small", "data-state": item.from_state }, item.from_state),
      h("span", { "aria-hidden": "true" }, " → "), h("span", { class: "sr-only" }, " to "),
      h("span", { class: "state-pill small", "data-state": item.to_state }, item.to_state)),
    h("span", { class: "tl-via" }, "via ", h("code", {}, item.transition)));
}

function renderHistory() {
  const list = document.getElementById("timeline");
  const foot = document.getElementById("history-foot");
  if (!list) return;
  const { history } = app.detail;
  list.replaceChildren(...history.map((item) => historyItem(item, false)));
  foot.replaceChildren();
  if (!history.length) foot.append(h("span", { class: "muted" }, "No transitions recorded yet."));
  else if (!app.detail.historyDone && source.olderHistory) {
    foot.append(h("button", { type: "button", id: "history-more", onclick: loadOlder }, "Load older"));
  }
}

async function loadOlder() {
  const detail = app.detail;
  const seqs = detail.history.map((i) => i.seq).filter((n) => typeof n === "number");
  if (!seqs.length) return;
  try {
    const older = await source.olderHistory(detail.ref, Math.min(...seqs));
    detail.history.push(...older);
    detail.historyDone = older.length < 100;
    renderHistory();
    document.getElementById("history-more")?.focus();
  } catch (err) {
    document.getElementById("history-foot").append(h("span", { class: "error-text", role: "alert" }, ` ${err.message}`));
  }
}

// -- live events ----------------------------------------------------------------------------

function describe(ev) {
  const d = ev.data;
  if (ev.kind === "transition") return `${d.machine} ${d.from_state} → ${d.to_state} via ${d.transition}`;
  const skip = new Set(["protocol", "identity", "id", "version", "timestamp", "type", "machine", "name"]);
  const fields = Object.entries(d).filter(([k]) => !skip.has(k)).map(([k, v]) => {
    if (k.endsWith("run_time") && typeof v === "number") return `${k}=${formatDuration(v / 1e9)}`;
    const text = typeof v === "object" ? JSON.stringify(v) : String(v);
    return `${k}=${text.length > 60 ? `${text.slice(0, 57)}…` : text}`;
  });
  return `${d.machine}#${d.name} ${d.type || ev.type}${fields.length ? `: ${fields.join(" ")}` : ""}`;
}

function decode(text, lastId) {
  let ce;
  try {
    ce = JSON.parse(text);
  } catch {
    return null;
  }
  if (!ce || typeof ce !== "object") return null;
  const data = ce.specversion ? ce.data : ce;
  if (!data || typeof data !== "object") return null;
  const type = ce.type || data.protocol || "";
  const kind = type === TRANSITION_TYPE ? "transition" : "watcher";
  const identity = String(data.identity || ce.subject || "");
  const ev = {
    seq: lastId, ce, data, type, kind, identity, machine: String(data.machine || ""),
    time: Number(data.timestamp) || Date.parse(ce.time) / 1000 || Date.now() / 1000, text,
  };
  ev.line = describe(ev);
  return ev;
}

function onEvent(message) {
  const ev = decode(message.data, message.lastEventId);
  if (!ev) return;
  const identity = MODE === "agent" ? app.identity : ev.identity;
  const key = keyOf(identity, ev.machine);
  if (MODE === "fleet" && ev.identity) {
    const node = app.nodes.get(ev.identity);
    if (node) {
      node.last_seen = Math.max(node.last_seen || 0, ev.time);
      const seen = main.querySelector(`a.node-chip[data-node="${CSS.escape(ev.identity)}"] time`);
      if (seen) seen.dataset.ts = String(node.last_seen);
    } else {
      app.nodes.set(ev.identity, { ...app.nodes.get(ev.identity), identity: ev.identity, last_seen: ev.time });
      renderHeader();
    }
  }
  let summary = app.machines.get(key);
  if (!summary) {
    if (MODE === "agent") refreshOverview();
    else {
      summary = { identity, name: ev.machine, status: "observed", state: null, version: ev.data.version, id: ev.data.id };
      app.machines.set(key, summary);
      updateMachineFilterOptions();
      scheduleList();
    }
  }
  if (summary && MODE === "fleet") {
    summary.last_seen = ev.time;
    if (ev.data.version) summary.version = ev.data.version;
  }
  if (ev.kind === "transition") applyTransition(key, ev);
  else applyWatcherState(key, ev);
  addEvent(ev);
}

function applyTransition(key, ev) {
  const d = ev.data;
  const summary = app.machines.get(key);
  if (summary) {
    summary.state = d.to_state;
    summary.state_entered = Number(d.timestamp) || ev.time;
    summary.last_transition = { transition: d.transition, from_state: d.from_state, to_state: d.to_state, timestamp: summary.state_entered };
    patchListRow(key, true);
  }
  const detail = app.detail;
  if (!detail || detail.key !== key || app.route.view !== "machine") return;
  if (detail.summary) {
    // The node's list of what can be fired was about the state it just left.
    if (MODE === "fleet" && detail.summary.state !== d.to_state) detail.summary.available_transitions = null;
    detail.summary.state = d.to_state;
    detail.summary.state_entered = Number(d.timestamp) || ev.time;
    const state = document.getElementById("detail-state");
    if (state) {
      state.textContent = d.to_state;
      state.dataset.state = d.to_state;
      state.classList.remove("flash");
      void state.offsetWidth;
      state.classList.add("flash");
    }
    const since = document.getElementById("detail-since");
    if (since) since.replaceChildren(timeAgo(detail.summary.state_entered));
  }
  if (detail.graph) {
    const graph = detail.graph;
    graph.current = d.to_state;
    // The fleet view learns the graph from what it sees: add what is new.
    let grew = false;
    for (const st of [d.from_state, d.to_state]) if (!graph.states.includes(st)) { graph.states.push(st); grew = true; }
    if (!graph.edges.some((e) => e.source === d.from_state && e.transition === d.transition && e.destination === d.to_state)) {
      if (MODE === "fleet") { graph.edges.push({ source: d.from_state, transition: d.transition, destination: d.to_state, description: "" }); grew = true; }
    }
    if (grew) renderGraphInto();
    const svg = document.querySelector("#graph svg");
    if (svg) {
      setCurrent(svg, d.to_state);
      flashTransition(svg, d.from_state, d.transition, d.to_state);
    }
    renderButtons();
  }
  detail.history.unshift({ seq: null, machine: d.machine, id: d.id, version: d.version, transition: d.transition,
    from_state: d.from_state, to_state: d.to_state, timestamp: Number(d.timestamp) || ev.time });
  detail.history.length = Math.min(detail.history.length, MAX_HISTORY);
  const list = document.getElementById("timeline");
  if (list) {
    list.prepend(historyItem(detail.history[0], true));
    while (list.children.length > MAX_HISTORY) list.lastElementChild.remove();
    const foot = document.getElementById("history-foot");
    if (foot && foot.textContent.startsWith("No transitions")) foot.replaceChildren();
  }
  // Which watchers are active depends on the state: mark what we know now, then ask the agent.
  for (const w of detail.watchers) {
    if (Array.isArray(w.state_match) && w.state_match.length && w.active !== null && w.active !== undefined) {
      w.active = w.state_match.includes(d.to_state);
    }
  }
  renderWatchers();
  refreshWatchers();
}

function applyWatcherState(key, ev) {
  const detail = app.detail;
  if (!detail || detail.key !== key || app.route.view !== "machine") return;
  const d = ev.data;
  let w = detail.watchers.find((x) => x.name === d.name);
  if (!w) {
    if (MODE === "agent") return refreshWatchers();
    w = { name: d.name, type: d.type || "", state_match: [], active: null, interval: null, status: { runs: 0, durations: [] }, state: {} };
    detail.watchers.push(w);
    detail.watchers.sort((a, b) => a.name.localeCompare(b.name));
  }
  w.state = d;
  const status = (w.status ||= {});
  if (typeof d.previous_outcome === "string" && d.previous_outcome) status.outcome = d.previous_outcome;
  status.last_run = Number(d.timestamp) || ev.time;
  if (typeof d.previous_run_time === "number") {
    status.last_duration = d.previous_run_time / 1e9;
    status.durations = [...(status.durations || []), [status.last_run, status.last_duration]].slice(-MAX_SAMPLES);
  }
  if (MODE === "fleet") status.runs = (status.runs || 0) + 1;
  const row = document.querySelector(`#watchers tr[data-watcher="${CSS.escape(d.name)}"]`);
  if (row) {
    const fresh = watcherRow(w);
    fresh.classList.add("flash");
    row.replaceWith(fresh);
    renderCharts();
  } else renderWatchers();
  if (MODE === "agent") refreshWatchers();
}

// -- the events panel -----------------------------------------------------------------------

const filters = {
  node: document.getElementById("filter-node"),
  machine: document.getElementById("filter-machine"),
  kind: document.getElementById("filter-kind"),
  type: document.getElementById("filter-type"),
  text: document.getElementById("filter-text"),
};
const eventList = document.getElementById("events-list");
const eventStatus = document.getElementById("events-status");
const pauseButton = document.getElementById("events-pause");

function passes(ev) {
  if (filters.node.value && ev.identity !== filters.node.value) return false;
  if (filters.machine.value && ev.machine !== filters.machine.value) return false;
  if (filters.kind.value === "transitions" && ev.kind !== "transition") return false;
  if (filters.kind.value === "watchers" && ev.kind !== "watcher") return false;
  if (filters.type.value && ev.type !== filters.type.value) return false;
  const needle = filters.text.value.trim().toLowerCase();
  return !needle || ev.line.toLowerCase().includes(needle) || ev.text.toLowerCase().includes(needle);
}

function eventItem(ev) {
  const details = h("details", { class: "ev-json" }, h("summary", {}, "JSON"));
  details.addEventListener("toggle", () => {
    if (details.open && !details.querySelector("pre")) details.append(h("pre", {}, JSON.stringify(ev.ce, null, 2)));
  }, { once: false });
  return h("li", { class: ["ev", `ev-${ev.kind}`], "data-kind": ev.kind, "data-machine": ev.machine },
    h("div", { class: "ev-line" },
      h("time", { class: "ev-time", datetime: new Date(ev.time * 1000).toISOString() }, clockTime(ev.time)),
      h("span", { class: ["ev-kind", ev.kind === "transition" ? "k-transition" : "k-watcher"] }, ev.kind === "transition" ? "transition" : (ev.data.type || "watcher")),
      MODE === "fleet" ? h("span", { class: "ev-node small muted" }, ev.identity) : null),
    h("p", { class: "ev-text" }, ev.line),
    details);
}

function addEvent(ev) {
  app.events.unshift(ev);
  if (app.events.length > MAX_EVENTS) app.events.length = MAX_EVENTS;
  addOption(filters.type, ev.type, ev.type.replace("io.choria.machine.", ""));
  if (MODE === "fleet") addOption(filters.node, ev.identity);
  addOption(filters.machine, ev.machine);
  if (app.paused) {
    if (passes(ev)) app.unseen += 1;
    updateEventStatus();
    return;
  }
  if (!passes(ev)) return;
  eventList.prepend(eventItem(ev));
  while (eventList.children.length > MAX_EVENTS) eventList.lastElementChild.remove();
  updateEventStatus();
}

function renderEvents() {
  eventList.replaceChildren(...app.events.filter(passes).map(eventItem));
  updateEventStatus();
}

function updateEventStatus() {
  const shown = eventList.children.length;
  eventStatus.textContent = app.paused
    ? `Paused: ${app.unseen} new event${app.unseen === 1 ? "" : "s"} waiting.`
    : `${shown} event${shown === 1 ? "" : "s"} shown${app.events.length !== shown ? ` of ${app.events.length}` : ""}.`;
}

function togglePause() {
  app.paused = !app.paused;
  pauseButton.setAttribute("aria-pressed", String(app.paused));
  pauseButton.textContent = app.paused ? "Resume" : "Pause";
  if (!app.paused) {
    app.unseen = 0;
    renderEvents();
  } else updateEventStatus();
}

// The filter menus grow with what is seen (sets: a fleet can have thousands of names).
const optionsSeen = new Map();

function addOption(select, value, label = value) {
  if (!optionsSeen.has(select)) optionsSeen.set(select, new Set());
  const seen = optionsSeen.get(select);
  if (!value || seen.has(value)) return;
  seen.add(value);
  select.append(h("option", { value }, label));
}

function updateMachineFilterOptions() {
  for (const name of [...new Set([...app.machines.values()].map((m) => m.name))].sort()) addOption(filters.machine, name);
  if (MODE === "fleet") for (const identity of [...app.nodes.keys()].sort()) addOption(filters.node, identity);
}

// -- the event stream -----------------------------------------------------------------------

let stream = null;
let retry = 1000;

function connect() {
  setConnection("connecting", "connecting…");
  stream = new EventSource(source.eventsURL);
  stream.addEventListener("open", () => {
    retry = 1000;
    setConnection("live", "live");
    // Whatever happened while we were away (or before the stream was up): read it once.
    app.opened = true;
    refreshAll();
  });
  stream.addEventListener("machine", onEvent);
  stream.addEventListener("error", () => {
    if (stream.readyState === EventSource.CLOSED) {
      setConnection("offline", `disconnected: retrying in ${Math.round(retry / 1000)}s`);
      stream.close();
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 30000);
    } else setConnection("reconnecting", "reconnecting…");
  });
}

// -- the token ------------------------------------------------------------------------------

function setupToken() {
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  const state = document.getElementById("token-state");
  const show = () => {
    const set = Boolean(sessionStorage.getItem(TOKEN_KEY));
    state.textContent = set ? "set for this tab" : "not set";
    form.dataset.set = String(set);
    const hint = document.getElementById("fire-hint");
    if (hint) hint.textContent = tokenHint();
  };
  input.value = sessionStorage.getItem(TOKEN_KEY) || "";
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    show();
  });
  document.getElementById("token-clear").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    input.value = "";
    show();
  });
  show();
}

// -- keyboard -------------------------------------------------------------------------------

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const dialog = document.getElementById("help-dialog");
  if (dialog.open) return;
  if (event.key === "Escape" && typingIn(event) && event.target.type === "search" && event.target.value) return;
  if (typingIn(event) && event.key !== "Escape") return;
  if (event.key === "/") {
    event.preventDefault();
    const target = document.getElementById("machine-filter") || filters.text;
    target.focus();
    target.select?.();
  } else if (event.key === "p") {
    togglePause();
  } else if (event.key === "?") {
    dialog.showModal();
  } else if (event.key === "Escape" && app.route.view === "machine") {
    location.hash = "#/";
  }
}

// -- start ----------------------------------------------------------------------------------

function start() {
  document.getElementById("skip-link").addEventListener("click", (event) => {
    event.preventDefault();
    main.focus();
    main.scrollIntoView();
  });
  document.getElementById("help-button").addEventListener("click", () => document.getElementById("help-dialog").showModal());
  pauseButton.addEventListener("click", togglePause);
  document.getElementById("events-clear").addEventListener("click", () => {
    app.events = [];
    app.unseen = 0;
    renderEvents();
  });
  for (const el of Object.values(filters)) el.addEventListener(el.tagName === "INPUT" ? "input" : "change", renderEvents);
  document.getElementById("events-filters").addEventListener("submit", (e) => e.preventDefault());
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", onRoute);
  if (MODE === "agent" || CONTROL) setupToken();
  // The graph picks its layout by the width it has.
  let width = 0;
  new ResizeObserver(() => {
    const wrap = document.getElementById("graph");
    if (!wrap || !app.detail?.graph) return;
    if (Math.abs(wrap.clientWidth - width) < 40) return;
    width = wrap.clientWidth;
    const direction = bestDirection(app.detail.graph, width);
    if (direction !== wrap.dataset.direction) renderGraphInto();
  }).observe(main);
  setInterval(refreshTimes, 1000);
  updateEventStatus();
  app.route = parseRoute();
  render();
  connect();
  // Read the state at once too, so the page is useful even if the stream cannot connect.
  refreshAll();
}

start();
