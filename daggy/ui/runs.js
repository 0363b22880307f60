// The runs page (#/): every run, filterable, updated live from the event stream.
import { api, apiOrBanner } from "./api.js";
import { EventStream } from "./sse.js";
import {
  STATES, FINISHED, el, stateBadge, fmtTime, fmtDuration, parseTime, zeroCounts,
  showError, errorMessage, frameBatcher, announce,
} from "./util.js";

export function mountRuns(root, ctx) {
  const runs = new Map(); // runID -> summary
  const rows = new Map(); // runID -> <tr>
  let loaded = false;
  let queue = [];
  let structural = true; // rows added/removed or filter changed: rebuild tbody order
  const dirty = new Set();
  const needState = new Set(); // runs whose counts must be re-read
  let stateTimer = null;
  let destroyed = false;

  const tagIn = el("input", { id: "filter-tag", type: "search", placeholder: "exact or part of a tag", autocomplete: "off" });
  const stateSel = el("select", { id: "filter-state" },
    el("option", { value: "", text: "all states" }),
    ...STATES.map((s) => el("option", { value: s, text: s })));
  const textIn = el("input", { id: "filter-text", type: "search", placeholder: "regular expression over ID and tag", autocomplete: "off", "aria-describedby": "filter-text-error" });
  const textErr = el("span", { id: "filter-text-error", class: "inline-error", "aria-live": "polite" });
  const countOut = el("p", { class: "muted", id: "runs-count", "aria-live": "polite" });
  const tbody = el("tbody");
  const table = el("table", { id: "runs-table", class: "data-table runs-table" },
    el("caption", { class: "visually-hidden", text: "DAG runs, newest first" }),
    el("thead", null, el("tr", null,
      el("th", { scope: "col", text: "Run" }),
      el("th", { scope: "col", text: "Tag" }),
      el("th", { scope: "col", text: "State" }),
      el("th", { scope: "col", text: "Started" }),
      el("th", { scope: "col", text: "Duration" }),
      ...STATES.map((s) => el("th", { scope: "col", class: "num", title: `tasks ${s}`, text: s.slice(0, 1) + s.slice(1).toLowerCase() })),
      el("th", { scope: "col", class: "num", text: "Tasks" }))),
    tbody);
  const empty = el("p", { class: "muted empty", text: "No runs yet. Submit one with POST /v1/dagrun." });

  root.replaceChildren(
    el("section", { class: "runs-page", "aria-labelledby": "runs-title" },
      el("div", { class: "page-title" }, el("h2", { id: "runs-title", text: "Runs" }), countOut),
      el("form", { class: "filters", role: "search", "aria-label": "Filter runs", onsubmit: (e) => e.preventDefault() },
        el("label", null, "Tag ", tagIn),
        el("label", null, "State ", stateSel),
        el("label", null, "Search ", textIn),
        textErr),
      el("div", { class: "table-wrap" }, table),
      empty));

  let matcher = () => true;
  function updateFilter() {
    const tag = tagIn.value.trim().toLowerCase();
    const st = stateSel.value;
    const txt = textIn.value;
    let re = null;
    textErr.textContent = "";
    textIn.removeAttribute("aria-invalid");
    if (txt) {
      try {
        re = new RegExp(txt, "i");
      } catch (e) {
        textErr.textContent = `invalid regular expression: ${errorMessage(e).replace(/^Invalid regular expression: /, "")}`;
        textIn.setAttribute("aria-invalid", "true");
        re = null;
      }
    }
    matcher = (r) => {
      if (st && r.state !== st) return false;
      if (tag && !(r.tag || "").toLowerCase().includes(tag)) return false;
      if (re && !re.test(String(r.runID)) && !re.test(r.tag || "")) return false;
      return true;
    };
    structural = true;
    render();
  }
  tagIn.addEventListener("input", updateFilter);
  stateSel.addEventListener("change", updateFilter);
  textIn.addEventListener("input", updateFilter);

  function duration(r) {
    const s = parseTime(r.startTime);
    if (s === null) return null;
    const end = FINISHED.has(r.state) ? parseTime(r.lastUpdate) : Date.now();
    return end === null ? null : end - s;
  }

  function openRun(id) { location.hash = `#/run/${id}`; }

  function makeRow(r) {
    const tr = el("tr", { tabindex: "0", class: "clickable" });
    tr.dataset.runId = String(r.runID);
    tr.addEventListener("click", (e) => {
      if (e.target.closest("a")) return;
      openRun(r.runID);
    });
    tr.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openRun(r.runID); }
    });
    return tr;
  }

  function fillRow(tr, r) {
    tr.dataset.state = r.state;
    const total = STATES.reduce((a, s) => a + (r.taskCounts[s] || 0), 0);
    tr.setAttribute("aria-label", `run ${r.runID}${r.tag ? ", tag " + r.tag : ""}, ${r.state}`);
    tr.replaceChildren(
      el("td", null, el("a", { href: `#/run/${r.runID}`, tabindex: "-1", text: String(r.runID) })),
      el("td", { class: "tag", text: r.tag ?? "—" }),
      el("td", null, stateBadge(r.state)),
      el("td", { class: "time", text: fmtTime(r.startTime) }),
      el("td", { class: "duration", text: fmtDuration(duration(r)) }),
      ...STATES.map((s) => el("td", { class: `num${r.taskCounts[s] ? " count-" + s : " zero"}`, text: String(r.taskCounts[s] || 0) })),
      el("td", { class: "num", text: String(total) }));
  }

  const render = frameBatcher(() => {
    if (destroyed) return;
    for (const id of dirty) {
      const r = runs.get(id);
      if (!r) continue;
      let tr = rows.get(id);
      if (!tr) { tr = makeRow(r); rows.set(id, tr); structural = true; }
      const was = tr.dataset.state;
      fillRow(tr, r);
      if (was !== r.state) structural = true;
    }
    dirty.clear();
    if (structural) {
      structural = false;
      const ids = [...runs.keys()].sort((a, b) => b - a);
      const shown = [];
      for (const id of ids) {
        const r = runs.get(id);
        if (!matcher(r)) continue;
        let tr = rows.get(id);
        if (!tr) { tr = makeRow(r); fillRow(tr, r); rows.set(id, tr); }
        shown.push(tr);
      }
      const focused = document.activeElement;
      tbody.replaceChildren(...shown);
      if (focused && focused.isConnected === false && shown.includes(focused)) focused.focus();
      countOut.textContent = `${shown.length} of ${runs.size} run${runs.size === 1 ? "" : "s"} shown`;
      empty.hidden = runs.size > 0;
    }
    if (!ctx.ready()) ctx.markReady();
  });

  // Durations of running runs tick.
  const tick = setInterval(() => {
    for (const [id, r] of runs) {
      if (!FINISHED.has(r.state)) {
        const tr = rows.get(id);
        const td = tr && tr.querySelector("td.duration");
        if (td) td.textContent = fmtDuration(duration(r));
      }
    }
  }, 1000);

  function put(r) {
    r.taskCounts = Object.assign(zeroCounts(), r.taskCounts || {});
    runs.set(r.runID, r);
    dirty.add(r.runID);
  }

  async function loadAll() {
    try {
      const list = await api("GET", "/v1/dagruns?all=1");
      if (destroyed) return;
      for (const r of list) put(r);
      const keep = new Set(list.map((r) => r.runID));
      for (const id of [...runs.keys()]) if (!keep.has(id)) { runs.delete(id); rows.delete(id); }
      loaded = true;
      structural = true;
      const q = queue;
      queue = [];
      for (const ev of q) apply(ev);
      render();
    } catch (e) {
      showError(`listing runs failed: ${errorMessage(e)}`);
      if (!ctx.ready()) ctx.markReady();
    }
  }

  // Counts are re-read from /state (cheap, O(1) in the daemon), at most 4 times a second.
  function wantState(id) {
    needState.add(id);
    if (stateTimer) return;
    stateTimer = setTimeout(refreshStates, 250);
  }

  async function refreshStates() {
    const ids = [...needState];
    needState.clear();
    if (destroyed) return;
    if (ids.length > 25) {
      await loadAll();
    } else {
      await Promise.all(ids.map(async (id) => {
        try {
          const st = await api("GET", `/v1/dagrun/${id}/state`);
          const r = runs.get(id);
          if (!r || destroyed) return;
          r.state = st.state;
          r.taskCounts = Object.assign(zeroCounts(), st.taskCounts);
          dirty.add(id);
        } catch (e) {
          if (e.status !== 404) showError(`reading run ${id} failed: ${errorMessage(e)}`);
        }
      }));
      render();
    }
    stateTimer = null;
    if (needState.size && !destroyed) stateTimer = setTimeout(refreshStates, 250);
  }

  function apply(ev) {
    const id = ev.runID;
    if (typeof id !== "number") return;
    let r = runs.get(id);
    if (ev.event === "runCreated") {
      if (!r) {
        put({ runID: id, tag: ev.tag ?? null, state: ev.state || "QUEUED", startTime: ev.time, lastUpdate: ev.time, taskCounts: zeroCounts() });
        announce(`run ${id} created`);
      }
      wantState(id);
      return;
    }
    if (!r) { wantState(id); loadSoon(); return; }
    if (ev.time) r.lastUpdate = ev.time;
    if (ev.event === "runState") {
      r.state = ev.state;
      announce(`run ${id} is ${ev.state}`);
      wantState(id);
    } else if (ev.event === "taskState" || ev.event === "taskAdded") {
      wantState(id);
    }
    dirty.add(id);
  }

  let loadTimer = null;
  function loadSoon() {
    if (loadTimer) return;
    loadTimer = setTimeout(() => { loadTimer = null; loadAll(); }, 300);
  }

  const stream = new EventStream("", {
    onOpen: ({ reconnect, lastEventId }) => {
      if (!loaded || (reconnect && lastEventId === null)) loadAll();
    },
    onEvent: (ev) => {
      if (!loaded) { queue.push(ev); return; }
      apply(ev);
      render();
    },
    onGap: () => loadSoon(),
    onStatus: ctx.connStatus,
  }).start();

  // The list is loaded even if the stream cannot connect, so an error shows at once.
  setTimeout(() => { if (!loaded && !destroyed) loadAll(); }, 1500);

  return {
    destroy() {
      destroyed = true;
      stream.stop();
      clearInterval(tick);
      clearTimeout(stateTimer);
      clearTimeout(loadTimer);
    },
  };
}
