// Shared helpers: states and their colours, formatting, DOM building, the banner and the
// aria-live status region.

export const STATES = ["QUEUED", "RUNNING", "RETRY", "ERRORED", "KILLED", "COMPLETED"];
export const FINISHED = new Set(["COMPLETED", "ERRORED", "KILLED"]);

// The palette, also shown in the legend of the run page (and used by app.css through the
// .state-<STATE> classes). `fg` is the text colour drawn on the state colour.
export const STATE_COLORS = {
  QUEUED: { bg: "#9e9e9e", fg: "#111111", label: "queued" },
  RUNNING: { bg: "#1e6fd9", fg: "#ffffff", label: "running" },
  RETRY: { bg: "#f08c00", fg: "#111111", label: "waiting to retry" },
  ERRORED: { bg: "#d32f2f", fg: "#ffffff", label: "errored" },
  KILLED: { bg: "#8e44ad", fg: "#ffffff", label: "killed" },
  COMPLETED: { bg: "#2e7d32", fg: "#ffffff", label: "completed" },
};

// Order used to pick the colour of a collapsed group: the worst or most active state of
// its members wins.
export const STATE_PRIORITY = ["ERRORED", "RETRY", "RUNNING", "KILLED", "QUEUED", "COMPLETED"];

export function worstState(counts) {
  for (const s of STATE_PRIORITY) if (counts[s]) return s;
  return "QUEUED";
}

export function zeroCounts() {
  const c = {};
  for (const s of STATES) c[s] = 0;
  return c;
}

/** el("tr", {class: "x", dataset: {a: 1}, onclick: fn}, child, "text", ...) */
export function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "dataset") Object.assign(e.dataset, v);
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
      else if (v === true) e.setAttribute(k, "");
      else e.setAttribute(k, String(v));
    }
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

export function stateBadge(state, extraClass) {
  return el("span", { class: `state-badge state-${state || "UNKNOWN"}${extraClass ? " " + extraClass : ""}`, text: state || "?" });
}

export function parseTime(s) {
  if (!s) return null;
  const t = Date.parse(s);
  return Number.isNaN(t) ? null : t;
}

export function fmtTime(s) {
  const t = parseTime(s);
  if (t === null) return "—";
  const d = new Date(t);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtDuration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "—";
  if (ms < 0) ms = 0;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  let s = Math.floor(ms / 1000);
  if (s < 60) return `${(ms / 1000).toFixed(1)} s`;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  return h ? `${h} h ${String(m).padStart(2, "0")} min` : `${m} min ${String(s).padStart(2, "0")} s`;
}

export function fmtBytes(n) {
  if (n < 1024) return `${n} bytes`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

let statusTimer = null;
/** Announce a short message through the aria-live region. */
export function announce(msg) {
  const s = document.getElementById("status");
  if (!s) return;
  s.textContent = msg;
  clearTimeout(statusTimer);
  statusTimer = setTimeout(() => { s.textContent = ""; }, 8000);
}

let bannerKey = null;
/** Show an error in the dismissible banner. `key` lets a later clearError(key) remove it. */
export function showError(msg, key = null) {
  const b = document.getElementById("error-banner");
  const t = document.getElementById("error-banner-text");
  if (!b || !t) return;
  t.textContent = String(msg);
  bannerKey = key;
  b.hidden = false;
}

export function clearError(key = null) {
  const b = document.getElementById("error-banner");
  if (!b) return;
  if (key === null || bannerKey === key) {
    b.hidden = true;
    bannerKey = null;
  }
}

export function errorMessage(e) {
  if (!e) return "unknown error";
  if (typeof e === "string") return e;
  return e.message || String(e);
}

/** Run fn once per animation frame at most, however often schedule() is called. */
export function frameBatcher(fn) {
  let pending = false;
  let timer = null;
  const run = () => {
    pending = false;
    clearTimeout(timer);
    try { fn(); } catch (e) { reportBug(e); }
  };
  return function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(run);
    // rAF does not fire in a hidden tab; keep the model fresh anyway (slowly).
    timer = setTimeout(() => { if (pending) run(); }, 1000);
  };
}

export function reportBug(e) {
  console.warn("daggy UI error:", e); // eslint-disable-line no-console
  showError(`UI error: ${errorMessage(e)}`);
}

export function encodeName(name) {
  return encodeURIComponent(name);
}
