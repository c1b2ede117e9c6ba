// Meetings (seed 004): the user's uploads from GET /v1/meetings, each followed live on its own
// channel (`channel` in the meeting, `meetings:<id>#<owner>`), with links to the artifacts once
// processing is done. Uploading goes through POST /v1/files with the same access token.
// The owner's channel `meetings:user#<user>` announces every change of every meeting, so an
// upload made in another tab or device shows here without a reload.

import { $, el, progressBar, setTag } from "./dom.js";

const items = new Map(); // meeting_id → {li, tag, bar, stage, links, sub}

export function startMeetings({ client, session, subscribed }) {
  const item = (meeting) => {
    let entry = items.get(meeting.meeting_id);
    if (entry) return entry;
    const tag = el("span", { class: "tag" }), bar = progressBar("violet");
    const stage = el("span"), links = el("span", { class: "links" });
    const title = el("span", { class: "meeting-title" });
    const li = el("li", { class: "meeting", "data-meeting": meeting.meeting_id },
      el("div", { class: "meeting-head" }, title, tag), bar.node, el("div", { class: "meeting-meta" }, stage, links));
    entry = { li, title, tag, bar, stage, links, sub: null, linked: false };
    items.set(meeting.meeting_id, entry);
    $("meet-list").prepend(li);
    $("meet-empty").hidden = true;
    return entry;
  };

  const artifacts = async (id, entry) => {
    if (entry.linked) return;
    entry.linked = true;
    try {
      const list = await session.api(`/v1/meetings/${encodeURIComponent(id)}/artifacts`);
      entry.links.textContent = "";
      for (const artifact of list.artifacts ?? []) entry.links.append(el("a", { href: artifact.download_url, text: artifact.name, download: artifact.name }));
    } catch { entry.linked = false; }
  };

  const show = (meeting) => {
    const entry = item(meeting);
    if (meeting.title || meeting.filename) entry.title.textContent = meeting.title || meeting.filename;
    if (meeting.status) { setTag(entry.tag, meeting.status); entry.li.dataset.status = meeting.status; }
    if (meeting.progress !== undefined) entry.bar.set(meeting.progress);
    entry.stage.textContent = meeting.error ? meeting.error : meeting.stage ?? "";
    if (meeting.status === "completed") artifacts(meeting.meeting_id, entry);
    return entry;
  };

  const follow = (meeting) => {
    const entry = show(meeting);
    if (entry.sub || !meeting.channel) return;
    entry.sub = client.subscribe(meeting.channel, {
      onPublication: ({ data }) => {
        if (data.type === "deleted") { entry.li.remove(); items.delete(meeting.meeting_id); entry.sub?.unsubscribe().catch(() => {}); return; }
        if (data.type === "artifact") { entry.linked = false; if (data.status === "completed") artifacts(meeting.meeting_id, entry); return; }
        show(data);
      },
      onSubscribed: subscribed,
    });
  };

  const load = async () => {
    const page = await session.api("/v1/meetings?limit=20");
    for (const meeting of [...(page.meetings ?? [])].reverse()) follow(meeting);
    if (!items.size) $("meet-empty").hidden = false;
  };

  // A meeting this page does not show yet is read once and followed on its own channel from then on.
  const fetching = new Set();
  const announced = async (data) => {
    const id = data.meeting_id;
    if (!id || data.type === "deleted" || items.has(id) || fetching.has(id)) return;
    fetching.add(id);
    try {
      follow(await session.api(`/v1/meetings/${encodeURIComponent(id)}`));
    } catch { /* deleted meanwhile */ } finally { fetching.delete(id); }
  };

  // Subscribed before the client connects: it sends every subscription it holds on (re)connect.
  client.subscribe("meetings:user#" + session.user, {
    onPublication: ({ data }) => announced(data), onSubscribed: subscribed,
    onError: (error) => { $("meet-error").textContent = "Meetings from other tabs unavailable: " + error.message; },
  });

  let loaded = false;
  client.on("connected", () => {
    if (loaded) return;
    loaded = true;
    load().catch((error) => { loaded = false; $("meet-error").textContent = "Meetings unavailable: " + error.message; });
  });

  $("meet-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    if (!file) return;
    $("meet-error").textContent = "";
    const form = new FormData();
    form.append("file", file);
    form.append("title", file.name);
    try {
      const created = await session.api("/v1/files", { method: "POST", body: form });
      follow(await session.api(`/v1/meetings/${encodeURIComponent(created.meeting_id)}`));
    } catch (error) {
      $("meet-error").textContent = "Upload failed: " + error.message;
    }
  });
}
