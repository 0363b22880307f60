// Server-Sent Events over fetch(), so the bearer token can be sent (EventSource cannot set
// headers). Reconnects with backoff, sending Last-Event-ID.
import { authHeaders, askToken, getToken } from "./api.js";
import { errorMessage } from "./util.js";

/**
 * An incremental SSE parser (the WHATWG event-stream format): lines end in CRLF, LF or CR,
 * anywhere across chunk boundaries; "field: value" with one optional space; comments start
 * with ":"; a blank line dispatches. `onMessage({id, event, data})`; `lastEventId` persists
 * from message to message, as in EventSource.
 */
export class SSEParser {
  constructor(onMessage, onComment) {
    this.onMessage = onMessage;
    this.onComment = onComment || (() => {});
    this.buf = "";
    this.data = [];
    this.event = "";
    this.lastEventId = null;
    this.sawId = false;
  }

  feed(text) {
    let buf = this.buf + text;
    let start = 0;
    const n = buf.length;
    const re = /[\r\n]/g;
    re.lastIndex = 0;
    let m;
    while ((m = re.exec(buf)) !== null) {
      const i = m.index;
      if (buf.charCodeAt(i) === 13) {
        if (i + 1 >= n) break; // a CR at the end: wait to see whether LF follows
        this._line(buf.slice(start, i));
        if (buf.charCodeAt(i + 1) === 10) re.lastIndex = i + 2;
        start = re.lastIndex;
      } else {
        this._line(buf.slice(start, i));
        start = i + 1;
      }
    }
    this.buf = buf.slice(start);
  }

  /** The stream ended: a message without its blank line is dropped, per the spec. */
  reset() {
    this.buf = "";
    this.data = [];
    this.event = "";
  }

  _line(line) {
    if (line === "") {
      const data = this.data;
      const event = this.event || "message";
      this.data = [];
      this.event = "";
      if (data.length === 0) return;
      this.onMessage({ id: this.lastEventId, event, data: data.join("\n") });
      return;
    }
    if (line.charCodeAt(0) === 58) { // ":"
      this.onComment(line.slice(1).trimStart());
      return;
    }
    const c = line.indexOf(":");
    let field = line;
    let value = "";
    if (c >= 0) {
      field = line.slice(0, c);
      value = line.slice(c + 1);
      if (value.charCodeAt(0) === 32) value = value.slice(1);
    }
    switch (field) {
      case "data": this.data.push(value); break;
      case "event": this.event = value; break;
      case "id": if (!value.includes("\0")) this.lastEventId = value; break;
      default: break; // "retry" and unknown fields are ignored
    }
  }
}

const IDLE_MS = 45000; // keep-alive comes every 15 s; three missed means a dead stream

/**
 * Follows /v1/events (optionally ?run=ID). Callbacks:
 *   onEvent(obj, id)     each event object (parsed data)
 *   onGap(info)          a `gap` message: events were lost, refetch
 *   onOpen(info)         connected; info.reconnect is true after the first time
 *   onStatus(kind, msg)  "live" | "connecting" | "down" | "fatal"
 */
export class EventStream {
  constructor(query, handlers) {
    this.query = query || "";
    this.h = handlers;
    this.lastEventId = null;
    this.ctrl = null;
    this.stopped = false;
    this.backoff = 1000;
    this.connects = 0;
    this.retryTimer = null;
    this.idleTimer = null;
  }

  start() {
    this.stopped = false;
    this._connect();
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.idleTimer);
    if (this.ctrl) this.ctrl.abort();
    this.ctrl = null;
  }

  _status(kind, msg) {
    if (!this.stopped && this.h.onStatus) this.h.onStatus(kind, msg);
  }

  _retry(msg) {
    if (this.stopped) return;
    const delay = Math.min(this.backoff, 30000) * (0.8 + Math.random() * 0.4);
    this.backoff = Math.min(this.backoff * 2, 30000);
    this._status("down", `${msg}; reconnecting in ${Math.round(delay / 1000)} s`);
    this.retryTimer = setTimeout(() => this._connect(), delay);
  }

  _armIdle() {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      if (this.ctrl) this.ctrl.abort(new Error("no data for 45 s"));
    }, IDLE_MS);
  }

  async _connect() {
    if (this.stopped) return;
    this._status("connecting", "connecting to the event stream…");
    const ctrl = new AbortController();
    this.ctrl = ctrl;
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (this.lastEventId !== null) headers["Last-Event-ID"] = this.lastEventId;
    let resp;
    try {
      resp = await fetch(`/v1/events${this.query}`, { headers, signal: ctrl.signal, cache: "no-store" });
    } catch (e) {
      if (this.stopped || ctrl !== this.ctrl) return;
      this._retry(`cannot reach daggyd (${errorMessage(e)})`);
      return;
    }
    if (this.stopped || ctrl !== this.ctrl) { ctrl.abort(); return; }
    if (resp.status === 401) {
      const had = getToken();
      try {
        if (getToken() === had) await askToken(!!had);
      } catch (e) {
        this._status("fatal", "event stream needs a token");
        if (this.h.onFatal) this.h.onFatal(e);
        return;
      }
      this._connect();
      return;
    }
    if (!resp.ok) {
      let m = `${resp.status} ${resp.statusText}`;
      try { const b = await resp.json(); if (b && b.error) m = b.error; } catch { /* not JSON */ }
      // A 404 on a reconnect (the daemon restarted and does not know the run yet) is
      // retried; on the first connection it is final.
      if (resp.status === 400 || (resp.status === 404 && this.connects === 0)) {
        this._status("fatal", m);
        if (this.h.onFatal) this.h.onFatal(new Error(m));
        return;
      }
      this._retry(`event stream: ${m}`);
      return;
    }
    const reconnect = this.connects > 0;
    this.connects += 1;
    this._status("live", "live");
    const openedAt = Date.now();
    const parser = new SSEParser((msg) => this._message(msg));
    parser.lastEventId = this.lastEventId;
    try {
      if (this.h.onOpen) this.h.onOpen({ reconnect, lastEventId: this.lastEventId });
    } catch (e) { console.warn(e); } // eslint-disable-line no-console
    const reader = resp.body.getReader();
    const dec = new TextDecoder("utf-8");
    this._armIdle();
    let why = "the event stream ended";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        this._armIdle();
        parser.feed(dec.decode(value, { stream: true }));
        this.lastEventId = parser.lastEventId;
        if (Date.now() - openedAt > 5000) this.backoff = 1000;
      }
      parser.feed(dec.decode());
    } catch (e) {
      why = `the event stream broke (${errorMessage(e)})`;
    }
    clearTimeout(this.idleTimer);
    this.lastEventId = parser.lastEventId;
    if (this.stopped || ctrl !== this.ctrl) return;
    this._retry(why);
  }

  _message(msg) {
    if (this.stopped) return;
    if (msg.event === "gap") {
      let info = {};
      try { info = JSON.parse(msg.data); } catch { /* ignore */ }
      if (this.h.onGap) this.h.onGap(info);
      return;
    }
    let obj;
    try { obj = JSON.parse(msg.data); } catch { return; }
    if (this.h.onEvent) this.h.onEvent(obj, msg.id);
  }
}
