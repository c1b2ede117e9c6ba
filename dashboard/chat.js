// Agent chat (seed 003) over `/ws/<user_id>?token=…` (docs/protocol.md): the signed-in user's
// own conversation. The hub answers the sending tab directly and relays messages sent from
// other tabs or over REST (role "user") and their replies, so every open dashboard shows the
// whole conversation. Reconnects with backoff, with a fresh token when the old one ran out.
// On load it shows the conversation this tab was in (else the newest) from
// `GET /conversations/mine` and continues it: the hub gives the agent its earlier turns.

import { $, clock, el, setTag, trim } from "./dom.js";

const CONVERSATION_KEY = "hub.chat.conversation";

export function startChat({ session }) {
  const log = $("chat-log"), input = $("chat-input"), send = $("chat-send"), state = $("chat-state");
  let socket = null, attempt = 0, conversation = sessionStorage.getItem(CONVERSATION_KEY) ?? undefined;
  const waiting = []; // "thinking…" bubbles, oldest first, replaced by the replies in order

  const add = (role, content, type = "text", timestamp) => {
    const item = el("li", { class: "msg " + role, "data-role": role });
    if (type === "audio") {
      const audio = el("audio", { controls: "", src: "data:audio/wav;base64," + content });
      item.append(audio);
    } else {
      item.append(content);
    }
    if (role === "user" || role === "assistant") item.append(el("time", { text: clock(timestamp ? new Date(timestamp) : new Date()) }));
    log.append(item);
    trim(log, 200);
    log.scrollTop = log.scrollHeight;
    return item;
  };

  const connect = async () => {
    setTag(state, "connecting");
    let token;
    try {
      token = await session.token();
    } catch {
      setTag(state, "offline");
      setTimeout(connect, Math.min(30000, 1000 * 2 ** attempt++)); // the hub may be down; try again
      return;
    }
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host +
      "/ws/" + encodeURIComponent(session.user) + "?token=" + encodeURIComponent(token);
    const ws = new WebSocket(url);
    socket = ws;
    ws.onopen = () => { attempt = 0; setTag(state, "online"); send.disabled = false; };
    ws.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch { return; }
      if (message.conversation_id && message.type !== "error") {
        conversation = message.conversation_id;
        sessionStorage.setItem(CONVERSATION_KEY, conversation);
      }
      if (message.type === "error") {
        waiting.shift()?.remove();
        add("note bad", message.content ?? "error");
      } else if (message.role === "assistant") {
        const bubble = waiting.shift();
        if (bubble) bubble.remove();
        add("assistant", message.content ?? "", message.type, message.timestamp);
      } else {
        add("user", message.content ?? "", message.type === "audio" ? "text" : message.type, message.timestamp);
      }
    };
    ws.onclose = (event) => {
      if (socket !== ws) return;
      send.disabled = true;
      for (const bubble of waiting.splice(0)) bubble.remove();
      setTag(state, "offline");
      if (event.code === 1008 || event.code === 3005) session.refresh().catch(() => {});
      const delay = Math.min(8000, 300 * 2 ** attempt++) * (0.5 + Math.random() / 2);
      setTimeout(connect, delay);
    };
  };

  // The history is drawn before the socket opens, so relayed messages land after it.
  const restore = async () => {
    let page;
    try {
      page = await session.api("/conversations/mine?limit=20");
    } catch (error) {
      add("note bad", "history unavailable: " + error.message);
      return;
    }
    const list = page?.conversations ?? [];
    const shown = list.find((c) => c.conversation_id === conversation) ?? list[0];
    if (!shown) return;
    conversation = shown.conversation_id;
    sessionStorage.setItem(CONVERSATION_KEY, conversation);
    for (const message of shown.messages ?? []) {
      const role = message.role === "assistant" ? "assistant" : "user";
      add(role, message.content ?? "", message.type === "audio" && role === "assistant" ? "audio" : "text", message.created_at);
    }
  };

  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || !socket || socket.readyState !== WebSocket.OPEN) return;
    const message = { type: "text", content: text };
    if (conversation) message.conversation_id = conversation;
    socket.send(JSON.stringify(message));
    add("user", text);
    waiting.push(add("assistant pending", "thinking…"));
    input.value = "";
  });
  send.disabled = true;
  add("note", "Messages go to the agent workers; replies show here and in every other open tab.");
  restore().finally(connect);
}
