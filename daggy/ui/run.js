// The run page (#/run/<id>): header, DAG (cytoscape), task table, live updates.
import { api } from "./api.js";
import { EventStream } from "./sse.js";
import {
  STATES, STATE_COLORS, FINISHED, el, stateBadge, fmtTime, fmtDuration, parseTime, zeroCounts,
  showError, errorMessage, frameBatcher, announce, encodeName, worstState, reportBug,
} from "./util.js";
import {
  buildElements, buildStyle, layoutOptions, isBig, taskId, groupId, groupCounts, groupLabel,
  taskLabel, COLLAPSE_OVER,
} from "./graph.js";

const RANKDIR_KEY = "daggy.rankDir";

export function mountRun(root, ctx, runId, navStart) {
  let destroyed = false;
  let loaded = false;
  let run = null; // summary fields of the run document
  const tasks = new Map(); // name -> {name, def, state, attempts, lastRc, lastDuration, runningSince, group}
  const groups = new Map(); // definedName -> {dn, id, members, collapsed}
  const counts = zeroCounts();
  let cy = null;
  let firstLayoutDone = false;
  let pending = []; // events waiting for the next frame (or for the document)
  let rankDir = sessionStorage.getItem(RANKDIR_KEY) || "TB";

  // ---------------------------------------------------------------- DOM
  const title = el("h2", { id: "run-title", text: `Run ${runId}` });
  const stateEl = el("span", { id: "run-state", class: "state-badge", text: "…" });
  const tagEl = el("span", { class: "run-tag" });
  const killBtn = el("button", { type: "button", id: "kill-run", class: "danger", disabled: true, text: "Kill run" });
  const resumeBtn = el("button", { type: "button", id: "resume-run", disabled: true, text: "Resume run" });
  const startedEl = el("dd", { text: "—" });
  const durEl = el("dd", { text: "—" });
  const countsEl = el("dd", { class: "count-list" });
  const paramsEl = el("pre", { class: "params" });
  const header = el("header", { class: "run-header" },
    el("div", { class: "run-title-line" },
      el("a", { href: "#/", class: "back", text: "← Runs" }), title, tagEl, stateEl,
      el("div", { class: "run-actions" }, killBtn, resumeBtn)),
    el("dl", { class: "run-meta" },
      el("div", null, el("dt", { text: "Started" }), startedEl),
      el("div", null, el("dt", { text: "Duration" }), durEl),
      el("div", { class: "wide" }, el("dt", { text: "Tasks" }), countsEl)),
    el("details", { class: "params-box" }, el("summary", { text: "Parameters" }), paramsEl));

  const expandAll = el("button", { type: "button", id: "expand-all", text: "Expand all" });
  const collapseAll = el("button", { type: "button", id: "collapse-all", text: "Collapse all" });
  const groupSel = el("select", { id: "group-select", "aria-label": "Task group" });
  const groupToggle = el("button", { type: "button", id: "toggle-group", text: "Collapse/expand" });
  const dirSel = el("select", { id: "rank-dir", "aria-label": "Layout direction" },
    el("option", { value: "TB", text: "Top to bottom" }),
    el("option", { value: "LR", text: "Left to right" }));
  dirSel.value = rankDir;
  const fitBtn = el("button", { type: "button", id: "fit-graph", text: "Fit" });
  const graphInfo = el("span", { class: "muted graph-info", "aria-live": "polite" });
  const graphDiv = el("div", { id: "graph", class: "graph", role: "img", "aria-label": `DAG of run ${runId}; the task table lists the same tasks` });
  const legend = el("ul", { class: "legend", "aria-label": "State colours" },
    ...STATES.map((s) => el("li", null,
      el("span", { class: `swatch state-${s}`, "aria-hidden": "true" }), `${s} (${STATE_COLORS[s].label})`)),
    el("li", null, el("span", { class: "swatch swatch-group", "aria-hidden": "true" }),
      "group of instances: double-click to collapse/expand"));

  const taskFilter = el("input", { id: "task-filter", type: "search", placeholder: "filter by name", autocomplete: "off" });
  const taskStateFilter = el("select", { id: "task-state-filter" },
    el("option", { value: "", text: "all states" }),
    ...STATES.map((s) => el("option", { value: s, text: s })));
  const taskCount = el("span", { class: "muted", "aria-live": "polite" });
  const tbody = el("tbody");
  const taskTable = el("table", { id: "task-table", class: "data-table task-table" },
    el("caption", { class: "visually-hidden", text: `Tasks of run ${runId}` }),
    el("thead", null, el("tr", null,
      el("th", { scope: "col", text: "Task" }),
      el("th", { scope: "col", text: "Defined as" }),
      el("th", { scope: "col", text: "State" }),
      el("th", { scope: "col", class: "num", text: "Attempts" }),
      el("th", { scope: "col", class: "num", text: "Last rc" }),
      el("th", { scope: "col", class: "num", text: "Duration" }))),
    tbody);

  root.replaceChildren(el("section", { class: "run-page", "aria-labelledby": "run-title" },
    header,
    el("div", { class: "run-body" },
      el("section", { class: "graph-pane", "aria-label": "Graph" },
        el("div", { class: "toolbar" }, expandAll, collapseAll, groupSel, groupToggle, dirSel, fitBtn, graphInfo),
        graphDiv, legend),
      el("section", { class: "table-pane", "aria-label": "Task table" },
        el("div", { class: "toolbar" },
          el("label", null, "Filter ", taskFilter),
          el("label", null, "State ", taskStateFilter), taskCount),
        el("div", { class: "table-wrap" }, taskTable)))));

  // ---------------------------------------------------------------- header
  function runDuration() {
    if (!run) return null;
    const s = parseTime(run.startTime);
    const e = FINISHED.has(run.state) ? parseTime(run.lastUpdate) : Date.now();
    return s === null || e === null ? null : e - s;
  }

  function renderHeader() {
    if (!run) return;
    stateEl.textContent = run.state;
    stateEl.dataset.state = run.state;
    stateEl.className = `state-badge state-${run.state}`;
    tagEl.textContent = run.tag ? `tag ${run.tag}` : "no tag";
    startedEl.textContent = fmtTime(run.startTime);
    durEl.textContent = fmtDuration(runDuration());
    const total = STATES.reduce((a, s) => a + counts[s], 0);
    countsEl.replaceChildren(
      el("span", { class: "count-total", text: `${total} total` }),
      ...STATES.filter((s) => counts[s]).map((s) => el("span", { class: `count-chip state-${s}`, text: `${counts[s]} ${s}` })));
    killBtn.disabled = !(run.state === "QUEUED" || run.state === "RUNNING" || run.state === "RETRY");
    resumeBtn.disabled = !(run.state === "ERRORED" || run.state === "KILLED");
    document.title = `daggy · run ${runId} · ${run.state}`;
  }

  async function setRunState(state, what) {
    killBtn.disabled = true;
    resumeBtn.disabled = true;
    try {
      const r = await api("PATCH", `/v1/dagrun/${runId}/state/${state}`);
      if (r && r.state && run) { run.state = r.state; }
      announce(`run ${runId}: ${what} requested`);
    } catch (e) {
      showError(`${what} run ${runId}: ${errorMessage(e)}`);
    }
    renderHeader();
  }
  killBtn.addEventListener("click", () => setRunState("KILLED", "kill"));
  resumeBtn.addEventListener("click", () => setRunState("QUEUED", "resume"));

  // ---------------------------------------------------------------- model
  function addTask(def, state, attempts, changes) {
    const last = attempts && attempts.length ? attempts[attempts.length - 1] : null;
    const t = {
      name: def.name,
      def,
      state: state || "QUEUED",
      attempts: attempts ? attempts.length : 0,
      lastRc: last ? last.rc : undefined,
      lastDuration: last ? attemptMs(last) : null,
      runningSince: null,
      group: null,
    };
    if (t.state === "RUNNING" && changes && changes.length) {
      const c = changes[changes.length - 1];
      if (c.state === "RUNNING") t.runningSince = parseTime(c.time);
    }
    tasks.set(t.name, t);
    counts[t.state] = (counts[t.state] || 0) + 1;
    return t;
  }

  function attemptMs(a) {
    const s = parseTime(a.startTime);
    const e = parseTime(a.stopTime);
    return s === null || e === null ? null : e - s;
  }

  // An expanded task (several instances of one defined name, or an instance whose name is
  // not its defined name) belongs to the group of its defined name.
  function regroup() {
    const byDn = new Map();
    for (const t of tasks.values()) {
      const dn = t.def.definedName ?? t.name;
      if (!byDn.has(dn)) byDn.set(dn, []);
      byDn.get(dn).push(t);
    }
    for (const [dn, members] of byDn) {
      const grouped = members.length > 1 || members[0].name !== dn;
      if (!grouped) {
        members[0].group = null;
        groups.delete(dn);
        continue;
      }
      let g = groups.get(dn);
      if (!g) {
        g = { dn, id: groupId(dn), members: [], collapsed: members.length > COLLAPSE_OVER };
        groups.set(dn, g);
      }
      g.members = members;
      for (const t of members) t.group = g;
    }
    renderGroupSelect();
  }

  function renderGroupSelect() {
    const names = [...groups.keys()].sort();
    groupSel.replaceChildren(...names.map((dn) => {
      const g = groups.get(dn);
      return el("option", { value: dn, text: `${dn} ×${g.members.length}${g.collapsed ? " (collapsed)" : ""}` });
    }));
    const none = names.length === 0;
    groupSel.disabled = none;
    groupToggle.disabled = none;
    expandAll.disabled = none;
    collapseAll.disabled = none;
    if (none) groupSel.append(el("option", { value: "", text: "no groups" }));
  }

  function loadDoc(doc) {
    run = {
      runID: doc.runID, tag: doc.tag, state: doc.state, startTime: doc.startTime,
      lastUpdate: doc.lastUpdate, parameters: doc.parameters,
    };
    const collapsedBefore = new Map([...groups].map(([dn, g]) => [dn, g.collapsed]));
    tasks.clear();
    groups.clear();
    for (const s of STATES) counts[s] = 0;
    for (const [name, def] of Object.entries(doc.tasks || {})) {
      addTask(def, (doc.taskStates || {})[name], (doc.taskAttempts || {})[name], (doc.taskStateChanges || {})[name]);
    }
    regroup();
    for (const [dn, c] of collapsedBefore) if (groups.has(dn)) groups.get(dn).collapsed = c;
    renderGroupSelect();
    paramsEl.textContent = JSON.stringify(doc.parameters ?? {}, null, 2);
  }

  // ---------------------------------------------------------------- graph
  function rebuildGraph() {
    const { nodes, edges } = buildElements({ tasks, groups });
    const big = isBig(nodes.length + edges.length);
    if (!cy) {
      cy = cytoscape({
        container: graphDiv,
        elements: [],
        style: buildStyle(big),
        layout: { name: "preset" },
        minZoom: 0.02,
        maxZoom: 3,
        boxSelectionEnabled: false,
        selectionType: "single",
        autoungrabify: big,
        hideEdgesOnViewport: big,
        textureOnViewport: big,
        motionBlur: false,
        pixelRatio: big ? 1 : "auto",
      });
      cy.on("tap", "node.task", (ev) => openTask(ev.target.data("name")));
      cy.on("dbltap", "node.group", (ev) => toggleGroup(ev.target.data("dn")));
      cy.on("tap", "node.group", (ev) => { groupSel.value = ev.target.data("dn"); });
      ctx.setCy(cy);
    } else {
      cy.style(buildStyle(big));
    }
    cy.batch(() => {
      cy.elements().remove();
      cy.add(nodes);
      cy.add(edges);
    });
    relayout();
  }

  function relayout() {
    if (!cy) return;
    const t0 = performance.now();
    const opts = layoutOptions(cy, rankDir);
    try {
      cy.layout(opts).run();
    } catch (e) {
      // A layout failure must not leave an empty page: fall back to breadthfirst.
      console.warn("layout failed, using breadthfirst:", e); // eslint-disable-line no-console
      cy.layout({ name: "breadthfirst", directed: true, fit: true, animate: false }).run();
    }
    // Small graphs: do not blow the nodes up to fill the pane.
    if (cy.zoom() > 1.25) { cy.zoom(1.25); cy.center(); }
    const drawn = cy.nodes().filter((n) => !n.isParent()).length;
    graphInfo.textContent = `${tasks.size} tasks, ${drawn} drawn, ${cy.edges().length} edges; ${opts.name} layout ${Math.round(performance.now() - t0)} ms`;
    if (!firstLayoutDone) {
      firstLayoutDone = true;
      // Ready once the laid-out graph has been painted.
      requestAnimationFrame(() => requestAnimationFrame(() => {
        if (destroyed) return;
        ctx.markReady(performance.now() - navStart);
      }));
    }
  }

  function toggleGroup(dn, collapsed) {
    const g = groups.get(dn);
    if (!g) return;
    g.collapsed = collapsed === undefined ? !g.collapsed : collapsed;
    renderGroupSelect();
    groupSel.value = dn;
    rebuildGraph();
    announce(`group ${dn} ${g.collapsed ? "collapsed" : "expanded"}`);
  }

  expandAll.addEventListener("click", () => {
    for (const g of groups.values()) g.collapsed = false;
    renderGroupSelect();
    rebuildGraph();
  });
  collapseAll.addEventListener("click", () => {
    for (const g of groups.values()) g.collapsed = true;
    renderGroupSelect();
    rebuildGraph();
  });
  groupToggle.addEventListener("click", () => { if (groupSel.value) toggleGroup(groupSel.value); });
  dirSel.addEventListener("change", () => {
    rankDir = dirSel.value;
    sessionStorage.setItem(RANKDIR_KEY, rankDir);
    relayout();
  });
  fitBtn.addEventListener("click", () => { if (cy) cy.fit(undefined, 24); });

  function updateNodes(dirtyTasks) {
    if (!cy) return;
    const dirtyGroups = new Set();
    cy.batch(() => {
      for (const t of dirtyTasks) {
        if (t.group) dirtyGroups.add(t.group);
        if (t.group && t.group.collapsed) continue;
        const n = cy.getElementById(taskId(t.name));
        if (n.nonempty()) n.data({ state: t.state, label: taskLabel(t) });
      }
      for (const g of dirtyGroups) {
        const c = groupCounts(g);
        g.counts = c;
        const n = cy.getElementById(g.id);
        if (n.nonempty()) n.data({ state: worstState(c), label: groupLabel(g, c) });
      }
    });
  }

  // ---------------------------------------------------------------- table
  const rows = new Map();
  function taskDuration(t) {
    if (t.state === "RUNNING" && t.runningSince) return Date.now() - t.runningSince;
    return t.lastDuration;
  }

  function makeRow(t) {
    const tr = document.createElement("tr");
    tr.tabIndex = 0;
    tr.className = "clickable";
    tr.dataset.task = t.name;
    for (let i = 0; i < 6; i++) tr.append(document.createElement("td"));
    tr.cells[0].className = "task-name";
    tr.cells[3].className = "num";
    tr.cells[4].className = "num";
    tr.cells[5].className = "num duration";
    tr.cells[0].textContent = t.name;
    tr.cells[1].textContent = t.def.definedName ?? "";
    fillRow(tr, t);
    return tr;
  }

  function fillRow(tr, t) {
    tr.dataset.state = t.state;
    tr.cells[2].replaceChildren(stateBadge(t.state));
    tr.cells[3].textContent = String(t.attempts);
    tr.cells[4].textContent = t.lastRc === undefined ? "—" : (t.lastRc === null ? "signal" : String(t.lastRc));
    tr.cells[5].textContent = fmtDuration(taskDuration(t));
  }

  tbody.addEventListener("click", (e) => {
    const tr = e.target.closest("tr[data-task]");
    if (tr) openTask(tr.dataset.task);
  });
  tbody.addEventListener("keydown", (e) => {
    const tr = e.target.closest("tr[data-task]");
    if (!tr) return;
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openTask(tr.dataset.task); }
    else if (e.key === "ArrowDown" && tr.nextElementSibling) { e.preventDefault(); tr.nextElementSibling.focus(); }
    else if (e.key === "ArrowUp" && tr.previousElementSibling) { e.preventDefault(); tr.previousElementSibling.focus(); }
  });

  let rowMatch = () => true;
  function applyTableFilter() {
    const q = taskFilter.value.trim().toLowerCase();
    const st = taskStateFilter.value;
    rowMatch = (t) => (!st || t.state === st)
      && (!q || t.name.toLowerCase().includes(q) || String(t.def.definedName ?? "").toLowerCase().includes(q));
    rebuildTable();
  }

  function rebuildTable() {
    const shown = [];
    for (const t of tasks.values()) {
      let tr = rows.get(t.name);
      if (!tr) { tr = makeRow(t); rows.set(t.name, tr); }
      if (rowMatch(t)) shown.push(tr);
    }
    for (const name of [...rows.keys()]) if (!tasks.has(name)) rows.delete(name);
    tbody.replaceChildren(...shown);
    taskCount.textContent = `${shown.length} of ${tasks.size} tasks`;
  }

  let filterTimer = null;
  const filterSoon = () => { clearTimeout(filterTimer); filterTimer = setTimeout(applyTableFilter, tasks.size > 2000 ? 200 : 60); };
  taskFilter.addEventListener("input", filterSoon);
  taskStateFilter.addEventListener("change", applyTableFilter);

  // ---------------------------------------------------------------- live updates
  const flush = frameBatcher(() => {
    if (destroyed || !loaded) return;
    const evs = pending;
    pending = [];
    const dirty = new Set();
    let structural = false;
    let runDirty = false;
    let reload = false;
    for (const ev of evs) {
      if (ev.runID !== runId) continue;
      if (run && ev.time && ev.time > (run.lastUpdate || "")) run.lastUpdate = ev.time;
      switch (ev.event) {
        case "taskState": {
          const t = tasks.get(ev.task);
          if (!t) { reload = true; break; }
          if (t.state !== ev.state) {
            counts[t.state] -= 1;
            counts[ev.state] = (counts[ev.state] || 0) + 1;
            t.state = ev.state;
          }
          if (ev.state === "RUNNING") t.runningSince = parseTime(ev.time) ?? Date.now();
          dirty.add(t);
          runDirty = true;
          break;
        }
        case "taskAdded": {
          if (tasks.has(ev.task) || !ev.definition) break;
          addTask(ev.definition, ev.state, [], null);
          structural = true;
          runDirty = true;
          break;
        }
        case "taskAttempt": {
          const t = tasks.get(ev.task);
          if (!t || !ev.attempt) break;
          t.attempts += 1;
          t.lastRc = ev.attempt.rc;
          t.lastDuration = attemptMs(ev.attempt);
          dirty.add(t);
          break;
        }
        case "runState":
          if (run) run.state = ev.state;
          runDirty = true;
          announce(`run ${runId} is ${ev.state}`);
          break;
        default:
          break;
      }
    }
    if (reload) { reloadDoc(); return; }
    if (structural) {
      regroup();
      rebuildGraph();
      rebuildTable();
    } else if (dirty.size) {
      updateNodes(dirty);
    }
    for (const t of dirty) {
      const tr = rows.get(t.name);
      if (!tr) continue;
      fillRow(tr, t);
      if (!rowMatch(t) && tr.isConnected) tr.remove();
      else if (rowMatch(t) && !tr.isConnected) structural = true;
    }
    if (structural || (taskStateFilter.value && dirty.size)) rebuildTable();
    if (runDirty) renderHeader();
    if (dirty.size) ctx.tasksChanged(runId, new Set([...dirty].map((t) => t.name)));
  });

  let reloading = null;
  async function reloadDoc() {
    if (reloading) return reloading;
    reloading = (async () => {
      try {
        const doc = await api("GET", `/v1/dagrun/${runId}`);
        if (destroyed) return;
        loadDoc(doc);
        loaded = true;
        renderHeader();
        rebuildTable();
        rebuildGraph();
        ctx.tasksChanged(runId, null);
        flush();
      } catch (e) {
        showError(`loading run ${runId} failed: ${errorMessage(e)}`);
        if (e.status === 404) {
          stream.stop();
          root.querySelector(".run-body").replaceChildren(el("p", { class: "empty", text: `No run ${runId}: ${errorMessage(e)}` }));
          ctx.markReady(performance.now() - navStart);
        }
      } finally {
        reloading = null;
      }
    })();
    return reloading;
  }

  const tick = setInterval(() => {
    if (!loaded) return;
    if (run && !FINISHED.has(run.state)) durEl.textContent = fmtDuration(runDuration());
    for (const t of tasks.values()) {
      if (t.state === "RUNNING") {
        const tr = rows.get(t.name);
        if (tr) tr.cells[5].textContent = fmtDuration(taskDuration(t));
      }
    }
  }, 1000);

  const stream = new EventStream(`?run=${runId}`, {
    onOpen: ({ reconnect, lastEventId }) => {
      if (!loaded || (reconnect && lastEventId === null)) reloadDoc();
    },
    onEvent: (ev) => {
      pending.push(ev);
      if (loaded) flush();
    },
    onGap: () => { reloadDoc(); },
    onFatal: (e) => { if (!loaded) reloadDoc(); else showError(`event stream of run ${runId}: ${errorMessage(e)}`); },
    onStatus: ctx.connStatus,
  }).start();
  // Load the document even when the stream cannot connect, so errors show at once.
  const fallback = setTimeout(() => { if (!loaded && !destroyed) reloadDoc(); }, 1500);

  function openTask(name) {
    location.hash = `#/run/${runId}/task/${encodeName(name)}`;
  }

  return {
    runId,
    get cy() { return cy; },
    nodeState(name) {
      const t = tasks.get(name);
      return t ? t.state : null;
    },
    nodeColor(name) {
      if (!cy) return null;
      const t = tasks.get(name);
      if (!t) return null;
      const id = t.group && t.group.collapsed ? t.group.id : taskId(name);
      const n = cy.getElementById(id);
      return n.nonempty() ? n.style("background-color") : null;
    },
    task(name) { return tasks.get(name) || null; },
    hasTask(name) { return tasks.has(name); },
    focusRow(name) {
      const tr = rows.get(name);
      if (tr && tr.isConnected) tr.focus();
    },
    selectNode(name) {
      if (!cy) return;
      cy.elements(":selected").unselect();
      const t = tasks.get(name);
      if (!t) return;
      const n = cy.getElementById(t.group && t.group.collapsed ? t.group.id : taskId(name));
      if (n.nonempty()) n.select();
    },
    destroy() {
      destroyed = true;
      stream.stop();
      clearInterval(tick);
      clearTimeout(fallback);
      clearTimeout(filterTimer);
      if (cy) { cy.destroy(); cy = null; }
      ctx.setCy(null);
    },
  };
}
