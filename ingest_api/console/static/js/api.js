// The /v1 JSON API, with the key of this browser session (sessionStorage: gone when the tab closes).

const KEY = "fecapass.key";
const SCOPE = "fecapass.scope";
const RANK = { read: 0, write: 1, admin: 2 };

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  get scope() { return sessionStorage.getItem(SCOPE); },
  save(key, scope) { sessionStorage.setItem(KEY, key); sessionStorage.setItem(SCOPE, scope); },
  clear() { sessionStorage.removeItem(KEY); sessionStorage.removeItem(SCOPE); },
  // What the API allows this key is what the console offers: read < write < admin.
  can(needed) { return (RANK[this.scope] ?? -1) >= RANK[needed]; },
};

export class ApiProblem extends Error {
  constructor(status, code, detail) {
    super(`${detail} (${code})`);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

function url(path, query) {
  const target = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query ?? {})) {
    if (value !== undefined && value !== null && value !== "") target.searchParams.set(name, value);
  }
  return target;
}

function problemOf(status, body, fallback) {
  return new ApiProblem(status, body?.code ?? "http_error", body?.detail ?? fallback);
}

export async function api(method, path, { json, form, query, key } = {}) {
  const headers = { "X-API-Key": key ?? session.key ?? "" };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  const response = await fetch(url(path, query), { method, headers, body });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) throw problemOf(response.status, data, response.statusText);
  return data;
}

// An upload with progress (fetch cannot report upload progress; XMLHttpRequest can).
export function upload(path, form, { query, onProgress } = {}) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", url(path, query));
    request.setRequestHeader("X-API-Key", session.key ?? "");
    request.responseType = "json";
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable && onProgress) onProgress(event.loaded / event.total);
    });
    request.addEventListener("load", () => {
      if (request.status >= 200 && request.status < 300) resolve(request.response);
      else reject(problemOf(request.status, request.response, request.statusText));
    });
    request.addEventListener("error", () => reject(new ApiProblem(0, "network_error", "the API did not answer")));
    request.send(form);
  });
}

// A job answered before it finished (202, or `wait` ran out) is read at its status URL until it has.
export async function finished(job, rounds = 6) {
  for (let round = 0; round < rounds && !["done", "failed"].includes(job.state); round += 1) {
    job = await api("GET", `/v1/jobs/${encodeURIComponent(job.job_id)}`, { query: { wait: 20 } });
  }
  return job;
}

const names = new Map();
// People's names for matches (a search answers user ids), each read once per page view.
export function userName(userId) {
  if (!names.has(userId)) {
    names.set(userId, api("GET", `/v1/users/${userId}`).then(
      (user) => user.full_name || user.email,
      () => `user ${userId}`,
    ));
  }
  return names.get(userId);
}
export function forgetNames() { names.clear(); }
