// The JS client against a real hub subprocess: `node --test clients/js/test/` (scripts/test.sh
// runs it). Every wait is bounded.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { HubClient, HubError } from "../hub-client.js";
import { API_KEY, eventually, startHub, startProxy, token } from "./hub.js";

let hub;
const clients = [];

before(async () => {
  hub = await startHub({
    namespaces: [{ name: "room", presence: true, join_leave: true, allow_publish_for_subscriber: true, history_size: 100, history_ttl: 300 }],
  });
});

after(async () => {
  for (const client of clients) client.disconnect();
  assert.equal(await hub.stop(), 0, "hub exits cleanly");
});

function client(user, url = hub.wsUrl, options = {}) {
  const c = new HubClient(url, { token: token(user), minReconnectDelay: 50, maxReconnectDelay: 200, timeout: 5000, ...options });
  clients.push(c);
  return c;
}

function subscribed(c, channel, options = {}) {
  const seen = [], contexts = [], errors = [];
  return new Promise((resolve, reject) => {
    const sub = c.subscribe(channel, {
      onPublication: (pub) => seen.push(pub),
      onSubscribed: (ctx) => { contexts.push(ctx); resolve({ sub, seen, contexts, errors }); },
      onError: (error) => { errors.push(error); reject(error); },
    }, options);
  });
}

test("a subscriber gets what a backend publishes through the server API, in order", async () => {
  const alice = client("alice");
  await alice.connect();
  assert.equal(alice.state, "connected");
  const { seen } = await subscribed(alice, "news");
  for (const n of [1, 2, 3]) await hub.api("publish", { channel: "news", data: { n } });
  await eventually(() => seen.length === 3, 5000, "three publications");
  assert.deepEqual(seen.map((p) => p.data.n), [1, 2, 3]);
  assert.ok(seen[1].offset === seen[0].offset + 1 && seen[2].offset === seen[1].offset + 1, "offsets follow each other");
});

test("large publications arrive whole (frames over 64 KiB)", async () => {
  const alice = client("alice");
  await alice.connect();
  const { seen } = await subscribed(alice, "big");
  const text = "x".repeat(200_000);
  await hub.api("publish", { channel: "big", data: { text } });
  await eventually(() => seen.length === 1, 5000, "the large publication");
  assert.equal(seen[0].data.text.length, 200_000);
});

test("publish reaches other subscribers with the publisher's user; join, presence and history agree", async () => {
  const alice = client("alice"), bob = client("bob");
  await Promise.all([alice.connect(), bob.connect()]);
  const joins = [];
  const { seen } = await new Promise((resolve, reject) => {
    const seen = [];
    bob.subscribe("room:lobby", {
      onPublication: (pub) => seen.push(pub), onJoin: (info) => joins.push(info.user),
      onSubscribed: () => resolve({ seen }), onError: reject,
    });
  });
  await subscribed(alice, "room:lobby");
  await eventually(() => joins.includes("alice"), 5000, "alice's join");
  await alice.publish("room:lobby", { text: "hello bob" });
  await eventually(() => seen.length === 1, 5000, "bob gets alice's message");
  assert.equal(seen[0].data.text, "hello bob");
  assert.equal(seen[0].info.user, "alice");

  const presence = await bob.presence("room:lobby");
  assert.deepEqual(Object.values(presence).map((p) => p.user).sort(), ["alice", "bob"]);
  assert.deepEqual(await bob.presenceStats("room:lobby"), { numClients: 2, numUsers: 2 });
  const history = await bob.history("room:lobby", { limit: 10 });
  assert.deepEqual(history.publications.map((p) => p.data.text), ["hello bob"]);
  assert.ok(history.epoch.length > 0);
});

test("rpc answers the hub's methods and an unknown one fails with 104", async () => {
  const alice = client("alice");
  await alice.connect();
  const info = await alice.rpc("info");
  assert.ok(Array.isArray(info.nodes) && info.nodes.length === 1, JSON.stringify(info));
  await assert.rejects(alice.rpc("no.such.method"), (e) => e instanceof HubError && e.code === 104);
});

test("permission errors come back as HubError and publishing where it is not allowed fails", async () => {
  const alice = client("alice");
  await alice.connect();
  await assert.rejects(subscribed(alice, "room:private#bob"), (e) => e.code === 103);
  await assert.rejects(alice.publish("news", { x: 1 }), (e) => e.code === 103);
});

test("a bad token fails connect() with 3500 and no reconnect", async () => {
  const bad = new HubClient(hub.wsUrl, { token: token("mallory").slice(0, -4) + "AAAA", minReconnectDelay: 50 });
  clients.push(bad);
  const states = [];
  bad.on("state", (s) => states.push(s));
  await assert.rejects(bad.connect(), (e) => e.code === 3500);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(bad.state, "disconnected");
  assert.deepEqual(states, ["connecting", "disconnected"], "it did not try again");
});

test("after a network drop it reconnects with backoff and recovers exactly the publications it missed", async () => {
  const proxy = await startProxy(hub.port);
  try {
    const alice = client("alice", proxy.url);
    const events = [];
    alice.on("reconnecting", (r) => events.push("reconnecting:" + r.code));
    alice.on("connected", () => events.push("connected"));
    await alice.connect();
    const { seen, contexts } = await subscribed(alice, "room:feed");
    await hub.api("publish", { channel: "room:feed", data: { n: 1 } });
    await eventually(() => seen.length === 1, 5000, "the first publication");

    proxy.refuse(true);
    proxy.cut();
    await eventually(() => alice.state === "connecting", 5000, "the client noticing the drop");
    for (const n of [2, 3, 4]) await hub.api("publish", { channel: "room:feed", data: { n } });
    await new Promise((r) => setTimeout(r, 300)); // a few refused attempts
    proxy.refuse(false);

    await eventually(() => contexts.length === 2, 10000, "the resubscribe");
    assert.equal(contexts[1].recovered, true, JSON.stringify(contexts[1]));
    assert.equal(contexts[1].wasRecovering, true);
    await hub.api("publish", { channel: "room:feed", data: { n: 5 } });
    await eventually(() => seen.length === 5, 5000, "the live publication after recovery");
    assert.deepEqual(seen.map((p) => p.data.n), [1, 2, 3, 4, 5], "nothing missed, nothing twice");
    assert.ok(events.filter((e) => e.startsWith("reconnecting")).length >= 2, "refused attempts were retried: " + events);
    assert.equal(events.at(-1), "connected");
  } finally {
    await proxy.close();
  }
});

test("a subscription started from a snapshot position gets every change since, once", async () => {
  const alice = client("alice");
  await alice.connect();
  await hub.api("publish", { channel: "room:snap", data: { n: 1 } });
  const position = await hub.api("history", { channel: "room:snap", limit: 0 });
  await hub.api("publish", { channel: "room:snap", data: { n: 2 } });
  await hub.api("publish", { channel: "room:snap", data: { n: 3 } });
  const { seen, contexts } = await subscribed(alice, "room:snap", { since: { offset: position.offset, epoch: position.epoch } });
  assert.equal(contexts[0].recovered, true);
  await hub.api("publish", { channel: "room:snap", data: { n: 4 } });
  await eventually(() => seen.length === 3, 5000, "changes since the snapshot");
  assert.deepEqual(seen.map((p) => p.data.n), [2, 3, 4]);
});

test("an expired token is replaced through getToken", async () => {
  let asked = 0;
  const expired = token("carol", { exp: Math.floor(Date.now() / 1000) - 10 });
  const carol = client("carol", hub.wsUrl, { token: expired, getToken: async () => { asked += 1; return token("carol"); } });
  await carol.connect();
  assert.equal(asked, 1);
  assert.equal(carol.state, "connected");
  assert.equal(typeof API_KEY, "string");
});
