// The state graph as SVG, laid out here: no graph library, no server-side rendering.
//
// Layout: states are layered by their BFS distance from the initial state (states it cannot
// reach go to further layers), ordered within a layer by a few barycenter sweeps to reduce
// crossings. Parallel edges between two states are merged into one arrow with one label line
// per transition; self-loops are drawn as loops. An edge whose straight line (or label) would
// cross another state is bent, further and further, until it clears every state. Both a
// left-to-right and a top-to-bottom layout are computed, and the one that will show the text
// larger in the available width wins (a phone gets the tall one).

import { s } from "./util.js";

const NODE_H = 38;
const NODE_PAD = 18;
const MIN_NODE_W = 70;
const LINE_H = 15;
const MARGIN = 16;
const FONT_FAMILY = 'system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif';
const STATE_FONT = `600 14px ${FONT_FAMILY}`;
const LABEL_FONT = `12px ${FONT_FAMILY}`;

let measurer = null;
let markerSerial = 0;

function textWidth(text, font) {
  if (measurer === null) measurer = document.createElement("canvas").getContext("2d");
  measurer.font = font;
  return measurer.measureText(text).width;
}

function edgeGroups(graph) {
  const groups = new Map();
  for (const e of graph.edges) {
    const key = `${e.source}\u0000${e.destination}`;
    if (!groups.has(key)) groups.set(key, { source: e.source, dest: e.destination, transitions: [] });
    const group = groups.get(key);
    if (!group.transitions.some((t) => t.name === e.transition)) {
      group.transitions.push({ name: e.transition, description: e.description || "" });
    }
  }
  return groups;
}

/** Layers (lists of state names) by BFS distance from the initial state. */
function layering(states, initial, groups) {
  const out = new Map(states.map((n) => [n, []]));
  const undirected = new Map(states.map((n) => [n, new Set()]));
  for (const g of groups.values()) {
    if (g.source === g.dest) continue;
    out.get(g.source).push(g.dest);
    undirected.get(g.source).add(g.dest);
    undirected.get(g.dest).add(g.source);
  }
  const layerOf = new Map();
  const roots = [initial, ...states];
  let base = 0;
  for (const root of roots) {
    if (layerOf.has(root)) continue;
    const queue = [root];
    layerOf.set(root, base);
    let deepest = base;
    while (queue.length) {
      const node = queue.shift();
      for (const next of out.get(node)) {
        if (layerOf.has(next)) continue;
        layerOf.set(next, layerOf.get(node) + 1);
        deepest = Math.max(deepest, layerOf.get(next));
        queue.push(next);
      }
    }
    base = deepest + 1;
  }
  const layers = [];
  for (const n of states) {
    const l = layerOf.get(n);
    (layers[l] ||= []).push(n);
  }
  const compact = layers.filter((l) => l && l.length);
  // Barycenter sweeps: order each layer by the mean position of its neighbours next door.
  const position = new Map();
  const index = () => compact.forEach((layer) => layer.forEach((n, i) => position.set(n, i)));
  index();
  const sweep = (layer, neighbourLayer) => {
    const inNeighbour = new Set(neighbourLayer);
    const score = new Map();
    layer.forEach((n, i) => {
      const around = [...undirected.get(n)].filter((m) => inNeighbour.has(m));
      score.set(n, around.length ? around.reduce((a, m) => a + position.get(m), 0) / around.length : i);
    });
    layer.sort((a, b) => score.get(a) - score.get(b));
    layer.forEach((n, i) => position.set(n, i));
  };
  for (let round = 0; round < 4; round++) {
    for (let l = 1; l < compact.length; l++) sweep(compact[l], compact[l - 1]);
    for (let l = compact.length - 2; l >= 0; l--) sweep(compact[l], compact[l + 1]);
  }
  return compact;
}

function quad(p0, c, p1, t) {
  const u = 1 - t;
  return { x: u * u * p0.x + 2 * u * t * c.x + t * t * p1.x, y: u * u * p0.y + 2 * u * t * c.y + t * t * p1.y };
}

function inside(node, p, pad) {
  return Math.abs(p.x - node.x) <= node.w / 2 + pad && Math.abs(p.y - node.y) <= node.h / 2 + pad;
}

function overlaps(a, b) {
  return a.x1 < b.x2 && b.x1 < a.x2 && a.y1 < b.y2 && b.y1 < a.y2;
}

function nodeBox(node, pad) {
  return { x1: node.x - node.w / 2 - pad, x2: node.x + node.w / 2 + pad, y1: node.y - node.h / 2 - pad, y2: node.y + node.h / 2 + pad };
}

/** Where the ray from the node's centre towards `toward` leaves its box. */
function boundary(node, toward, gap) {
  const dx = toward.x - node.x, dy = toward.y - node.y;
  if (dx === 0 && dy === 0) return { x: node.x, y: node.y };
  const tx = dx !== 0 ? (node.w / 2 + gap) / Math.abs(dx) : Infinity;
  const ty = dy !== 0 ? (node.h / 2 + gap) / Math.abs(dy) : Infinity;
  const t = Math.min(tx, ty);
  return { x: node.x + dx * t, y: node.y + dy * t };
}

/**
 * Lay out a graph ({states, initial, edges}) in one direction, "LR" or "TB".
 * Returns {direction, width, height, nodes: Map, edges: [...], loops: [...], initialMark}.
 */
export function layout(graph, direction = "LR") {
  const states = [...graph.states];
  const add = (n) => { if (n && !states.includes(n)) states.push(n); };
  add(graph.initial);
  for (const e of graph.edges) { add(e.source); add(e.destination); }
  add(graph.current);
  const groups = edgeGroups(graph);
  const layers = states.length ? layering(states, graph.initial || states[0], groups) : [];
  const labelSize = (transitions) => ({
    w: Math.max(...transitions.map((t) => textWidth(t.name, LABEL_FONT))) + 10,
    h: transitions.length * LINE_H + 4,
  });
  let widestLabel = 0, loopLines = 0, widestLoop = 0;
  for (const g of groups.values()) {
    const size = labelSize(g.transitions);
    if (g.source === g.dest) {
      loopLines = Math.max(loopLines, g.transitions.length);
      widestLoop = Math.max(widestLoop, size.w);
    } else widestLabel = Math.max(widestLabel, size.w);
  }
  const nodes = new Map();
  for (const [l, layer] of layers.entries()) {
    layer.forEach((name, i) => {
      const w = Math.max(MIN_NODE_W, Math.ceil(textWidth(name, STATE_FONT)) + 2 * NODE_PAD);
      nodes.set(name, { name, layer: l, index: i, w, h: NODE_H, x: 0, y: 0 });
    });
  }
  const loopRoom = loopLines ? 40 + loopLines * LINE_H : 0;
  const initialRoom = 34;
  if (direction === "LR") {
    const gapMajor = Math.min(240, Math.max(96, widestLabel + 40));
    const gapMinor = Math.max(52, loopRoom + 18);
    const columns = layers.map((layer) => Math.max(...layer.map((n) => nodes.get(n).w)));
    const heights = layers.map((layer) => layer.length * NODE_H + (layer.length - 1) * gapMinor);
    const tallest = Math.max(0, ...heights);
    let x = MARGIN + initialRoom;
    layers.forEach((layer, l) => {
      x += l === 0 ? columns[0] / 2 : columns[l - 1] / 2 + gapMajor + columns[l] / 2;
      const top = MARGIN + loopRoom + (tallest - heights[l]) / 2;
      layer.forEach((name, i) => {
        const node = nodes.get(name);
        node.x = x;
        node.y = top + i * (NODE_H + gapMinor) + NODE_H / 2;
      });
    });
  } else {
    const gapMajor = 84;
    const gapMinor = Math.max(36, loopLines ? 52 + widestLoop : 0);
    const widths = layers.map((layer) => layer.reduce((a, n) => a + nodes.get(n).w, 0) + (layer.length - 1) * gapMinor);
    const widest = Math.max(0, ...widths);
    layers.forEach((layer, l) => {
      let x = MARGIN + (widest - widths[l]) / 2;
      const y = MARGIN + initialRoom + l * (NODE_H + gapMajor) + NODE_H / 2;
      for (const name of layer) {
        const node = nodes.get(name);
        node.x = x + node.w / 2;
        node.y = y;
        x += node.w + gapMinor;
      }
    });
  }

  const all = [...nodes.values()];
  const edges = [];
  const loops = [];
  for (const g of groups.values()) {
    const a = nodes.get(g.source), b = nodes.get(g.dest);
    const size = labelSize(g.transitions);
    if (a === b) {
      let path, label, anchor;
      if (direction === "LR") {
        const top = a.y - a.h / 2;
        path = `M ${a.x - 13} ${top} C ${a.x - 34} ${top - 42}, ${a.x + 34} ${top - 42}, ${a.x + 13} ${top}`;
        label = { x: a.x, y: top - 36 - size.h + LINE_H - 2 };
        anchor = "middle";
      } else {
        const right = a.x + a.w / 2;
        path = `M ${right} ${a.y - 10} C ${right + 42} ${a.y - 34}, ${right + 42} ${a.y + 34}, ${right} ${a.y + 10}`;
        label = { x: right + 40, y: a.y - size.h / 2 + LINE_H - 2 };
        anchor = "start";
      }
      loops.push({ ...g, path, label, anchor, size });
      continue;
    }
    const reverse = groups.has(`${g.dest}\u0000${g.source}`);
    const dx = b.x - a.x, dy = b.y - a.y;
    const length = Math.hypot(dx, dy) || 1;
    const normal = { x: dy / length, y: -dx / length };
    const mid = { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
    const others = all.filter((n) => n !== a && n !== b);
    const geometry = (k) => {
      const c = { x: mid.x + normal.x * k, y: mid.y + normal.y * k };
      const at = quad(a, c, b, 0.5);
      const box = { x1: at.x - size.w / 2, x2: at.x + size.w / 2, y1: at.y - size.h / 2, y2: at.y + size.h / 2 };
      return { c, at, box };
    };
    const blocked = (k) => {
      const { c, box } = geometry(k);
      for (let t = 0.06; t < 0.95; t += 0.04) {
        const p = quad(a, c, b, t);
        if (others.some((n) => inside(n, p, 7))) return true;
      }
      return all.some((n) => overlaps(box, nodeBox(n, 3)))
        || edges.some((e) => overlaps(box, e.box));
    };
    let k = reverse ? 30 : 0;
    for (let tries = 0; tries < 30 && blocked(k); tries++) k += 16;
    const { c, at, box } = geometry(k);
    const start = boundary(a, k ? c : b, 2);
    const end = boundary(b, k ? c : a, 3);
    edges.push({ ...g, path: `M ${start.x} ${start.y} Q ${c.x} ${c.y} ${end.x} ${end.y}`, label: at, box, size, c });
  }

  // The extent of everything drawn, then a margin; shift so it starts at the margin.
  const xs = [], ys = [];
  for (const n of all) { xs.push(n.x - n.w / 2, n.x + n.w / 2); ys.push(n.y - n.h / 2, n.y + n.h / 2); }
  for (const e of edges) { xs.push(e.box.x1, e.box.x2); ys.push(e.box.y1, e.box.y2); }
  for (const lp of loops) {
    if (direction === "LR") {
      xs.push(lp.label.x - lp.size.w / 2, lp.label.x + lp.size.w / 2);
      ys.push(lp.label.y - LINE_H);
    } else {
      xs.push(lp.label.x + lp.size.w);
      ys.push(lp.label.y - LINE_H, lp.label.y + lp.size.h);
    }
  }
  let initialMark = null;
  const first = nodes.get(graph.initial);
  if (first) {
    initialMark = direction === "LR"
      ? { dot: { x: first.x - first.w / 2 - 26, y: first.y }, to: { x: first.x - first.w / 2 - 3, y: first.y } }
      : { dot: { x: first.x, y: first.y - first.h / 2 - 26 }, to: { x: first.x, y: first.y - first.h / 2 - 3 } };
    xs.push(initialMark.dot.x - 6);
    ys.push(initialMark.dot.y - 6);
  }
  const minX = Math.min(...xs, 0) - MARGIN, minY = Math.min(...ys, 0) - MARGIN;
  const width = Math.ceil(Math.max(...xs, 0) - minX + MARGIN);
  const height = Math.ceil(Math.max(...ys, 0) - minY + MARGIN);
  return { direction, width, height, originX: minX, originY: minY, nodes, edges, loops, initialMark };
}

function labelText(item, anchor) {
  const x = item.label.x;
  // Loops carry the first line's baseline; edges the centre of the whole label.
  const y0 = item.source === item.dest ? item.label.y : item.label.y - item.size.h / 2 + LINE_H - 2;
  return s("text", { class: "edge-label", "text-anchor": anchor, "aria-hidden": "true" },
    item.transitions.map((t, i) => s("tspan", { x, y: y0 + i * LINE_H, "data-transition": t.name }, t.name)));
}

/** The SVG element for a graph ({machine, states, initial, current, edges}). */
export function renderGraph(graph, direction = "LR") {
  const g = layout(graph, direction);
  const id = `m${++markerSerial}`;
  const marker = (suffix) => s("marker", {
    id: `${id}-${suffix}`, class: `arrow arrow-${suffix}`, viewBox: "0 0 10 10", refX: "9", refY: "5",
    markerWidth: "9", markerHeight: "9", markerUnits: "userSpaceOnUse", orient: "auto-start-reverse",
  }, s("path", { d: "M 0 0 L 10 5 L 0 10 z" }));
  const svg = s("svg", {
    class: `graph graph-${direction.toLowerCase()}`,
    viewBox: `${g.originX} ${g.originY} ${g.width} ${g.height}`,
    width: g.width, height: g.height,
    role: "group",
    "aria-roledescription": "state graph",
    "aria-label": `State graph of ${graph.machine}: ${g.nodes.size} states, current state ${graph.current || "unknown"}`,
    "data-direction": direction,
  }, s("defs", {}, marker("plain"), marker("hot"), marker("live")));
  const edgesLayer = s("g", { class: "edges" });
  const labelsLayer = s("g", { class: "edge-labels" });
  for (const e of [...g.edges, ...g.loops]) {
    const group = s("g", {
      class: ["edge", e.source === e.dest && "loop"],
      "data-source": e.source, "data-target": e.dest,
      "data-transitions": e.transitions.map((t) => t.name).join(" "),
    },
    s("title", {}, `${e.source} → ${e.dest} via ${e.transitions.map((t) => t.name + (t.description ? ` (${t.description})` : "")).join(", ")}`),
    s("path", { class: "edge-line", d: e.path, "marker-end": `url(#${id}-plain)`, "data-marker": id }));
    edgesLayer.append(group);
    const text = labelText(e, e.anchor || "middle");
    text.dataset.source = e.source;
    text.dataset.target = e.dest;
    labelsLayer.append(text);
  }
  if (g.initialMark) {
    const { dot, to } = g.initialMark;
    edgesLayer.append(s("g", { class: "initial-mark", "aria-hidden": "true" },
      s("circle", { cx: dot.x, cy: dot.y, r: 5 }),
      s("path", { class: "edge-line", d: `M ${dot.x} ${dot.y} L ${to.x} ${to.y}`, "marker-end": `url(#${id}-plain)` })));
  }
  const statesLayer = s("g", { class: "states" });
  for (const node of g.nodes.values()) {
    const initial = node.name === graph.initial;
    statesLayer.append(s("g", {
      class: ["state", initial && "initial"],
      "data-state": node.name,
      role: "img",
      "aria-label": `state ${node.name}${initial ? " (initial)" : ""}`,
    },
    s("rect", { x: node.x - node.w / 2, y: node.y - node.h / 2, width: node.w, height: node.h, rx: 9 }),
    s("text", { x: node.x, y: node.y, "text-anchor": "middle", "dominant-baseline": "central" }, node.name)));
  }
  svg.append(edgesLayer, labelsLayer, statesLayer);
  setCurrent(svg, graph.current);
  return svg;
}

/** Which layout shows the graph larger in `width` pixels: "LR" unless "TB" reads better. */
export function bestDirection(graph, width) {
  if (!width) return "LR";
  const lr = layout(graph, "LR"), tb = layout(graph, "TB");
  const scale = (l) => Math.min(1, width / l.width);
  return scale(tb) > scale(lr) + 0.05 ? "TB" : "LR";
}

/** Mark the current state (class "current" and aria-current) and the edges leaving it. */
export function setCurrent(svg, state) {
  for (const node of svg.querySelectorAll("g.state")) {
    const current = node.dataset.state === state;
    node.classList.toggle("current", current);
    if (current) {
      node.setAttribute("aria-current", "true");
      node.setAttribute("aria-label", `state ${state} (current${node.classList.contains("initial") ? ", initial" : ""})`);
    } else {
      node.removeAttribute("aria-current");
      node.setAttribute("aria-label", `state ${node.dataset.state}${node.classList.contains("initial") ? " (initial)" : ""}`);
    }
  }
  for (const edge of svg.querySelectorAll("g.edge")) {
    const live = edge.dataset.source === state;
    edge.classList.toggle("available", live);
    const line = edge.querySelector(".edge-line");
    if (line && !edge.classList.contains("flash")) line.setAttribute("marker-end", `url(#${line.dataset.marker}-${live ? "live" : "plain"})`);
  }
  for (const label of svg.querySelectorAll("text.edge-label")) label.classList.toggle("available", label.dataset.source === state);
  const text = svg.getAttribute("aria-label") || "";
  svg.setAttribute("aria-label", text.replace(/current state .*$/, `current state ${state || "unknown"}`));
}

/** Briefly animate a transition: its edge, its label and the state it entered. */
export function flashTransition(svg, from, transition, to, duration = 1600) {
  const targets = [];
  for (const edge of svg.querySelectorAll("g.edge")) {
    if (edge.dataset.source === from && edge.dataset.target === to) targets.push(edge);
  }
  for (const label of svg.querySelectorAll("text.edge-label")) {
    if (label.dataset.source === from && label.dataset.target === to) {
      for (const span of label.querySelectorAll("tspan")) if (span.dataset.transition === transition) targets.push(span);
    }
  }
  const node = [...svg.querySelectorAll("g.state")].find((n) => n.dataset.state === to);
  if (node) targets.push(node);
  for (const el of targets) {
    el.classList.remove("flash");
    // Restart the CSS animation even when the same transition fires twice in a row.
    void el.getBoundingClientRect();
    el.classList.add("flash");
    const line = el.querySelector?.(".edge-line");
    if (line) line.setAttribute("marker-end", `url(#${line.dataset.marker}-hot)`);
  }
  setTimeout(() => {
    for (const el of targets) el.classList.remove("flash");
    setCurrent(svg, svg.querySelector("g.state.current")?.dataset.state);
  }, duration);
}
