// Starts a real hub subprocess (HUB_BINARY, default .build/debug/hub) on a free port for the
// client tests, plus a TCP proxy in front of it that a test can cut to simulate a network drop.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, writeFileSync, mkdirSync, createWriteStream } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const SECRET = "js-client-secret";
export const API_KEY = "js-client-api-key";

export function token(sub, claims = {}) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const input = b64({ alg: "HS256", typ: "JWT" }) + "." + b64({ sub, exp: Math.floor(Date.now() / 1000) + 3600, ...claims });
  return input + "." + createHmac("sha256", SECRET).update(input).digest("base64url");
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, "127.0.0.1", () => { const { port } = server.address(); server.close(() => resolve(port)); });
    server.on("error", reject);
  });
}

export async function startHub(config = {}) {
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), "hub-js-"));
  writeFileSync(path.join(dir, "hub.json"), JSON.stringify(config));
  const binary = process.env.HUB_BINARY ?? path.join(repo, ".build/debug/hub");
  const artifacts = path.join(repo, "test-artifacts");
  mkdirSync(artifacts, { recursive: true });
  const log = createWriteStream(path.join(artifacts, `js-client-hub-${port}.log`));
  const env = { ...process.env, HUB_TOKEN_HMAC_SECRET: SECRET, HUB_API_KEY: API_KEY };
  const child = spawn(binary, ["--port", String(port), "--host", "127.0.0.1", "--data-dir", path.join(dir, "data"),
    "--config", path.join(dir, "hub.json")], { env, cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
  child.stdout.pipe(log); child.stderr.pipe(log);
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 15000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`hub exited with ${child.exitCode} (log in test-artifacts)`);
    try { if ((await fetch(url + "/health")).ok) break; } catch { /* not up yet */ }
    if (Date.now() > deadline) { child.kill("SIGKILL"); throw new Error("hub did not start within 15 s"); }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port, url, wsUrl: `ws://127.0.0.1:${port}/connection/websocket`,
    async api(method, body) {
      const response = await fetch(`${url}/api/${method}`, { method: "POST", headers: { "X-API-Key": API_KEY }, body: JSON.stringify(body) });
      const json = await response.json();
      if (json.error) throw new Error(`${method}: ${JSON.stringify(json.error)}`);
      return json.result;
    },
    stop() {
      return new Promise((resolve) => {
        if (child.exitCode !== null) { resolve(child.exitCode); return; }
        child.once("exit", (code) => resolve(code));
        child.kill("SIGTERM");
      });
    },
  };
}

/** A TCP proxy to the hub; cut() drops every connection through it (the client sees 1006). */
export async function startProxy(targetPort) {
  const sockets = new Set();
  let refusing = false;
  const server = net.createServer((client) => {
    if (refusing) { client.destroy(); return; }
    const upstream = net.connect(targetPort, "127.0.0.1");
    for (const s of [client, upstream]) { sockets.add(s); s.on("close", () => sockets.delete(s)); s.on("error", () => {}); }
    client.pipe(upstream); upstream.pipe(client);
    client.on("close", () => upstream.destroy()); upstream.on("close", () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `ws://127.0.0.1:${server.address().port}/connection/websocket`,
    cut() { for (const s of sockets) s.destroy(); },
    refuse(value) { refusing = value; },
    close() { for (const s of sockets) s.destroy(); return new Promise((r) => server.close(r)); },
  };
}

/** Resolves with the first value `probe` returns that is truthy, polling; rejects after `ms`. */
export async function eventually(probe, ms = 5000, what = "condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
