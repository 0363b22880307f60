// The DAG drawing: cytoscape elements, style and layout for a run's task model.
import { STATES, STATE_COLORS, worstState, zeroCounts } from "./util.js";

// dagre gives the nicest layered drawing but is slow: measured in this engine (2-core
// machine) about 0.3 s for 500 nodes with the longest-path ranker, 1.5 s with
// network-simplex, 23 s for a 1,000-node graph with crossing edges, and a stack overflow
// at 5,000. So dagre (through cytoscape-dagre) lays out graphs of up to DAGRE_MAX_NODES
// drawn nodes (network-simplex up to DAGRE_SIMPLEX_MAX), and cytoscape's built-in
// `breadthfirst` layout (directed, from the root tasks; linear time) does bigger ones.
export const DAGRE_MAX_NODES = 400;
const DAGRE_SIMPLEX_MAX = 150;
// Above this many drawn elements the cheap rendering options are used.
const BIG_GRAPH = 800;
// Groups of more instances than this start collapsed.
export const COLLAPSE_OVER = 20;

const NODE_W = 150;
const NODE_H = 38;

export function buildStyle(big) {
  const s = [
    {
      selector: "node",
      style: {
        shape: "round-rectangle",
        width: NODE_W,
        height: NODE_H,
        label: "data(label)",
        "font-size": 11,
        "font-family": "system-ui, sans-serif",
        "text-valign": "center",
        "text-halign": "center",
        "text-wrap": "wrap",
        "text-max-width": NODE_W - 10,
        "text-overflow-wrap": "anywhere",
        "min-zoomed-font-size": big ? 9 : 6,
        "border-width": 1,
        "border-color": "#333333",
        "background-color": STATE_COLORS.QUEUED.bg,
        color: STATE_COLORS.QUEUED.fg,
      },
    },
  ];
  for (const st of STATES) {
    s.push({
      selector: `node[state = "${st}"]`,
      style: { "background-color": STATE_COLORS[st].bg, color: STATE_COLORS[st].fg },
    });
  }
  s.push(
    {
      selector: "node.group",
      style: {
        shape: "round-rectangle",
        "background-color": "#eef1f5",
        "background-opacity": 1,
        color: "#111111",
        "border-width": 2,
        "border-style": "dashed",
        "text-valign": "top",
        "text-halign": "center",
        "font-weight": "bold",
        padding: 12,
      },
    },
  );
  for (const st of STATES) {
    s.push({ selector: `node.group[state = "${st}"]`, style: { "border-color": STATE_COLORS[st].bg } });
  }
  s.push(
    {
      selector: "node.group.collapsed",
      style: {
        width: NODE_W + 40,
        height: NODE_H + 16,
        "text-valign": "center",
        "border-width": 3,
        "border-style": "double",
        "border-color": "#222222",
        "font-weight": "bold",
      },
    },
  );
  for (const st of STATES) {
    s.push({
      selector: `node.group.collapsed[state = "${st}"]`,
      style: { "background-color": STATE_COLORS[st].bg, color: STATE_COLORS[st].fg },
    });
  }
  s.push(
    {
      selector: "edge",
      style: big
        ? { width: 1, "line-color": "#8a8f98", "curve-style": "haystack", "haystack-radius": 0, opacity: 0.6 }
        : {
          width: 1.5,
          "line-color": "#7a808a",
          "target-arrow-color": "#7a808a",
          "target-arrow-shape": "triangle",
          "curve-style": "bezier",
          "arrow-scale": 0.9,
        },
    },
    {
      selector: "node:selected",
      style: { "border-width": 4, "border-color": "#ffcc00", "border-style": "solid" },
    },
  );
  return s;
}

function shortCounts(c) {
  const parts = [];
  const abbrev = { QUEUED: "queued", RUNNING: "run", RETRY: "retry", ERRORED: "err", KILLED: "killed", COMPLETED: "done" };
  for (const st of ["RUNNING", "RETRY", "ERRORED", "KILLED", "QUEUED", "COMPLETED"]) {
    if (c[st]) parts.push(`${c[st]} ${abbrev[st]}`);
  }
  return parts.join(" · ");
}

export function groupCounts(g) {
  const c = zeroCounts();
  for (const t of g.members) c[t.state] = (c[t.state] || 0) + 1;
  return c;
}

export function groupLabel(g, counts) {
  const head = `${g.dn} ×${g.members.length}`;
  return g.collapsed ? `${head}\n${shortCounts(counts)}` : `${head}  (${shortCounts(counts)})`;
}

export function taskLabel(t) {
  const n = t.group ? t.name.slice(t.group.dn.length) || t.name : t.name;
  return `${n}\n${t.state}`;
}

/** Graph node id of a task/group. */
export const taskId = (name) => `t:${name}`;
export const groupId = (dn) => `g:${dn}`;

/**
 * The cytoscape elements of a model: {tasks: Map name -> task, groups: Map dn -> group}.
 * Edges join the drawn units (a collapsed group, an expanded group's box, or a task), not
 * instance to instance: a definition's parents/children are defined names (or generator
 * instance names).
 */
export function buildElements(model) {
  const nodes = [];
  const edges = [];
  for (const g of model.groups.values()) {
    const counts = groupCounts(g);
    g.counts = counts;
    nodes.push({
      group: "nodes",
      data: { id: g.id, kind: "group", dn: g.dn, state: worstState(counts), label: groupLabel(g, counts) },
      classes: g.collapsed ? "group collapsed" : "group",
    });
  }
  for (const t of model.tasks.values()) {
    if (t.group && t.group.collapsed) continue;
    const data = { id: taskId(t.name), kind: "task", name: t.name, state: t.state, label: taskLabel(t) };
    if (t.group) data.parent = t.group.id;
    nodes.push({ group: "nodes", data, classes: "task" });
  }
  const endpoint = (name) => {
    const g = model.groups.get(name);
    if (g) return g.id;
    const t = model.tasks.get(name);
    if (!t) return null;
    if (t.group) return t.group.collapsed ? t.group.id : taskId(name);
    return taskId(name);
  };
  const unitOf = (t) => (t.group ? t.group.id : taskId(t.name));
  const seen = new Set();
  let n = 0;
  const addEdge = (src, tgt) => {
    if (!src || !tgt || src === tgt) return;
    const key = `${src}\u0000${tgt}`;
    if (seen.has(key)) return;
    seen.add(key);
    edges.push({ group: "edges", data: { id: `e${n++}`, source: src, target: tgt } });
  };
  for (const t of model.tasks.values()) {
    const me = unitOf(t);
    for (const p of t.def.parents || []) addEdge(endpoint(p), me);
    for (const c of t.def.children || []) addEdge(me, endpoint(c));
  }
  return { nodes, edges };
}

export function isBig(count) {
  return count > BIG_GRAPH;
}

export function layoutOptions(cy, rankDir) {
  const drawn = cy.nodes().filter((n) => !n.isParent()).length;
  if (drawn <= DAGRE_MAX_NODES) {
    return {
      name: "dagre",
      rankDir,
      ranker: drawn > DAGRE_SIMPLEX_MAX ? "longest-path" : "network-simplex",
      nodeSep: 24,
      rankSep: 56,
      edgeSep: 10,
      fit: true,
      padding: 24,
      animate: false,
    };
  }
  const roots = cy.nodes().filter((n) => !n.isChild() && n.indegree(false) === 0);
  return {
    name: "breadthfirst",
    directed: true,
    roots: roots.length ? roots : undefined,
    spacingFactor: 1.3,
    avoidOverlap: true,
    nodeDimensionsIncludeLabels: false,
    fit: true,
    padding: 24,
    animate: false,
    // breadthfirst grows top-down; left-to-right is its transpose.
    transform: rankDir === "LR" ? (node, pos) => ({ x: pos.y * 1.6, y: pos.x / 1.6 }) : (node, pos) => pos,
  };
}
