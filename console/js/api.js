// The gateway's REST/JSON face: URLs and bodies follow the protos' google.api.http rules,
// bodies are proto3 JSON, errors are {"error": {"code", "message", "status", "details"}} and
// server-streaming methods answer server-sent events, one `data: <json message>` each.
//
// Streams are read with fetch() rather than EventSource: EventSource cannot send the
// Authorization header the face needs when identities are configured.

const TOKEN_KEY = "gemini-gateway-console.token";

export function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** A failed call: the google.rpc.Status the face answered, and the HTTP status. */
export class ApiError extends Error {
  constructor(httpStatus, body, fallbackText) {
    const error = (body && body.error) || {};
    const message =
      error.message || fallbackText || `HTTP ${httpStatus}${httpStatus ? "" : " (no answer)"}`;
    super(message);
    this.name = "ApiError";
    this.httpStatus = httpStatus;
    this.code = error.code ?? httpStatus;
    this.status = error.status || "";
    this.details = error.details || [];
  }

  /** The field violations of a google.rpc.BadRequest detail, as "field: description". */
  violations() {
    const found = [];
    for (const detail of this.details) {
      for (const violation of detail.fieldViolations || []) {
        found.push(`${violation.field}: ${violation.description}`);
      }
    }
    return found;
  }
}

function headers(extra) {
  const result = { Accept: "application/json", ...extra };
  const bearer = token();
  if (bearer) result.Authorization = `Bearer ${bearer}`;
  return result;
}

/** A URL of the face with query parameters (arrays repeat the key; empty values are left out). */
export function url(path, query) {
  const target = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (value === undefined || value === null || value === "") continue;
    if (Array.isArray(value)) {
      for (const item of value) target.searchParams.append(key, String(item));
    } else {
      target.searchParams.set(key, String(value));
    }
  }
  return target;
}

async function failure(response) {
  const text = await response.text().catch(() => "");
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  const plain = body ? "" : text.trim().slice(0, 300);
  return new ApiError(response.status, body, plain || response.statusText);
}

/** One unary call: resolves with the parsed JSON answer, rejects with ApiError. */
export async function call(method, path, { query, body, signal } = {}) {
  let response;
  try {
    response = await fetch(url(path, query), {
      method,
      headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
  } catch (caught) {
    if (caught && caught.name === "AbortError") throw caught;
    throw new ApiError(0, null, `the gateway cannot be reached (${caught.message || caught})`);
  }
  if (!response.ok) throw await failure(response);
  const text = await response.text();
  return text ? JSON.parse(text) : {};
}

export const get = (path, query, options) => call("GET", path, { query, ...options });
export const post = (path, body, options) => call("POST", path, { body, ...options });
export const patch = (path, body, options) => call("PATCH", path, { body, ...options });
export const del = (path, options) => call("DELETE", path, options);

/** Splits server-sent events out of text chunks: yields {event, data} per event. */
export class SseParser {
  constructor() {
    this.buffer = "";
  }

  *push(text) {
    this.buffer += text.replace(/\r\n?/g, "\n");
    let end = this.buffer.indexOf("\n\n");
    while (end !== -1) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const event = parseEvent(block);
      if (event) yield event;
      end = this.buffer.indexOf("\n\n");
    }
  }
}

function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") data.push(value);
    else if (name === "event") event = value;
  }
  if (!data.length) return null;
  return { event, data: data.join("\n") };
}

/**
 * A server-streaming method: an async iterator of its messages (parsed JSON). Ends with the
 * stream (or its `end` event); an `error` event or an {"error": ...} message rejects with
 * ApiError; aborting `signal` ends it quietly. `onOpen` runs once the face has answered (for
 * TailLogs: from then on every new log is sent).
 */
export async function* stream(path, { query, signal, onOpen } = {}) {
  let response;
  try {
    response = await fetch(url(path, query), {
      headers: headers({ Accept: "text/event-stream" }),
      signal,
      cache: "no-store",
    });
  } catch (caught) {
    if (caught && caught.name === "AbortError") return;
    throw new ApiError(0, null, `the gateway cannot be reached (${caught.message || caught})`);
  }
  if (!response.ok) throw await failure(response);
  if (onOpen) onOpen();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SseParser();
  try {
    while (true) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (caught) {
        if (signal && signal.aborted) return;
        throw caught;
      }
      if (chunk.done) return;
      for (const event of parser.push(chunk.value)) {
        if (event.event === "end") return;
        let message;
        try {
          message = JSON.parse(event.data);
        } catch {
          throw new ApiError(response.status, null, `unreadable event: ${event.data.slice(0, 200)}`);
        }
        const isError =
          event.event === "error" ||
          (message && message.error && typeof message.error === "object" && Object.keys(message).length === 1);
        if (isError) throw new ApiError(num(message.error && message.error.code), message);
        yield message;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function num(value) {
  const parsed = Number(value);
  return Number.isFinite(parsed) ? parsed : 0;
}

/** Decodes a proto3 JSON `bytes` value (standard or URL-safe base64) to a Uint8Array. */
export function decodeBytes(value) {
  if (!value) return new Uint8Array(0);
  const normal = String(value).replace(/-/g, "+").replace(/_/g, "/");
  const padded = normal + "===".slice((normal.length + 3) % 4);
  const binary = atob(padded);
  const bytes = new Uint8Array(binary.length);
  for (let index = 0; index < binary.length; index += 1) bytes[index] = binary.charCodeAt(index);
  return bytes;
}

// --- the calls the console makes -----------------------------------------------------------

export const PROJECT = "projects/-";

export const api = {
  consoleInfo: (options) => get("/console/info", undefined, options),
  listLogs: (query, options) => get(`/v1/${PROJECT}/logs`, query, options),
  getLog: (id, options) => get(`/v1/${PROJECT}/logs/${encodeURIComponent(id)}`, undefined, options),
  deleteLogs: (body) => post(`/v1/${PROJECT}/logs:batchDelete`, body),
  tailLogs: (query, options) => stream(`/v1/${PROJECT}/logs:tail`, { query, ...options }),
  getLoggingSettings: (options) => get(`/v1/${PROJECT}/loggingSettings`, undefined, options),
  updateLoggingSettings: (settings) =>
    patch(`/v1/${PROJECT}/loggingSettings`, { name: `${PROJECT}/loggingSettings`, ...settings }),
  listLabelKeys: (query, options) => get(`/v1/${PROJECT}/labelKeys`, query, options),
  listLabelValues: (key, query, options) =>
    get(`/v1/${PROJECT}/labelKeys/${encodeURIComponent(key)}/values`, query, options),
  queryUsage: (body, options) => post(`/v1/${PROJECT}:queryUsage`, body, options),
  listDatasets: (query, options) => get(`/v1/${PROJECT}/datasets`, query, options),
  getDataset: (id, options) =>
    get(`/v1/${PROJECT}/datasets/${encodeURIComponent(id)}`, undefined, options),
  createDataset: (body) => post(`/v1/${PROJECT}/datasets`, body),
  deleteDataset: (id) => del(`/v1/${PROJECT}/datasets/${encodeURIComponent(id)}`),
  exportDataset: (id, format, options) =>
    stream(`/v1/${PROJECT}/datasets/${encodeURIComponent(id)}:export`, {
      query: { format },
      ...options,
    }),
  rerunDataset: (id, body) => post(`/v1/${PROJECT}/datasets/${encodeURIComponent(id)}:rerun`, body),
  listRuns: (datasetId, query, options) =>
    get(`/v1/${PROJECT}/datasets/${encodeURIComponent(datasetId)}/runs`, query, options),
  getRun: (datasetId, runId, options) =>
    get(
      `/v1/${PROJECT}/datasets/${encodeURIComponent(datasetId)}/runs/${encodeURIComponent(runId)}`,
      undefined,
      options,
    ),
  // The operation's name is a path (`tunedModels/x/operations/y`): its slashes stay.
  watchOperation: (name, options) =>
    stream(`/v1/${name.split("/").map(encodeURIComponent).join("/")}:watch`, options),
  listModels: (query, options) => get("/v1beta/models", query, options),
  listTunedModels: (query, options) => get("/v1beta/tunedModels", query, options),
  getTunedModel: (id, options) =>
    get(`/v1beta/tunedModels/${encodeURIComponent(id)}`, undefined, options),
  listTunedModelOperations: (id, options) =>
    get(`/v1beta/tunedModels/${encodeURIComponent(id)}/operations`, undefined, options),
};
