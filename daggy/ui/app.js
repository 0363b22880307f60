// daggyd web UI: the router and the glue. Pages: runs.js, run.js; the task panel: task.js.
import { mountRuns } from "./runs.js";
import { mountRun } from "./run.js";
import { TaskPanel } from "./task.js";
import { clearError, showError, errorMessage, announce } from "./util.js";

const main = document.getElementById("main");
const conn = document.getElementById("conn-status");
let page = null; // {kind, runId, handle}
const CONN_KEY = "conn";

const ui = {
  cy: null,
  ready: false,
  lastRenderMs: null,
  nodeState(name) { return page && page.kind === "run" ? page.handle.nodeState(name) : null; },
  nodeColor(name) { return page && page.kind === "run" ? page.handle.nodeColor(name) : null; },
};
window.daggyUI = ui;

let navStart = performance.now();

const ctx = {
  ready: () => ui.ready,
  markReady(ms) {
    if (ms !== undefined) ui.lastRenderMs = Math.round(ms);
    ui.ready = true;
    main.setAttribute("aria-busy", "false");
  },
  setCy(cy) { ui.cy = cy; },
  connStatus(kind, msg) {
    conn.dataset.conn = kind;
    conn.textContent = kind === "live" ? "● live" : msg;
    if (kind === "down") showError(`Connection to daggyd lost: ${msg}`, CONN_KEY);
    else if (kind === "live") clearError(CONN_KEY);
  },
  tasksChanged(runId, names) { panel.tasksChanged(runId, names); },
};

const panel = new TaskPanel(() => {
  if (page && page.kind === "run") location.hash = `#/run/${page.runId}`;
  else panel.close();
});

function parseRoute() {
  const h = location.hash.replace(/^#/, "") || "/";
  let m = h.match(/^\/run\/(\d+)\/task\/(.+)$/);
  if (m) {
    let name;
    try { name = decodeURIComponent(m[2]); } catch { name = m[2]; }
    return { kind: "run", runId: Number(m[1]), task: name };
  }
  m = h.match(/^\/run\/(\d+)\/?$/);
  if (m) return { kind: "run", runId: Number(m[1]), task: null };
  if (h === "/" || h === "") return { kind: "runs" };
  return { kind: "unknown", path: h };
}

function route() {
  const r = parseRoute();
  const samePage = page && page.kind === r.kind && (r.kind !== "run" || page.runId === r.runId);
  if (!samePage) {
    navStart = performance.now();
    if (page) page.handle.destroy();
    page = null;
    panel.close();
    ui.ready = false;
    ui.lastRenderMs = null;
    ui.cy = null;
    main.setAttribute("aria-busy", "true");
    if (r.kind === "runs") {
      page = { kind: "runs", handle: mountRuns(main, ctx) };
      document.title = "daggy · runs";
    } else if (r.kind === "run") {
      page = { kind: "run", runId: r.runId, handle: mountRun(main, ctx, r.runId, navStart) };
      document.title = `daggy · run ${r.runId}`;
    } else {
      main.replaceChildren();
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = `No such page: ${r.path}. `;
      const a = document.createElement("a");
      a.href = "#/";
      a.textContent = "Back to the runs";
      p.append(a);
      main.append(p);
      page = { kind: "unknown", handle: { destroy() {} } };
      ctx.markReady();
    }
  }
  for (const a of document.querySelectorAll("nav a")) {
    a.toggleAttribute("aria-current", r.kind === "runs" && a.getAttribute("href") === "#/");
  }
  if (r.kind === "run" && r.task !== null) {
    panel.open(r.runId, r.task, page.handle);
    page.handle.selectNode(r.task);
  } else if (panel.isOpen) {
    panel.close();
  }
}

document.getElementById("error-banner-close").addEventListener("click", () => clearError());

document.addEventListener("keydown", (e) => {
  if (e.key !== "Escape") return;
  if (document.getElementById("token-dialog").open) return; // the dialog handles its own Esc
  if (panel.isOpen) {
    e.preventDefault();
    if (page && page.kind === "run") location.hash = `#/run/${page.runId}`;
    else panel.close();
  } else if (!document.getElementById("error-banner").hidden) {
    clearError();
  }
});

window.addEventListener("unhandledrejection", (e) => {
  e.preventDefault();
  showError(errorMessage(e.reason));
});
window.addEventListener("error", (e) => {
  if (e.error) showError(`UI error: ${errorMessage(e.error)}`);
});

window.addEventListener("hashchange", route);
if (typeof window.cytoscape !== "function") {
  showError("The graph library did not load (/ui/vendor/cytoscape.min.js).");
}
route();
announce("daggy UI loaded");
