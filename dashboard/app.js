// The dashboard: signs in, opens one protocol connection (clients/js, served at /ui/lib/) and
// starts the four panels on it. The connection pill says what a wall screen needs to know:
// live, reconnecting, or recovered (and how many missed publications were filled in).

import { HubClient } from "/ui/lib/hub-client.js";
import { $ } from "./dom.js";
import { Session } from "./session.js";
import { startGateways } from "./gateways.js";
import { startCache } from "./cache.js";
import { startChat } from "./chat.js";
import { startMeetings } from "./meetings.js";
import { startInspector } from "./inspector.js";

const pill = $("conn");
function showConnection(state, text) {
  pill.dataset.state = state;
  document.body.dataset.conn = state; // panels dim while what they show may be stale
  $("conn-text").textContent = text;
}

function showLogin(message = "") {
  $("board").hidden = true;
  $("signout").hidden = true;
  $("who").hidden = true;
  $("login-view").hidden = false;
  $("login-error").textContent = message;
  showConnection("offline", "signed out");
  $("username").focus();
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-button").disabled = true;
  $("login-error").textContent = "";
  try {
    const session = await Session.login($("username").value.trim(), $("password").value);
    $("password").value = "";
    start(session);
  } catch (error) {
    $("login-error").textContent = error.status === 401 ? "Wrong user name or password." : error.message;
  } finally {
    $("login-button").disabled = false;
  }
});

function start(session) {
  $("login-view").hidden = true;
  $("board").hidden = false;
  $("who").textContent = session.user;
  $("who").hidden = false;
  $("signout").hidden = false;

  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/connection/websocket";
  const client = new HubClient(url, {
    token: session.access, name: "dashboard",
    getToken: () => session.refresh(),
    minReconnectDelay: 300, maxReconnectDelay: 8000,
  });

  // After a reconnect every subscription reports whether it recovered; the pill sums them up.
  let everConnected = false, resync = null, recoveredTimer = null;
  const subscriptionReport = (ctx) => {
    if (!resync || !ctx.wasRecovering) return;
    resync.filled += ctx.publications;
    if (!ctx.recovered) resync.lost += 1;
    clearTimeout(resync.timer);
    resync.timer = setTimeout(() => {
      const { filled, lost } = resync;
      resync = null;
      showConnection("recovered", lost ? "resynced" : `recovered · ${filled} missed`);
      pill.title = lost ? "Some history was gone; the panels reloaded their state." : `${filled} publications missed while away were filled in.`;
      clearTimeout(recoveredTimer);
      recoveredTimer = setTimeout(() => { if (client.state === "connected") showConnection("connected", "live"); }, 10_000);
    }, 400);
  };
  client.on("state", (state) => { if (state === "connecting" && !everConnected) showConnection("connecting", "connecting"); });
  client.on("disconnected", (d) => {
    if (d.reconnect) showConnection("reconnecting", "reconnecting");
    else if (d.code === 3500 || d.code === 3005) showLogin("Your session ended; sign in again.");
    else showConnection("offline", "offline");
  });
  client.on("reconnecting", (r) => { pill.title = `attempt ${r.attempt}, next in ${(r.delay / 1000).toFixed(1)} s (${r.reason})`; });
  client.on("connected", () => {
    if (everConnected) {
      resync = { filled: 0, lost: 0, timer: null };
      showConnection("reconnecting", "recovering");
      subscriptionReport({ wasRecovering: true, recovered: true, publications: 0 }); // settles even with no subscriptions
    } else {
      showConnection("connected", "live");
    }
    everConnected = true;
  });

  const context = { client, session, subscribed: subscriptionReport };
  startGateways(context);
  startCache(context);
  startMeetings(context);
  startChat(context);
  startInspector(context);
  client.connect().catch((error) => showConnection("offline", "offline: " + error.message));

  $("signout").onclick = async () => {
    client.disconnect();
    await session.logout();
    location.reload();
  };
}

const session = Session.restore();
if (session) {
  session.token().then(() => start(session), () => showLogin("Your session ended; sign in again."));
} else {
  showLogin();
}
