// The /v2 API as the console uses it: the token from this tab's sessionStorage, errors as the envelope's words.

const KEY = "matchdb.token";

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(code, text) {
    super(text);
    this.code = code;
  }
}

function headers(collection) {
  const out = { "content-type": "application/json" };
  const value = token.get();
  if (value) out.authorization = `Token ${value}`;
  if (collection) out["collection-id"] = collection;
  return out;
}

// POST (or GET) /v2/<path>; resolves to the JSON body, rejects with an ApiError carrying status.text.
export async function call(path, body = {}, { method = "POST", collection = null } = {}) {
  const init = { method, headers: headers(collection) };
  if (method !== "GET" && method !== "DELETE") init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(`/v2/${path}`, init);
  } catch (error) {
    throw new ApiError(0, `The server cannot be reached (${error.message}).`);
  }
  let data;
  try {
    data = await response.json();
  } catch {
    throw new ApiError(response.status, `The server answered ${response.status} ${response.statusText}.`);
  }
  const status = data.status || {};
  if (!response.ok || (status.code && status.code >= 400)) {
    throw new ApiError(status.code || response.status, status.text || `HTTP ${response.status}`);
  }
  return data;
}

// Whether the server runs in open mode (no token needed): asked of the console's own route, so that a
// sign-in page does not start with a failed (401) request.
export async function serverInfo() {
  const response = await fetch("/console/server.json");
  return response.json();
}

// Stored thumbnails: fetched with the token (an <img src> cannot send it) and shown as blob URLs, one fetch each.
const thumbnails = new Map();

export function thumbnail(collection, id) {
  const key = `${collection}\n${id}`;
  if (!thumbnails.has(key)) {
    const url = `/v2/thumbnail?_id=${encodeURIComponent(id)}`;
    const promise = fetch(url, { headers: headers(collection) })
      .then((response) => (response.status === 200 ? response.blob() : null)) // 204: stored without one
      .then((blob) => (blob ? URL.createObjectURL(blob) : null))
      .catch(() => null);
    thumbnails.set(key, promise);
  }
  return thumbnails.get(key);
}

export function forgetThumbnails(collection = null) {
  for (const [key, promise] of thumbnails) {
    if (collection === null || key.startsWith(`${collection}\n`)) {
      promise.then((url) => url && URL.revokeObjectURL(url));
      thumbnails.delete(key);
    }
  }
}

// A File's bytes as plain base64 (what _base64 takes).
export function fileToBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
    reader.onerror = () => reject(new ApiError(0, `Cannot read ${file.name}: ${reader.error}`));
    reader.readAsDataURL(file);
  });
}

// The documented near-duplicate thresholds (docs/accuracy.md, the recommended range at a 1e-4 false-match rate).
export const NEAR = { bmh1: 2.1, phash: 14.1 };
export const NBITS = { bmh1: 961, phash: 64 };
