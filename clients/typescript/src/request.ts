// What the client checks before a request leaves it: the runner would
// refuse these with a protocol error that names no field, so they are
// refused here, naming it.

import { InvalidRequestError } from "./errors.js";

/** Largest request the runner accepts, serialized (its `MAX_REQUEST_BYTES`). */
export const MAX_REQUEST_BYTES = 4 * 1024 * 1024;

/** Deepest nesting the runner's JSON parser reads. */
const MAX_DEPTH = 100;

/**
 * The request as the line sent to the runner, or InvalidRequestError: not
 * an object, a string that is not valid Unicode (half a surrogate pair, as
 * `slice` leaves of an emoji), nesting deeper than the runner reads, or
 * larger than it accepts.
 */
export function serializeRequest(request: unknown): string {
  if (typeof request !== "object" || request === null || Array.isArray(request)) {
    throw new InvalidRequestError("the request must be a JSON object", "(request)");
  }
  checkValue(request, "", 0);
  let body: string;
  try {
    body = JSON.stringify(request);
  } catch (error) {
    throw new InvalidRequestError(`the request is not JSON: ${String(error)}`, "(request)");
  }
  if (Buffer.byteLength(body) > MAX_REQUEST_BYTES) {
    const message = `the request is larger than ${MAX_REQUEST_BYTES} bytes; shorten its long fields (promptSummary, command)`;
    throw new InvalidRequestError(message, "(request)");
  }
  return body;
}

function checkValue(value: unknown, path: string, depth: number): void {
  if (typeof value === "string") {
    if (!value.isWellFormed()) {
      throw new InvalidRequestError(
        `${path} holds half of a UTF-16 surrogate pair (a string cut inside an emoji?); cut strings at code points`,
        path,
      );
    }
    return;
  }
  if (typeof value !== "object" || value === null) return;
  if (depth >= MAX_DEPTH) {
    throw new InvalidRequestError(`${path} nests deeper than ${MAX_DEPTH} levels`, path);
  }
  for (const [key, inner] of Object.entries(value)) {
    const at = Array.isArray(value) ? `${path}[${key}]` : path ? `${path}.${key}` : key;
    if (!key.isWellFormed()) {
      throw new InvalidRequestError(`a key at ${path || "the top"} is not valid Unicode`, path || "(request)");
    }
    checkValue(inner, at, depth + 1);
  }
}
