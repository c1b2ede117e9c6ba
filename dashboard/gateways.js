// Gateways: the `gateways.snapshot` RPC gives every gateway and the position of `gateways:all`;
// the subscription starts from that position, so every change after the snapshot arrives once
// and the table never needs a reload (docs/channels.md, "Gateway rooms").

import { $, el, progressBar, setTag } from "./dom.js";

const rows = new Map(); // gw_id → {tr, cells, bar}

function percent(value) {
  const n = parseFloat(String(value ?? "0"));
  return Number.isFinite(n) ? n : 0;
}

function row(id) {
  let entry = rows.get(id);
  if (entry) return entry;
  const state = el("span", { class: "tag" });
  const bar = progressBar("ok");
  const cells = {
    id: el("td", {}, el("span", { class: "gw-id", text: id }), el("span", { class: "gw-ip mono" })),
    type: el("td"), state: el("td", {}, state), room: el("td"), duration: el("td", { class: "num mono" }), progress: el("td", {}, bar.node),
  };
  const tr = el("tr", { "data-gw": id }, ...Object.values(cells));
  entry = { tr, cells, state, bar };
  rows.set(id, entry);
  // Sorted by id, so rows keep their place as states change.
  const after = [...rows.keys()].sort().find((other) => other > id && rows.get(other).tr.isConnected);
  $("gw-rows").insertBefore(tr, after ? rows.get(after).tr : null);
  return entry;
}

function show(id, gateway, flash) {
  const entry = row(id);
  entry.cells.id.lastChild.textContent = gateway.gateway ?? "";
  entry.cells.type.textContent = gateway.type ?? "—";
  entry.tr.dataset.state = gateway.status ?? "";
  setTag(entry.state, gateway.status);
  entry.cells.room.textContent = gateway.room ?? "—";
  const duration = gateway.media_duration;
  entry.cells.duration.textContent = !duration || duration === "0" ? "—" : duration;
  entry.bar.set(percent(gateway.transcript_progress));
  if (flash) {
    entry.tr.classList.remove("flash");
    void entry.tr.offsetWidth; // restart the animation
    entry.tr.classList.add("flash");
  }
}

function remove(id) {
  const entry = rows.get(id);
  if (!entry) return;
  entry.tr.remove();
  rows.delete(id);
}

function counts() {
  const states = [...rows.values()].map((entry) => entry.tr.dataset.state);
  $("gw-working").textContent = states.filter((s) => s === "working").length;
  $("gw-free").textContent = states.filter((s) => s === "started").length;
  $("gw-total").textContent = states.length;
  $("gw-empty").hidden = states.length > 0;
}

export function startGateways({ client, subscribed }) {
  let sub = null;
  const load = async () => {
    const snapshot = await client.rpc("gateways.snapshot");
    for (const id of [...rows.keys()]) if (!(id in snapshot.gateways)) remove(id);
    for (const [id, gateway] of Object.entries(snapshot.gateways)) show(id, gateway, false);
    counts();
    return snapshot;
  };
  client.on("connected", async () => {
    try {
      if (sub) return; // resubscribed by the client itself, recovering from its last position
      const snapshot = await load();
      sub = client.subscribe("gateways:all", {
        onPublication: ({ data }) => {
          if (data.event === "unregister" || data.event === "removed") remove(data.gw_id);
          else show(data.gw_id, data, true);
          counts();
        },
        onSubscribed: (ctx) => {
          subscribed(ctx);
          if (ctx.wasRecovering && !ctx.recovered) load().catch(() => {});
        },
      }, { since: { offset: snapshot.offset, epoch: snapshot.epoch } });
    } catch (error) {
      $("gw-empty").hidden = false;
      $("gw-empty").textContent = "Gateways unavailable: " + error.message;
    }
  });
}
