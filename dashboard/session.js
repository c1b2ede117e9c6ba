// Signing in: a hub account's user name and password at POST /auth/login give an access token
// (1 hour) and a refresh token (30 days). The access token is also the connection token for
// /connection/websocket and /ws/<user_id> and the bearer token of the meetings API, so one
// sign-in opens everything; POST /auth/refresh replaces it before it runs out. The tokens are
// kept in localStorage so a wall screen survives a reload; "Sign out" revokes the refresh token.

const KEY = "hub.session";

function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - part.length % 4) % 4)));
  } catch {
    return {};
  }
}

async function post(path, body) {
  const response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const json = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof json.detail === "string" ? json.detail : json.error?.message ?? json.message ?? `HTTP ${response.status}`;
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return json;
}

export class Session {
  constructor(stored) {
    this.access = stored.access;
    this.refreshToken = stored.refresh;
    const c = claims(this.access);
    this.user = c.sub ?? "";
    this.role = c.role ?? "";
    this.expires = (c.exp ?? 0) * 1000;
  }

  static restore() {
    try {
      const stored = JSON.parse(localStorage.getItem(KEY) ?? "null");
      return stored?.access ? new Session(stored) : null;
    } catch {
      return null;
    }
  }

  static async login(username, password) {
    const tokens = await post("/auth/login", { username, password });
    const session = new Session({ access: tokens.access_token, refresh: tokens.refresh_token });
    session.save();
    return session;
  }

  save() { localStorage.setItem(KEY, JSON.stringify({ access: this.access, refresh: this.refreshToken })); }

  /** A valid access token, refreshed when it has less than a minute left. */
  async token() {
    if (Date.now() < this.expires - 60_000) return this.access;
    return this.refresh();
  }

  async refresh() {
    if (!this.refreshToken) throw new Error("session expired");
    const tokens = await post("/auth/refresh", { refresh_token: this.refreshToken });
    this.access = tokens.access_token;
    this.expires = (claims(this.access).exp ?? 0) * 1000;
    this.save();
    return this.access;
  }

  async logout() {
    localStorage.removeItem(KEY);
    if (this.refreshToken) await post("/auth/logout", { refresh_token: this.refreshToken }).catch(() => {});
  }

  /** fetch() with the access token as bearer; one refresh and retry on 401. */
  async api(path, options = {}) {
    const attempt = async (token) => fetch(path, { ...options, headers: { ...(options.headers ?? {}), Authorization: "Bearer " + token } });
    let response = await attempt(await this.token());
    if (response.status === 401 && this.refreshToken) response = await attempt(await this.refresh());
    const json = response.headers.get("content-type")?.includes("json") ? await response.json().catch(() => null) : null;
    if (!response.ok) throw new Error(json?.error?.message ?? json?.detail ?? `HTTP ${response.status}`);
    return json;
  }
}
