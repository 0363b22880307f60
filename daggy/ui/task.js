// The task panel (#/run/<id>/task/<name>): definition, attempts with their output, actions.
import { api } from "./api.js";
import {
  el, stateBadge, fmtTime, fmtDuration, fmtBytes, parseTime, showError, errorMessage,
  announce, encodeName,
} from "./util.js";

const CHUNK = 64 * 1024; // bytes of output shown at first, and added by each "Load more"

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8");

/** The last `n` bytes of a UTF-8 string, cut at a character boundary. */
function tailBytes(bytes, n) {
  if (bytes.length <= n) return { text: dec.decode(bytes), hidden: 0 };
  let start = bytes.length - n;
  while (start < bytes.length && (bytes[start] & 0xc0) === 0x80) start++;
  return { text: dec.decode(bytes.subarray(start)), hidden: start };
}

export class TaskPanel {
  constructor(onClose) {
    this.panel = document.getElementById("task-panel");
    this.nameEl = document.getElementById("task-panel-name");
    this.stateEl = document.getElementById("task-panel-state");
    this.body = document.getElementById("task-panel-body");
    this.rerun = document.getElementById("task-rerun");
    this.complete = document.getElementById("task-complete");
    this.kill = document.getElementById("task-kill");
    this.closeBtn = document.getElementById("task-panel-close");
    this.onClose = onClose;
    this.runId = null;
    this.name = null;
    this.task = null;
    this.shown = new Map(); // "attempt:stream" -> bytes shown
    this.gen = 0;
    this.refreshTimer = null;
    this.closeBtn.addEventListener("click", () => this.onClose());
    this.rerun.addEventListener("click", () => this.setState("QUEUED", "re-run"));
    this.complete.addEventListener("click", () => this.setState("COMPLETED", "mark completed"));
    this.kill.addEventListener("click", () => this.setState("KILLED", "kill"));
  }

  get isOpen() { return !this.panel.hidden; }

  open(runId, name, page) {
    const same = this.isOpen && this.runId === runId && this.name === name;
    this.page = page;
    if (!same) {
      this.runId = runId;
      this.name = name;
      this.task = null;
      this.shown.clear();
      this.nameEl.textContent = name;
      this.stateEl.textContent = "…";
      this.stateEl.className = "state-badge";
      this.body.replaceChildren(el("p", { class: "muted", text: "Loading…" }));
      this.setButtons(null);
      if (!this.isOpen) this.returnFocus = document.activeElement;
      this.panel.hidden = false;
      document.body.classList.add("panel-open");
      this.nameEl.focus();
    }
    return this.load();
  }

  close() {
    if (!this.isOpen) return;
    this.panel.hidden = true;
    document.body.classList.remove("panel-open");
    this.gen += 1;
    clearTimeout(this.refreshTimer);
    const name = this.name;
    this.runId = null;
    this.name = null;
    if (this.page && name) this.page.focusRow(name);
    else if (this.returnFocus && this.returnFocus.isConnected) this.returnFocus.focus();
  }

  /** Called by the run page when tasks changed (null: all may have). */
  tasksChanged(runId, names) {
    if (!this.isOpen || runId !== this.runId) return;
    if (names && !names.has(this.name)) return;
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => this.load(), 150);
  }

  async load() {
    const gen = ++this.gen;
    const runId = this.runId;
    const name = this.name;
    try {
      const t = await api("GET", `/v1/dagrun/${runId}/task/${encodeName(name)}`);
      if (gen !== this.gen) return;
      this.task = t;
      this.render(t);
    } catch (e) {
      if (gen !== this.gen) return;
      showError(`loading task ${name} of run ${runId} failed: ${errorMessage(e)}`);
      this.body.replaceChildren(el("p", { class: "empty", text: `Cannot show task ${name}: ${errorMessage(e)}` }));
    }
  }

  setButtons(state) {
    this.rerun.disabled = !state || state === "QUEUED" || state === "RUNNING";
    this.complete.disabled = !state || state === "COMPLETED";
    this.kill.disabled = !state || !(state === "RUNNING" || state === "RETRY" || state === "QUEUED");
  }

  async setState(state, what) {
    const runId = this.runId;
    const name = this.name;
    if (runId === null || name === null) return;
    this.setButtons(null);
    try {
      await api("PATCH", `/v1/dagrun/${runId}/task/${encodeName(name)}/state/${state}`);
      announce(`${name}: ${what} requested`);
    } catch (e) {
      showError(`${what} ${name}: ${errorMessage(e)}`);
    }
    if (this.runId === runId && this.name === name) await this.load();
  }

  render(t) {
    this.stateEl.textContent = t.state;
    this.stateEl.className = `state-badge state-${t.state}`;
    this.stateEl.dataset.state = t.state;
    this.setButtons(t.state);
    const d = t.definition || {};
    const link = (n) => {
      const known = this.page && (this.page.hasTask(n));
      return known
        ? el("a", { href: `#/run/${t.runID}/task/${encodeName(n)}`, text: n })
        : el("span", { text: n });
    };
    const list = (names) => (names && names.length
      ? el("ul", { class: "name-list" }, ...names.map((n) => el("li", null, link(n))))
      : el("span", { class: "muted", text: "none" }));
    const ev = d.expansionValues || {};
    const evKeys = Object.keys(ev);
    const def = el("section", { class: "task-def", "aria-label": "Definition" },
      el("h3", { text: "Definition" }),
      el("dl", { class: "kv" },
        el("dt", { text: "Defined name" }), el("dd", { text: d.definedName ?? "—" }),
        el("dt", { text: "Retries" }), el("dd", { text: `${d.maxRetries ?? 0} (interval ${d.retryIntervalSeconds ?? 0} s)` }),
        el("dt", { text: "Generator" }), el("dd", { text: d.isGenerator ? "yes" : "no" }),
        el("dt", { text: "Parents" }), el("dd", null, list(d.parents)),
        el("dt", { text: "Children" }), el("dd", null, list(d.children)),
        el("dt", { text: "Expansion values" }), el("dd", null, evKeys.length
          ? el("table", { class: "mini" }, el("tbody", null, ...evKeys.map((k) => el("tr", null,
            el("th", { scope: "row", text: k }), el("td", { text: String(ev[k]) })))))
          : el("span", { class: "muted", text: "none" })),
        t.executorState ? el("dt", { text: "Executor state" }) : null,
        t.executorState ? el("dd", null, el("code", { text: JSON.stringify(t.executorState) })) : null),
      el("h4", { text: "Job" }),
      el("pre", { class: "job", text: JSON.stringify(d.job ?? null, null, 2) }));

    const atts = t.attempts || [];
    const attempts = el("section", { class: "task-attempts", "aria-label": "Attempts" },
      el("h3", { text: `Attempts (${atts.length})` }),
      atts.length ? null : el("p", { class: "muted", text: "No attempt has finished yet." }),
      ...atts.map((a, i) => this.renderAttempt(a, i)).reverse());
    const history = el("details", { class: "task-history" },
      el("summary", { text: "State history" }),
      el("ol", null, ...(t.stateChanges || []).map((c) => el("li", null, `${fmtTime(c.time)} `, stateBadge(c.state)))));
    this.body.replaceChildren(def, attempts, history);
  }

  renderAttempt(a, i) {
    const s = parseTime(a.startTime);
    const e = parseTime(a.stopTime);
    const flags = [];
    if (a.succeeded) flags.push("succeeded"); else flags.push("failed");
    if (a.killed) flags.push("killed");
    if (a.timedOut) flags.push("timed out");
    const art = el("article", { class: `attempt ${a.succeeded ? "ok" : "failed"}`, dataset: { attempt: String(i + 1) } },
      el("h4", null, `Attempt ${i + 1} `, el("span", { class: `attempt-flag ${a.succeeded ? "ok" : "failed"}`, text: flags.join(", ") })),
      el("dl", { class: "kv compact" },
        el("dt", { text: "Start" }), el("dd", { text: fmtTime(a.startTime) }),
        el("dt", { text: "Stop" }), el("dd", { text: fmtTime(a.stopTime) }),
        el("dt", { text: "Duration" }), el("dd", { text: fmtDuration(s !== null && e !== null ? e - s : null) }),
        el("dt", { text: "Exit code" }), el("dd", { text: a.rc === null || a.rc === undefined ? "none (signal or not started)" : String(a.rc) }),
        el("dt", { text: "Succeeded" }), el("dd", { text: a.succeeded ? "yes" : "no" }),
        el("dt", { text: "Killed" }), el("dd", { text: a.killed ? "yes" : "no" }),
        el("dt", { text: "Timed out" }), el("dd", { text: a.timedOut ? "yes" : "no" }),
        el("dt", { text: "Executor" }), el("dd", null, el("code", { class: "executor-log", text: a.executorLog || "—" }))),
      this.renderOutput(i, "stdout", "Standard output", a.outputLog || "", a.outputTruncated),
      this.renderOutput(i, "stderr", "Standard error", a.errorLog || "", a.errorTruncated));
    return art;
  }

  renderOutput(i, kind, title, text, truncated) {
    const key = `${i}:${kind}`;
    const bytes = enc.encode(text);
    const box = el("div", { class: `output output-${kind}` });
    const draw = () => {
      const n = this.shown.get(key) || CHUNK;
      const { text: shownText, hidden } = tailBytes(bytes, n);
      const pre = el("pre", { class: kind, tabindex: "0", "aria-label": `${title} of attempt ${i + 1}` }, shownText || "");
      if (!bytes.length) pre.classList.add("empty-output");
      const head = el("div", { class: "output-head" },
        el("h5", { text: `${title} (${fmtBytes(bytes.length)})` }),
        truncated ? el("span", { class: "truncated-note", text: "cut at the executor's output limit: the start is lost" }) : null);
      const parts = [head];
      if (hidden > 0) {
        const more = el("button", { type: "button", class: "load-more", text: `Load more (${fmtBytes(Math.min(CHUNK, hidden))} of ${fmtBytes(hidden)} hidden)` });
        more.addEventListener("click", () => {
          this.shown.set(key, (this.shown.get(key) || CHUNK) + CHUNK);
          draw();
          const b = box.querySelector("button.load-more") || box.querySelector("pre");
          if (b) b.focus();
        });
        parts.push(el("p", { class: "hidden-note" }, `${hidden.toLocaleString()} earlier bytes hidden. `, more));
      }
      parts.push(pre);
      box.replaceChildren(...parts);
    };
    draw();
    return box;
  }
}
