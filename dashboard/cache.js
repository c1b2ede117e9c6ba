// Cache jobs (seed 001): the `cache.jobs` RPC gives the newest jobs and the position of
// `cache:jobs`; each unfinished job's `cache:progress:<jobId>` moves its bars, `cache:throughput`
// feeds the chart (prefilled from that channel's history), and `cache:files:<jobId>` of the
// selected job is the per-file feed (docs/channels.md, "Cache jobs").

import { $, bytes, el, progressBar, setTag, trim } from "./dom.js";

const MAX_JOBS = 12;
const WINDOW = 300; // seconds of throughput on the chart
const jobs = new Map(); // id → {li, status, bars, texts, progressSub}
let client = null, selected = null, filesSub = null;

function job(id) {
  let entry = jobs.get(id);
  if (entry) return entry;
  const status = el("span", { class: "tag" });
  const files = progressBar(), size = progressBar("ok");
  const filesText = el("span", { text: "0 / 0" }), sizeText = el("span", { text: "0 B / 0 B" });
  const rate = el("span", { class: "muted num" });
  const li = el("li", { class: "job", "data-job": id, tabindex: "0" },
    el("div", { class: "job-head" }, el("span", { class: "mono", text: id.slice(0, 8), title: id }), el("span", {}, rate, " ", status)),
    el("div", { class: "job-row" }, el("span", { text: "files" }), files.node, filesText),
    el("div", { class: "job-row" }, el("span", { text: "size" }), size.node, sizeText));
  li.addEventListener("click", () => select(id));
  li.addEventListener("keydown", (event) => { if (event.key === "Enter") select(id); });
  entry = { li, statusTag: status, files, size, filesText, sizeText, rate, status: "", progressSub: null };
  jobs.set(id, entry);
  $("cache-jobs").prepend(li);
  while (jobs.size > MAX_JOBS) { // the oldest card goes
    const oldest = [...jobs.keys()][0];
    unwatch(oldest);
    jobs.get(oldest).li.remove();
    jobs.delete(oldest);
  }
  $("cache-empty").hidden = true;
  return entry;
}

function showStatus(entry, status) {
  entry.status = status;
  if (finished(status)) entry.rate.textContent = "";
  entry.li.dataset.status = status;
  setTag(entry.statusTag, status);
  $("cache-running").textContent = [...jobs.values()].filter((j) => j.status === "running").length;
}

function showProgress(entry, progress, throughput) {
  if (!progress) return;
  entry.files.set(progress.files.percentage);
  entry.filesText.textContent = `${progress.files.completed + progress.files.failed} / ${progress.files.total}`;
  entry.size.set(progress.size.percentage);
  entry.sizeText.textContent = `${bytes(progress.size.completedBytes)} / ${bytes(progress.size.totalBytes)}`;
  if (throughput !== undefined) entry.rate.textContent = throughput && !finished(entry.status) ? `${(throughput.mbps ?? 0).toFixed(1)} MB/s` : "";
}

function watch(id) {
  const entry = jobs.get(id);
  if (!entry || entry.progressSub) return;
  entry.progressSub = client.subscribe(`cache:progress:${id}`, {
    onPublication: ({ data }) => {
      showProgress(entry, data.progress, data.throughput);
      if (data.status) showStatus(entry, data.status);
    },
  });
}

function unwatch(id) {
  const entry = jobs.get(id);
  if (!entry?.progressSub) return;
  entry.progressSub.unsubscribe().catch(() => {});
  entry.progressSub = null;
}

function finished(status) { return status === "completed" || status === "failed" || status === "cancelled"; }

// One line per file: "›" while it is read, then ✓ or ✗ in the same place.
function feedLine(line, data) {
  const mark = data.event === "completed" ? ["✓", "ok"] : data.event === "failed" ? ["✗", "bad"] : ["›", "run"];
  const size = data.event === "started" ? bytes(data.size) : data.event === "failed" ? data.error ?? "failed" : bytes(data.bytes);
  line.dataset.event = data.event;
  line.replaceChildren(el("span", { class: mark[1], text: mark[0] }), el("span", { class: "path", text: data.path, title: data.path }),
    el("span", { class: "size", text: size }));
  return line;
}

async function select(id) {
  if (selected === id) return;
  selected = id;
  for (const [other, entry] of jobs) entry.li.classList.toggle("selected", other === id);
  $("feed-job").textContent = id.slice(0, 8);
  const feed = $("cache-feed");
  feed.textContent = "";
  if (filesSub) { filesSub.unsubscribe().catch(() => {}); filesSub = null; }
  let shownUpTo = 0;
  const lines = new Map(); // file index → line
  const append = (pub) => {
    if (pub.offset && pub.offset <= shownUpTo) return;
    shownUpTo = pub.offset ?? shownUpTo;
    const index = pub.data.index;
    let line = lines.get(index);
    if (!line || !line.isConnected) {
      line = el("li");
      lines.set(index, line);
      feed.append(line);
      trim(feed, 80);
      if (lines.size > 200) for (const [key, value] of lines) if (!value.isConnected) lines.delete(key);
    }
    feedLine(line, pub.data);
    feed.scrollTop = feed.scrollHeight;
  };
  const pending = [];
  let loaded = false;
  filesSub = client.subscribe(`cache:files:${id}`, { onPublication: (pub) => (loaded ? append(pub) : pending.push(pub)) });
  try {
    const history = await client.history(`cache:files:${id}`, { limit: 40, reverse: true });
    for (const pub of history.publications.reverse()) append(pub);
  } catch { /* a job older than the channel's history: live lines only */ }
  loaded = true;
  for (const pub of pending) append(pub);
}

// ---- throughput chart

const samples = new Float64Array(WINDOW); // MB/s per second, oldest first
const nodes = new Map(); // node → {mbps, at}

function addSample(atSeconds, mbps) {
  const age = Math.floor(Date.now() / 1000) - Math.floor(atSeconds);
  if (age < 0 || age >= WINDOW) return;
  samples[WINDOW - 1 - age] = Math.max(samples[WINDOW - 1 - age], mbps);
}

function tick() {
  samples.copyWithin(0, 1);
  const now = Date.now() / 1000;
  let total = 0;
  for (const [node, value] of nodes) { if (now - value.at < 3) total += value.mbps; else nodes.delete(node); }
  samples[WINDOW - 1] = total;
  $("cache-rate").textContent = total.toFixed(1);
  draw();
}

function draw() {
  const canvas = $("cache-chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (!width || !height) return;
  if (canvas.width !== Math.round(width * ratio)) { canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio); }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const peak = Math.max(1, ...samples);
  // The axis tops out at the next 1, 2 or 5 × 10^n above the peak, so labels stay round.
  const magnitude = Math.pow(10, Math.floor(Math.log10(peak)));
  const top = [1, 2, 5, 10].map((m) => m * magnitude).find((value) => value >= peak);
  g.strokeStyle = "#2a3441"; g.fillStyle = "#8b98a8"; g.font = "10px system-ui"; g.lineWidth = 1;
  for (const fraction of [0.5, 1]) {
    const y = Math.round(height - (height - 12) * fraction) + 0.5;
    g.beginPath(); g.moveTo(0, y); g.lineTo(width, y); g.stroke();
    g.fillText(`${+(top * fraction).toFixed(1)}`, 4, y + 11);
  }
  g.beginPath();
  for (let i = 0; i < WINDOW; i++) {
    const x = (i / (WINDOW - 1)) * width, y = height - (samples[i] / top) * (height - 12);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  }
  g.strokeStyle = "#4da3ff"; g.lineWidth = 1.6; g.stroke();
  g.lineTo(width, height); g.lineTo(0, height); g.closePath();
  g.fillStyle = "rgba(77,163,255,.14)"; g.fill();
}

// ----

export function startCache(context) {
  client = context.client;
  let jobsSub = null;
  const load = async () => {
    const snapshot = await client.rpc("cache.jobs", { limit: MAX_JOBS });
    for (const detail of [...snapshot.jobs].reverse()) {
      const entry = job(detail.id);
      showStatus(entry, detail.status);
      showProgress(entry, detail.progress, detail.throughput);
      if (!finished(detail.status)) watch(detail.id);
    }
    if (!selected && snapshot.jobs.length) select((snapshot.jobs.find((j) => j.status === "running") ?? snapshot.jobs[0]).id);
    return snapshot;
  };
  setInterval(tick, 1000);
  window.addEventListener("resize", draw);
  client.on("connected", async () => {
    if (jobsSub) return;
    try {
      const snapshot = await load();
      jobsSub = client.subscribe("cache:jobs", {
        onPublication: ({ data }) => {
          const entry = job(data.jobId);
          showStatus(entry, data.status);
          if (data.event === "created" || data.event === "started") {
            watch(data.jobId);
            if (!selected || finished(jobs.get(selected)?.status)) select(data.jobId);
          } else if (finished(data.status)) {
            // The final progress comes on the job's own channel; stop listening once it had time to.
            setTimeout(() => unwatch(data.jobId), 10_000);
          }
        },
        onSubscribed: (ctx) => { context.subscribed(ctx); if (ctx.wasRecovering && !ctx.recovered) load().catch(() => {}); },
      }, { since: { offset: snapshot.offset, epoch: snapshot.epoch } });
      const throughput = client.subscribe("cache:throughput", {
        onPublication: ({ data }) => {
          const at = Date.parse(data.timestamp) / 1000 || Date.now() / 1000;
          nodes.set(data.node, { mbps: data.mbps, at: Date.now() / 1000 });
          addSample(at, data.mbps);
        },
        onSubscribed: context.subscribed,
      });
      const history = await throughput.history({ limit: -1 }).catch(() => ({ publications: [] }));
      for (const pub of history.publications) addSample(Date.parse(pub.data.timestamp) / 1000, pub.data.mbps);
      draw();
    } catch (error) {
      $("cache-empty").hidden = false;
      $("cache-empty").textContent = "Cache jobs unavailable: " + error.message;
    }
  });
}
