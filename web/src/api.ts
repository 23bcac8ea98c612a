// The API, on the UI's own origin. The token lives in sessionStorage for
// the tab's session and travels only in the Authorization header, never in
// a URL: the live stream is read with fetch (an EventSource cannot send
// headers), and a token given in the URL fragment (#token=...) is taken
// out of the address bar at once.

import type { VigilEvent, WatchState } from "./types";

const tokenKey = "vigil.token";

export function token(): string | null {
  return sessionStorage.getItem(tokenKey);
}

export function setToken(t: string | null): void {
  if (t) sessionStorage.setItem(tokenKey, t.trim());
  else sessionStorage.removeItem(tokenKey);
}

// takeTokenFromFragment stores a token given as #token=... and removes it
// from the address (and so from the history).
export function takeTokenFromFragment(): void {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!m) return;
  setToken(decodeURIComponent(m[1]));
  history.replaceState(null, "", location.pathname + location.search + "#/");
}

export class APIError extends Error {
  constructor(public status: number, message: string) {
    super(message);
  }
}

function headers(extra?: Record<string, string>): Record<string, string> {
  const h: Record<string, string> = { ...extra };
  const t = token();
  if (t) h["Authorization"] = "Bearer " + t;
  return h;
}

// call sends one request and decodes the answer (undefined for 204).
export async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const resp = await fetch(path, {
    method,
    headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const text = await resp.text();
  if (!resp.ok) {
    let msg = `${method} ${path}: HTTP ${resp.status}`;
    try {
      msg = (JSON.parse(text) as { error?: string }).error || msg;
    } catch {
      /* not JSON */
    }
    throw new APIError(resp.status, msg);
  }
  return (text ? JSON.parse(text) : undefined) as T;
}

// text sends a GET and returns the answer as text (the console log).
export async function text(path: string): Promise<string> {
  const resp = await fetch(path, { headers: headers(), cache: "no-store" });
  const body = await resp.text();
  if (!resp.ok) throw new APIError(resp.status, body.trim() || `GET ${path}: HTTP ${resp.status}`);
  return body;
}

export type StreamStatus = "connecting" | "live" | "reconnecting" | "unauthorized";

interface Handlers {
  state(s: WatchState): void;
  event(e: VigilEvent): void;
  status(s: StreamStatus, detail?: string): void;
}

// watch follows GET /api/v1/watch until the returned stop is called. A
// broken stream is resumed after the last message received (its id as
// Last-Event-ID), so no event is lost or repeated.
export function watch(h: Handlers): () => void {
  const ctl = new AbortController();
  let last = "";
  let fails = 0;
  const run = async () => {
    while (!ctl.signal.aborted) {
      h.status(fails === 0 && last === "" ? "connecting" : "reconnecting");
      try {
        const resp = await fetch("/api/v1/watch", {
          headers: headers(last ? { "Last-Event-ID": last, Accept: "text/event-stream" } : { Accept: "text/event-stream" }),
          signal: ctl.signal,
          cache: "no-store",
        });
        if (resp.status === 401) {
          h.status("unauthorized", await resp.text());
          return;
        }
        if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
        fails = 0;
        h.status("live");
        await readStream(resp.body, (id, type, data) => {
          if (type === "state") h.state(JSON.parse(data) as WatchState);
          else if (type === "event") h.event(JSON.parse(data) as VigilEvent);
          else if (type === "reset") last = ""; // resume impossible: start afresh
          if (id && type !== "reset") last = id;
        });
      } catch (e) {
        if (ctl.signal.aborted) return;
        fails++;
        h.status("reconnecting", String(e));
      }
      await new Promise((r) => setTimeout(r, Math.min(500 * fails, 5000)));
    }
  };
  void run();
  return () => ctl.abort();
}

// readStream parses Server-Sent Events from body until it ends.
async function readStream(body: ReadableStream<Uint8Array>, on: (id: string, type: string, data: string) => void): Promise<void> {
  const reader = body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  let id = "", type = "", data: string[] = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, "");
      buf = buf.slice(nl + 1);
      if (line === "") {
        if (type || data.length) on(id, type || "message", data.join("\n"));
        id = "";
        type = "";
        data = [];
        continue;
      }
      if (line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
      if (field === "id") id = val;
      else if (field === "event") type = val;
      else if (field === "data") data.push(val);
    }
  }
}
