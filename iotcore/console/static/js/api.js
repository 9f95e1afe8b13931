// The public API, with the session: the access token lives in this module's memory only; the
// refresh token is an HttpOnly cookie that only /console/session/ receives.

const SESSION = "/console/session/";
let session = null; // {access_token, user, tenant, role}
let refreshing = null;

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "http_error";
    this.details = error.details || [];
  }
}

async function parse(response) {
  if (response.status === 204) return null;
  const text = await response.text();
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

async function sessionCall(name, body) {
  const headers = { "X-Requested-With": "iotcore-console" };
  if (body) headers["Content-Type"] = "application/json";
  const response = await fetch(SESSION + name, {
    method: "POST",
    headers,
    body: body ? JSON.stringify(body) : undefined,
    credentials: "same-origin",
  });
  const data = await parse(response);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

async function adopt(data) {
  session = { access_token: data.access_token, user: data.user, tenant: data.tenant, role: data.user.role };
  // The role of record is the one the API checks now.
  const me = await api("GET", "/auth/me");
  session.role = me.role;
  session.user = me.user;
  session.tenant = me.tenant;
  return session;
}

export const currentSession = () => session;
export const atLeast = (role) => {
  const rank = { viewer: 0, admin: 1, owner: 2 };
  return session !== null && rank[session.role] >= rank[role];
};

export async function signUp(email, password, tenantName) {
  return adopt(await sessionCall("register", { email, password, tenant_name: tenantName }));
}

export async function logIn(email, password) {
  return adopt(await sessionCall("login", { email, password }));
}

export async function logOut() {
  session = null;
  await sessionCall("logout");
}

// One refresh at a time across this origin's tabs: the cookie rotates on use, and a second
// tab presenting the spent one would revoke the whole session (reuse detection). Inside the
// lock the browser sends whichever cookie is current.
function exclusively(task) {
  if (navigator.locks) return navigator.locks.request("iotcore-console-refresh", task);
  return task();
}

// A fresh access token from the cookie.
export async function refresh() {
  if (!refreshing) {
    refreshing = exclusively(() => sessionCall("refresh"))
      .then((data) => {
        if (session) {
          session.access_token = data.access_token;
          return session;
        }
        return adopt(data);
      })
      .finally(() => {
        refreshing = null;
      });
  }
  return refreshing;
}

export async function restore() {
  try {
    return await refresh();
  } catch {
    session = null;
    return null;
  }
}

function url(path, query) {
  const u = new URL(`/api/v1${path}`, window.location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (value === undefined || value === null || value === "") continue;
    for (const item of Array.isArray(value) ? value : [value]) u.searchParams.append(key, item);
  }
  return u.pathname + u.search;
}

export async function api(method, path, { query, body, retried = false } = {}) {
  const headers = { Accept: "application/json" };
  if (session) headers.Authorization = `Bearer ${session.access_token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url(path, query), {
    method,
    headers,
    body: body !== undefined ? JSON.stringify(body) : undefined,
    credentials: "omit",
  });
  const data = await parse(response);
  if (response.status === 401 && session && !retried) {
    try {
      await refresh();
    } catch {
      session = null;
      window.dispatchEvent(new CustomEvent("iotcore:logged-out"));
      throw new ApiError(response.status, data);
    }
    return api(method, path, { query, body, retried: true });
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// Every page of a list, up to `max` items.
export async function all(path, query = {}, max = 100000) {
  const items = [];
  let cursor = null;
  do {
    const page = await api("GET", path, { query: { ...query, limit: 1000, cursor } });
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < max);
  return items;
}
