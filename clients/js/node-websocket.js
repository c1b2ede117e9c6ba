// A minimal RFC 6455 WebSocket client for Node versions without a global WebSocket (Node 18,
// Node 20 without --experimental-websocket), with the browser's callback interface
// (onopen, onmessage, onclose, onerror, send, close). Text and binary messages, fragmentation,
// ping/pong and the closing handshake; no extensions. Only hub-client.js loads it, and only
// under Node.

import { createHash, randomBytes } from "node:crypto";
import net from "node:net";
import tls from "node:tls";

const MAX_MESSAGE = 64 * 1024 * 1024;

export class NodeWebSocket {
  static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;

  constructor(url) {
    const target = new URL(url);
    const secure = target.protocol === "wss:";
    if (!secure && target.protocol !== "ws:") throw new SyntaxError("not a ws:// or wss:// URL: " + url);
    this.url = url;
    this.readyState = NodeWebSocket.CONNECTING;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this._buffer = Buffer.alloc(0);
    this._fragments = [];
    this._fragmentType = 0;
    this._closeSent = false;
    this._closed = false;
    const key = randomBytes(16).toString("base64");
    this._accept = createHash("sha1").update(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
    const port = Number(target.port) || (secure ? 443 : 80);
    const options = { host: target.hostname.replace(/^\[|\]$/g, ""), port, servername: secure ? target.hostname : undefined };
    this._socket = secure ? tls.connect(options) : net.connect(options);
    this._socket.setNoDelay(true);
    this._socket.once(secure ? "secureConnect" : "connect", () => {
      this._socket.write(
        `GET ${target.pathname}${target.search} HTTP/1.1\r\nHost: ${target.host}\r\nUpgrade: websocket\r\n` +
        `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    });
    this._socket.on("data", (chunk) => this._data(chunk));
    this._socket.on("error", (error) => { this._fire("onerror", { type: "error", error }); this._finish(1006, error.message); });
    this._socket.on("close", () => this._finish(1006, "connection closed"));
  }

  send(data) {
    if (this.readyState !== NodeWebSocket.OPEN) throw new Error("WebSocket is not open");
    const text = typeof data === "string";
    this._frame(text ? 0x1 : 0x2, text ? Buffer.from(data, "utf8") : Buffer.from(data));
  }

  close(code = 1000, reason = "") {
    if (this.readyState === NodeWebSocket.CONNECTING) { this._socket.destroy(); this._finish(1006, "closed before open"); return; }
    if (this.readyState !== NodeWebSocket.OPEN) return;
    this.readyState = NodeWebSocket.CLOSING;
    this._sendClose(code, reason);
    // A peer that never answers the close does not keep us waiting.
    setTimeout(() => this._socket.destroy(), 2000).unref();
  }

  _fire(name, event) { try { this[name]?.(event); } catch (error) { queueMicrotask(() => { throw error; }); } }

  _finish(code, reason) {
    if (this._closed) return;
    this._closed = true;
    this.readyState = NodeWebSocket.CLOSED;
    this._socket.destroy();
    this._fire("onclose", { type: "close", code, reason, wasClean: code !== 1006 });
  }

  _sendClose(code, reason) {
    if (this._closeSent) return;
    this._closeSent = true;
    const body = Buffer.alloc(2 + Buffer.byteLength(reason));
    body.writeUInt16BE(code, 0);
    body.write(reason, 2);
    this._frame(0x8, body);
  }

  _frame(opcode, payload) {
    const mask = randomBytes(4);
    const length = payload.length;
    const header = length < 126 ? Buffer.alloc(2) : length < 65536 ? Buffer.alloc(4) : Buffer.alloc(10);
    header[0] = 0x80 | opcode;
    if (length < 126) header[1] = 0x80 | length;
    else if (length < 65536) { header[1] = 0x80 | 126; header.writeUInt16BE(length, 2); }
    else { header[1] = 0x80 | 127; header.writeBigUInt64BE(BigInt(length), 2); }
    const masked = Buffer.alloc(length);
    for (let i = 0; i < length; i++) masked[i] = payload[i] ^ mask[i & 3];
    this._socket.write(Buffer.concat([header, mask, masked]));
  }

  _data(chunk) {
    this._buffer = Buffer.concat([this._buffer, chunk]);
    if (this.readyState === NodeWebSocket.CONNECTING) {
      const end = this._buffer.indexOf("\r\n\r\n");
      if (end < 0) { if (this._buffer.length > 16384) this._finish(1002, "handshake too large"); return; }
      const head = this._buffer.subarray(0, end).toString("latin1").split("\r\n");
      this._buffer = this._buffer.subarray(end + 4);
      const accept = head.find((line) => /^sec-websocket-accept:/i.test(line))?.split(":")[1]?.trim();
      if (!/^HTTP\/1\.1 101/.test(head[0]) || accept !== this._accept) {
        this._fire("onerror", { type: "error", error: new Error("handshake refused: " + head[0]) });
        this._finish(1006, "handshake refused: " + head[0]);
        return;
      }
      this.readyState = NodeWebSocket.OPEN;
      this._fire("onopen", { type: "open" });
    }
    while (this._buffer.length >= 2 && !this._closed) {
      const first = this._buffer[0], second = this._buffer[1];
      let length = second & 0x7f, offset = 2;
      if (length === 126) { if (this._buffer.length < 4) return; length = this._buffer.readUInt16BE(2); offset = 4; }
      else if (length === 127) { if (this._buffer.length < 10) return; length = Number(this._buffer.readBigUInt64BE(2)); offset = 10; }
      if (length > MAX_MESSAGE) { this._sendClose(1009, "message too big"); this._finish(1009, "message too big"); return; }
      if (second & 0x80) offset += 4; // servers do not mask, but tolerate it
      if (this._buffer.length < offset + length) return;
      let payload = this._buffer.subarray(offset, offset + length);
      if (second & 0x80) {
        const mask = this._buffer.subarray(offset - 4, offset);
        payload = Buffer.from(payload.map((b, i) => b ^ mask[i & 3]));
      }
      this._buffer = this._buffer.subarray(offset + length);
      this._frameIn(first & 0x80, first & 0x0f, payload);
    }
  }

  _frameIn(fin, opcode, payload) {
    if (opcode === 0x9) { this._frame(0xa, payload); return; }
    if (opcode === 0xa) return;
    if (opcode === 0x8) {
      const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
      const reason = payload.length > 2 ? payload.subarray(2).toString("utf8") : "";
      this.readyState = NodeWebSocket.CLOSING;
      this._sendClose(code === 1005 ? 1000 : code, "");
      this._socket.end();
      this._finish(code, reason);
      return;
    }
    if (opcode === 0x1 || opcode === 0x2) { this._fragments = [payload]; this._fragmentType = opcode; }
    else if (opcode === 0x0) this._fragments.push(payload);
    if (!fin) return;
    const message = Buffer.concat(this._fragments);
    this._fragments = [];
    this._fire("onmessage", { type: "message", data: this._fragmentType === 0x1 ? message.toString("utf8") : message });
  }
}
