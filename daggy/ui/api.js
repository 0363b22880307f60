// The REST client: bearer token handling (401 -> token dialog -> retry) and JSON errors.
import { showError, errorMessage } from "./util.js";

const TOKEN_KEY = "daggy.token";

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.body = body;
  }
}

export function getToken() {
  try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; }
}

function setToken(tok) {
  try { sessionStorage.setItem(TOKEN_KEY, tok); } catch { /* storage disabled */ }
}

export function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  const tok = getToken();
  if (tok) h["Authorization"] = `Bearer ${tok}`;
  return h;
}

// One dialog for every request that got a 401 at the same time.
let tokenPromise = null;

/** Ask the user for a token; resolves once a new one is stored, rejects on cancel. */
export function askToken(refused) {
  if (tokenPromise) return tokenPromise;
  const dlg = document.getElementById("token-dialog");
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  const cancel = document.getElementById("token-cancel");
  const msg = document.getElementById("token-dialog-message");
  tokenPromise = new Promise((resolve, reject) => {
    msg.textContent = refused
      ? "daggyd refused that token. Enter a valid bearer token."
      : "daggyd asks for a bearer token. It is kept for this browser tab only (sessionStorage).";
    input.value = "";
    const done = (ok) => {
      form.removeEventListener("submit", onSubmit);
      cancel.removeEventListener("click", onCancel);
      dlg.removeEventListener("cancel", onCancel);
      if (dlg.open) dlg.close();
      tokenPromise = null;
      if (ok) resolve(); else reject(new ApiError(401, "authentication required: no token given"));
    };
    const onSubmit = (ev) => {
      ev.preventDefault();
      const tok = input.value.trim();
      if (!tok) { input.focus(); return; }
      setToken(tok);
      done(true);
    };
    const onCancel = (ev) => { ev.preventDefault(); done(false); };
    form.addEventListener("submit", onSubmit);
    cancel.addEventListener("click", onCancel);
    dlg.addEventListener("cancel", onCancel);
    if (!dlg.open) dlg.showModal();
    input.focus();
  });
  return tokenPromise;
}

async function readBody(resp) {
  const text = await resp.text();
  if (!text) return null;
  try { return JSON.parse(text); } catch { return text; }
}

/**
 * Call the API. Resolves with the decoded JSON body; rejects with an ApiError whose message
 * is the daemon's {"error": ...} (or a description of the network failure).
 */
export async function api(method, path) {
  let refused = false;
  for (;;) {
    const hadToken = getToken();
    let resp;
    try {
      resp = await fetch(path, { method, headers: authHeaders({ Accept: "application/json" }), cache: "no-store" });
    } catch (e) {
      throw new ApiError(0, `cannot reach daggyd (${errorMessage(e)}); is the daemon running?`);
    }
    if (resp.status === 401) {
      await readBody(resp).catch(() => null);
      // A token that changed meanwhile (another request got one) is tried first.
      if (getToken() && getToken() !== hadToken) continue;
      await askToken(refused || !!hadToken);
      refused = true;
      continue;
    }
    let body;
    try { body = await readBody(resp); } catch (e) {
      throw new ApiError(resp.status, `reading the answer of ${method} ${path} failed: ${errorMessage(e)}`);
    }
    if (!resp.ok) {
      const m = body && typeof body === "object" && body.error ? body.error : `${resp.status} ${resp.statusText}`;
      throw new ApiError(resp.status, m, body);
    }
    return body;
  }
}

/** api() that shows a failure in the banner and resolves with null instead of rejecting. */
export async function apiOrBanner(method, path, what) {
  try {
    return await api(method, path);
  } catch (e) {
    showError(`${what ? what + ": " : ""}${errorMessage(e)}`);
    return null;
  }
}
