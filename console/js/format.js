// Reading proto3 JSON values (int64 as strings, durations as "1.5s") and showing them.

export const STATUS_NAMES = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
];

/** An int64/uint64 (a JSON string) or number as a Number; absent is 0. */
export function num(value) {
  if (value === undefined || value === null || value === "") return 0;
  const parsed = Number(value);
  return Number.isFinite(parsed) ? parsed : 0;
}

/** A google.protobuf.Duration ("1.250s") in seconds; null when absent. */
export function seconds(duration) {
  if (duration === undefined || duration === null || duration === "") return null;
  if (typeof duration === "number") return duration;
  const match = /^(-?[0-9.]+)s$/.exec(String(duration));
  return match ? Number(match[1]) : null;
}

/** A duration for people: "820 ms", "3.4 s". */
export function showDuration(duration) {
  const value = seconds(duration);
  if (value === null) return "—";
  if (Math.abs(value) < 1) return `${Math.round(value * 1000)} ms`;
  if (Math.abs(value) < 120) return `${value.toFixed(value < 10 ? 2 : 1)} s`;
  const days = value / 86400;
  if (days >= 1 && Number.isInteger(Math.round(days * 100) / 100)) return `${Math.round(days)} days`;
  return `${Math.round(value / 60)} min`;
}

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

export function showInt(value) {
  return integer.format(num(value));
}

/** Money with enough digits for fractions of a cent. */
export function showCost(value, currency = "USD") {
  const amount = num(value);
  const digits = amount !== 0 && Math.abs(amount) < 0.01 ? 6 : amount < 1 ? 4 : 2;
  return new Intl.NumberFormat("en-US", {
    style: "currency",
    currency: currency || "USD",
    minimumFractionDigits: 2,
    maximumFractionDigits: digits,
  }).format(amount);
}

export function showPercent(fraction) {
  return `${(num(fraction) * 100).toFixed(1)} %`;
}

/** A timestamp in the viewer's time zone, to the second. */
export function showTime(timestamp) {
  if (!timestamp) return "—";
  const date = new Date(timestamp);
  if (Number.isNaN(date.getTime())) return String(timestamp);
  return date.toLocaleString(undefined, {
    year: "numeric",
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
}

/** The code of a google.rpc.Status ({} means OK). */
export function statusCode(status) {
  return status && status.code ? num(status.code) : 0;
}

export function statusName(status) {
  const code = statusCode(status);
  return STATUS_NAMES[code] || `CODE_${code}`;
}

/** The last segment of a resource name. */
export function lastSegment(name) {
  const text = String(name || "");
  return text.slice(text.lastIndexOf("/") + 1);
}

/** Text of a Content's text parts (thoughts left out). */
export function contentText(content) {
  if (!content || !Array.isArray(content.parts)) return "";
  return content.parts
    .filter((part) => typeof part.text === "string" && !part.thought)
    .map((part) => part.text)
    .join("");
}

/** A datetime-local input's value as an RFC 3339 UTC timestamp. */
export function localInputToRfc3339(value) {
  if (!value) return "";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? "" : date.toISOString();
}

/** Quotes a value for an AIP-160 filter. */
export function quote(value) {
  return `"${String(value).replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
}
