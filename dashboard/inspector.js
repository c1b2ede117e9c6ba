// Channel inspector (admins only): channels with their subscriber counts, the chosen channel's
// presence and last publications, and connections by user with a disconnect button. Fed by the
// server API through /admin/inspector/* (the admin JWT; the browser never holds the API key),
// polled every two seconds.

import { $, el } from "./dom.js";

const POLL_MS = 2000;

export function startInspector({ session }) {
  if (session.role !== "admin") return; // the routes answer 403 to anyone else
  $("inspector").hidden = false;
  const call = (method, body = {}) => session.api(`/admin/inspector/${method}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  }).then((answer) => {
    if (answer?.error) throw new Error(answer.error.message);
    return answer.result;
  });
  let chosen = null;

  async function refresh() {
    try {
      const { channels } = await call("channels", { pattern: $("insp-pattern").value.trim() });
      const rows = Object.entries(channels).map(([name, { num_clients }]) => {
        const row = el("tr", { "data-channel": name, class: name === chosen ? "chosen" : "" },
          el("td", { text: name }), el("td", { class: "num", text: String(num_clients) }));
        row.onclick = () => { chosen = name; refresh(); };
        return row;
      });
      $("insp-channels").replaceChildren(...rows);
      $("insp-empty").hidden = rows.length > 0;
      if (chosen) await showChannel(chosen);
      await showConnections();
      $("insp-error").textContent = "";
    } catch (error) {
      $("insp-error").textContent = error.message;
    }
  }

  async function showChannel(channel) {
    $("insp-channel").textContent = channel;
    const presence = await call("presence", { channel }).catch((error) => ({ failed: error.message }));
    $("insp-presence").replaceChildren(...(presence.failed ? [el("li", { text: presence.failed })]
      : Object.values(presence.presence).map((info) => el("li", { text: `${info.user} · ${info.client}` }))));
    const history = await call("history", { channel, limit: 10, reverse: true }).catch((error) => ({ failed: error.message }));
    $("insp-history").replaceChildren(...(history.failed ? [el("li", { text: history.failed })]
      : (history.publications ?? []).map((pub) => el("li", { text: `#${pub.offset} ${JSON.stringify(pub.data)}` }))));
  }

  async function showConnections() {
    const { connections } = await call("connections", {});
    const byUser = new Map();
    for (const [client, info] of Object.entries(connections)) {
      if (!byUser.has(info.user)) byUser.set(info.user, []);
      byUser.get(info.user).push([client, info]);
    }
    const rows = [];
    for (const [user, clients] of [...byUser].sort(([a], [b]) => a.localeCompare(b))) {
      for (const [client, info] of clients) {
        const button = el("button", { type: "button", class: "disconnect", text: "Disconnect" });
        button.onclick = async () => {
          button.disabled = true;
          await call("disconnect", { user, client }).catch((error) => { $("insp-error").textContent = error.message; });
          refresh();
        };
        rows.push(el("tr", { "data-user": user, "data-client": client },
          el("td", { text: user || "(anonymous)" }), el("td", { text: client }),
          el("td", { text: Object.keys(info.state?.channels ?? {}).join(", ") }), el("td", {}, button)));
      }
    }
    $("insp-connections").replaceChildren(...rows);
  }

  $("insp-pattern").addEventListener("change", refresh);
  refresh();
  setInterval(refresh, POLL_MS);
}
