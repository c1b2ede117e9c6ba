// A dependency-free client for the hub's protocol (Centrifugo's JSON client protocol v2, see
// docs/protocol.md), for browsers and Node 18+. Connect with a token, subscribe with recovery,
// publish, rpc, presence, history; reconnects with backoff and resubscribes from the last
// position it saw, so a subscriber gets the publications it missed (or learns it could not).

const DEFAULTS = {
  name: "hub-client-js",
  minReconnectDelay: 250, // ms; doubles per failed attempt, with jitter
  maxReconnectDelay: 10000,
  timeout: 10000, // ms to wait for a command's reply
  maxServerPingDelay: 10000, // ms past the announced ping interval before the link counts as dead
};

// Close codes after which reconnecting cannot help (docs/protocol.md, "Disconnect codes").
const TERMINAL_CLOSE = new Set([1007, 1009, 3500, 3502, 3503]);

export class HubError extends Error {
  constructor(code, message, temporary = false) {
    super(message);
    this.name = "HubError";
    this.code = code;
    this.temporary = temporary;
  }
}

// A minimal event emitter (EventTarget's CustomEvent differs between Node versions).
class Emitter {
  #handlers = new Map();
  on(event, handler) {
    if (!this.#handlers.has(event)) this.#handlers.set(event, new Set());
    this.#handlers.get(event).add(handler);
    return () => this.#handlers.get(event)?.delete(handler);
  }
  emit(event, value) {
    for (const handler of [...(this.#handlers.get(event) ?? [])]) {
      try { handler(value); } catch (error) { queueMicrotask(() => { throw error; }); }
    }
  }
}

async function defaultWebSocket() {
  if (typeof globalThis.WebSocket === "function") return globalThis.WebSocket;
  return (await import("./node-websocket.js")).NodeWebSocket;
}

/**
 * One connection to the hub. States: "disconnected" → "connecting" → "connected"; after a
 * lost connection "connecting" again (the event `reconnecting` says why), and subscriptions
 * come back by themselves.
 *
 * Events (client.on(name, fn)): state, connected ({client, node, ping}), disconnected
 * ({code, reason, reconnect}), reconnecting ({attempt, delay, code, reason}), error (HubError),
 * publication ({channel, ...pub}) for server-side subscriptions.
 */
export class HubClient extends Emitter {
  #url; #options; #socket = null; #nextId = 1; #pending = new Map(); #subs = new Map();
  #state = "disconnected"; #attempt = 0; #reconnectTimer = null; #pingTimer = null;
  #pingInterval = 0; #token; #wanted = false; #queue = [];

  /**
   * @param {string} url e.g. "ws://localhost:8000/connection/websocket"
   * @param {object} options token, getToken (async () => token, called when the token expired
   *   and before each reconnect), name, data, minReconnectDelay, maxReconnectDelay, timeout,
   *   WebSocket (a constructor; default: the global one, or the bundled Node implementation)
   */
  constructor(url, options = {}) {
    super();
    this.#url = url;
    this.#options = { ...DEFAULTS, ...options };
    this.#token = options.token ?? "";
  }

  get state() { return this.#state; }
  /** The client id the hub gave this connection (changes on every reconnect). */
  clientId = null;

  /** Connects (and keeps reconnecting until disconnect()). Resolves once connected. */
  connect() {
    this.#wanted = true;
    if (this.#state === "connected") return Promise.resolve();
    const ready = new Promise((resolve, reject) => {
      const offOk = this.on("connected", () => { offOk(); offFail(); resolve(); });
      const offFail = this.on("disconnected", (d) => {
        if (!d.reconnect) { offOk(); offFail(); reject(new HubError(d.code, d.reason)); }
      });
    });
    if (this.#state === "disconnected") this.#open();
    return ready;
  }

  /** Closes the connection for good (no reconnect); subscriptions are kept for a later connect(). */
  disconnect() {
    this.#wanted = false;
    clearTimeout(this.#reconnectTimer);
    this.#closeSocket(1000, "client disconnect");
    this.#lost(1000, "client disconnect", false);
  }

  /**
   * A subscription that stays across reconnects. handlers: onPublication(pub), onSubscribed(ctx:
   * {recovered, wasRecovering, offset, epoch, publications}), onUnsubscribed({code, reason}),
   * onError(HubError), onJoin(info), onLeave(info). options: recover (default true), since
   * ({offset, epoch}: start from this position, e.g. a snapshot's), token (subscription token).
   */
  subscribe(channel, handlers = {}, options = {}) {
    if (this.#subs.has(channel)) throw new HubError(105, "already subscribed: " + channel);
    const sub = new Subscription(this, channel, handlers, options);
    this.#subs.set(channel, sub);
    if (this.#state === "connected") this.#sendSubscribe(sub);
    return sub;
  }

  /** The subscription to a channel, if any. */
  subscription(channel) { return this.#subs.get(channel); }

  unsubscribe(channel) {
    const sub = this.#subs.get(channel);
    if (!sub) return Promise.resolve();
    this.#subs.delete(channel);
    sub.active = false;
    return this.#state === "connected" ? this.#call("unsubscribe", { channel }).then(() => {}) : Promise.resolve();
  }

  publish(channel, data) { return this.#call("publish", { channel, data }); }
  rpc(method, data = {}) { return this.#call("rpc", { method, data }).then((r) => r.data); }
  presence(channel) { return this.#call("presence", { channel }).then((r) => r.presence ?? {}); }
  presenceStats(channel) {
    return this.#call("presence_stats", { channel }).then((r) => ({ numClients: r.num_clients ?? 0, numUsers: r.num_users ?? 0 }));
  }
  /** options: limit (negative: everything history holds), since ({offset, epoch}), reverse */
  history(channel, options = {}) {
    return this.#call("history", { channel, ...options }).then((r) => ({
      publications: r.publications ?? [], offset: r.offset ?? 0, epoch: r.epoch ?? "",
    }));
  }

  // ---- internals

  #setState(state) {
    if (this.#state === state) return;
    this.#state = state;
    this.emit("state", state);
  }

  async #open() {
    this.#setState("connecting");
    let WebSocketImpl;
    try {
      WebSocketImpl = this.#options.WebSocket ?? (await defaultWebSocket());
    } catch (error) {
      this.#lost(0, "no WebSocket implementation: " + error.message, false);
      return;
    }
    if (!this.#wanted) return;
    let socket;
    try {
      socket = new WebSocketImpl(this.#url);
    } catch (error) {
      this.#lost(0, "cannot open " + this.#url + ": " + error.message, false);
      return;
    }
    this.#socket = socket;
    socket.onopen = () => {
      if (socket !== this.#socket) return;
      const connect = { token: this.#token, name: this.#options.name };
      if (this.#options.data !== undefined) connect.data = this.#options.data;
      this.#call("connect", connect, true).then((reply) => {
        this.clientId = reply.client;
        this.#attempt = 0;
        this.#pingInterval = (reply.ping ?? 0) * 1000;
        this.#armPingWatchdog();
        this.#setState("connected");
        this.emit("connected", { client: reply.client, node: reply.node, ping: reply.ping ?? 0 });
        for (const command of this.#queue.splice(0)) this.#write(command);
        for (const sub of this.#subs.values()) this.#sendSubscribe(sub);
      }, async (error) => {
        if (socket !== this.#socket) return;
        if (error.code === 109 && this.#options.getToken) {
          // Expired token: fetch a fresh one and try again straight away.
          try { this.#token = await this.#options.getToken(); } catch (e) { this.emit("error", new HubError(0, "getToken failed: " + e.message)); }
          this.#closeSocket(3000, "token refresh");
          this.#lost(109, "token expired", true);
          return;
        }
        this.emit("error", error);
        this.#closeSocket(3000, "connect refused");
        this.#lost(error.code, error.message, error.temporary);
      });
    };
    socket.onmessage = (event) => { if (socket === this.#socket) this.#receive(event.data); };
    socket.onerror = () => {}; // onclose follows with the code
    socket.onclose = (event) => {
      if (socket !== this.#socket) return;
      this.#socket = null;
      const code = event.code ?? 1006;
      this.#lost(code, event.reason || "connection closed", !TERMINAL_CLOSE.has(code));
    };
  }

  #closeSocket(code, reason) {
    const socket = this.#socket;
    this.#socket = null;
    if (socket) { try { socket.close(code, reason); } catch { /* already closing */ } }
  }

  #lost(code, reason, reconnect) {
    clearTimeout(this.#pingTimer);
    for (const [, waiter] of this.#pending) waiter.reject(new HubError(code, "connection lost: " + reason, true));
    this.#pending.clear();
    for (const sub of this.#subs.values()) sub.subscribed = false;
    const again = reconnect && this.#wanted;
    const wasOpen = this.#state !== "disconnected";
    this.#queue.length = 0; // their promises were just rejected
    if (!again) {
      this.#setState("disconnected");
      if (wasOpen) this.emit("disconnected", { code, reason, reconnect: false });
      return;
    }
    this.emit("disconnected", { code, reason, reconnect: true });
    this.#setState("connecting");
    const base = Math.min(this.#options.maxReconnectDelay, this.#options.minReconnectDelay * 2 ** this.#attempt);
    const delay = Math.round(base / 2 + Math.random() * base / 2);
    this.#attempt += 1;
    this.emit("reconnecting", { attempt: this.#attempt, delay, code, reason });
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = setTimeout(async () => {
      if (!this.#wanted) return;
      if (this.#options.getToken && code === 3005) {
        try { this.#token = await this.#options.getToken(); } catch { /* retried on the next attempt */ }
      }
      this.#open();
    }, delay);
  }

  // The hub pings every `ping` seconds; silence past that means the link is dead even if the
  // socket has not noticed (a laptop waking up, a proxy dropping the flow).
  #armPingWatchdog() {
    clearTimeout(this.#pingTimer);
    if (!this.#pingInterval) return;
    this.#pingTimer = setTimeout(() => {
      this.#closeSocket(3012, "no ping");
      this.#lost(3012, "no ping from the hub", true);
    }, this.#pingInterval + this.#options.maxServerPingDelay);
  }

  #write(command) {
    try { this.#socket.send(JSON.stringify(command)); return true; } catch { return false; }
  }

  #call(method, params, beforeConnected = false) {
    return new Promise((resolve, reject) => {
      const id = this.#nextId++;
      const command = { id, [method]: params };
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        // Not sent yet (still waiting for a connection): it never will be, the caller gave up.
        const queued = this.#queue.indexOf(command);
        if (queued >= 0) this.#queue.splice(queued, 1);
        reject(new HubError(0, `${method}: no reply within ${this.#options.timeout} ms`, true));
      }, this.#options.timeout);
      this.#pending.set(id, {
        method,
        resolve: (value) => { clearTimeout(timer); resolve(value); },
        reject: (error) => { clearTimeout(timer); reject(error); },
      });
      if (beforeConnected || this.#state === "connected") {
        if (!this.#socket || !this.#write(command)) this.#queue.push(command);
      } else if (this.#wanted) {
        this.#queue.push(command); // sent once connected
      } else {
        this.#pending.get(id).reject(new HubError(0, "not connected"));
        this.#pending.delete(id);
      }
    });
  }

  #receive(text) {
    for (const line of String(text).split("\n")) {
      if (!line.trim()) continue;
      let message;
      try { message = JSON.parse(line); } catch { continue; }
      if (Object.keys(message).length === 0) { // server ping
        this.#write({});
        this.#armPingWatchdog();
        continue;
      }
      if (message.id !== undefined) {
        const waiter = this.#pending.get(message.id);
        if (!waiter) continue;
        this.#pending.delete(message.id);
        if (message.error) {
          const { code, message: text, temporary } = message.error;
          waiter.reject(new HubError(code, text, Boolean(temporary)));
        } else {
          waiter.resolve(message[waiter.method] ?? {});
        }
      } else if (message.push) {
        this.#push(message.push);
      } else if (message.error) {
        this.emit("error", new HubError(message.error.code, message.error.message));
      }
    }
  }

  #push(push) {
    const sub = this.#subs.get(push.channel);
    if (push.pub) {
      if (sub) sub._publication(push.pub);
      else this.emit("publication", { channel: push.channel, ...push.pub });
    } else if (push.join) {
      sub?.handlers.onJoin?.(push.join.info);
    } else if (push.leave) {
      sub?.handlers.onLeave?.(push.leave.info);
    } else if (push.unsubscribe && sub) {
      const { code = 0, reason = "" } = push.unsubscribe;
      sub.subscribed = false;
      // 2500–2999: the hub lost track of the stream; resubscribing recovers (protocol.md).
      if (code >= 2500 && code < 3000) {
        if (this.#state === "connected") this.#sendSubscribe(sub);
      } else {
        this.#subs.delete(push.channel);
        sub.active = false;
        sub.handlers.onUnsubscribed?.({ code, reason });
      }
    }
  }

  #sendSubscribe(sub) {
    const params = { channel: sub.channel };
    if (sub.options.token) params.token = sub.options.token;
    if (sub.options.recover !== false && sub.epoch !== null) {
      params.recover = true;
      params.offset = sub.offset;
      params.epoch = sub.epoch;
    }
    const recovering = Boolean(params.recover);
    this.#call("subscribe", params).then((reply) => {
      if (!sub.active) return;
      sub.subscribed = true;
      const publications = reply.publications ?? [];
      const recovered = recovering ? Boolean(reply.recovered) : false;
      if (reply.epoch !== undefined && (reply.recoverable || reply.epoch)) {
        if (!recovered) sub.offset = reply.offset ?? 0;
        sub.epoch = reply.epoch;
      }
      for (const pub of publications) sub._publication(pub);
      if (!recovered) sub.offset = Math.max(sub.offset, reply.offset ?? 0);
      sub.handlers.onSubscribed?.({
        recovered, wasRecovering: recovering, offset: sub.offset, epoch: sub.epoch, publications: publications.length,
      });
    }, (error) => {
      if (!sub.active || error.temporary && error.message.startsWith("connection lost")) return;
      sub.handlers.onError?.(error);
      if (error.code === 100 || error.temporary) {
        // Temporary trouble on the hub (e.g. its Redis is down): try again shortly.
        setTimeout(() => { if (sub.active && !sub.subscribed && this.#state === "connected") this.#sendSubscribe(sub); }, 1000);
      } else {
        this.#subs.delete(sub.channel);
        sub.active = false;
      }
    });
  }
}

/** A channel subscription; `offset`/`epoch` are the last position seen (what recovery resumes from). */
export class Subscription {
  constructor(client, channel, handlers, options) {
    this.client = client;
    this.channel = channel;
    this.handlers = handlers;
    this.options = options;
    this.active = true;
    this.subscribed = false;
    this.offset = options.since?.offset ?? 0;
    this.epoch = options.since?.epoch ?? null;
  }

  _publication(pub) {
    if (pub.offset) {
      if (pub.offset <= this.offset) return; // already delivered (recovery overlaps a snapshot)
      this.offset = pub.offset;
    }
    this.handlers.onPublication?.(pub);
  }

  history(options = {}) { return this.client.history(this.channel, options); }
  presence() { return this.client.presence(this.channel); }
  publish(data) { return this.client.publish(this.channel, data); }
  unsubscribe() { return this.client.unsubscribe(this.channel); }
}
