"""Turns bench/run.sh's results into docs/benchmarks.md and docs/bench/*.png.

    report.py report --run bench/results/latest --markdown docs/benchmarks.md --plots docs/bench
    report.py wrk-json wrk-output.txt --server hub --url URL ...   (one JSON line from wrk's text)
    report.py cost-json --results R --server hub --busy CG --idle CG   (scenario cost's line from two
        callgrind runs; cost-check --results R --server hub: did the busy run keep up)
    report.py report ... --splice   (a run of only stand-alone scenarios, codecs, start, proxies: their
        sections of docs/benchmarks.md are replaced, the rest kept)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from datetime import datetime, timezone

ORDER = ["hub", "nats", "mosquitto", "fastapi", "lws", "floor"]
NAMES = {
    "hub": "hub",
    "nats": "nats-server (WebSocket)",
    "mosquitto": "mosquitto (MQTT over WebSocket)",
    "fastapi": "FastAPI/uvicorn",
    "lws": "libwebsockets mirror",
    "floor": "kernel floor (epoll + send, no protocol)",
}
# Yardsticks, not peers: never "the best peer".
YARDSTICKS = {"floor"}

# ---------------------------------------------------------------------------------------------
# wrk


def wrk_duration_ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text.strip())
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk_json(args: argparse.Namespace) -> None:
    text = open(args.file).read()
    record: dict = {"scenario": "rest", "phase": "summary", "server": args.server, "kind": args.server, "url": args.url}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    record["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        if m:
            record[f"p{pct}_ms"] = wrk_duration_ms(m.group(1))
    m = re.search(r"(\d+) requests in", text)
    record["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    record["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", text)
    record["socket_errors"] = m.group(1).strip() if m else ""
    seconds = float(args.seconds)
    record["server_cpu"] = 100.0 * float(args.server_cpu_s) / seconds
    if float(args.redis_cpu_s) > 0:
        record["redis_cpu"] = 100.0 * float(args.redis_cpu_s) / seconds
    print(json.dumps(record, sort_keys=True))


# ---------------------------------------------------------------------------------------------
# Scenario cost: instructions per delivery from two callgrind runs


def callgrind_ir(path: str) -> int | None:
    """Total Ir of a callgrind out file: its `totals:` line (else `summary:`)."""
    found: dict[str, int] = {}
    try:
        for line in open(path, errors="replace"):
            for key in ("totals:", "summary:"):
                if line.startswith(key):
                    found[key] = int(line.split()[1])
    except OSError:
        return None
    return found.get("totals:", found.get("summary:"))


def strace_calls(path: str) -> dict[str, int] | None:
    """Calls per syscall from `strace -c` (its table; "total" included)."""
    calls: dict[str, int] = {}
    try:
        for line in open(path, errors="replace"):
            parts = line.split()
            # % time, seconds, usecs/call, calls, [errors,] syscall
            if len(parts) >= 5 and re.match(r"^[\d.]+$", parts[0]) and parts[3].isdigit():
                calls[parts[-1]] = int(parts[3])
    except OSError:
        return None
    return calls or None


WRITE_CALLS = ("write", "writev", "sendto", "sendmsg", "sendmmsg", "send")


def cost_lines(results: str, server: str, run: str) -> list[dict]:
    out = []
    for line in open(results):
        if line.strip():
            r = json.loads(line)
            if r.get("scenario") == "cost-run" and r.get("server") == server and r.get("cost_run") == run:
                out.append(r)
    return out


def cost_kept_up(lines: list[dict]) -> bool:
    """Every step and half-rate run delivered ≥ 99 % and lost no subscriber."""
    runs = [r for r in lines if r.get("phase") in ("step", "half")]
    return bool(runs) and all(r.get("lost", 0) == 0 and r.get("delivered", 0) >= 0.99 * r.get("expected", 1)
                              for r in runs)


def cost_check(args: argparse.Namespace) -> None:
    sys.exit(0 if cost_kept_up(cost_lines(args.results, args.server, "busy")) else 1)


def cost_json(args: argparse.Namespace) -> None:
    record: dict = {"scenario": "cost", "phase": "summary", "server": args.server,
                    "kind": "lws" if args.server == "floor" else args.server, "subscribers": args.subscribers,
                    "callgrind_busy": os.path.basename(args.busy), "callgrind_idle": os.path.basename(args.idle)}
    for run, path in (("busy", args.busy), ("idle", args.idle)):
        lines = cost_lines(args.results, args.server, run)
        runs = [r for r in lines if r.get("phase") in ("step", "half")]
        record[f"ir_{run}"] = callgrind_ir(path)
        record[f"deliveries_{run}"] = sum(r.get("delivered", 0) for r in runs)
        record[f"expected_{run}"] = sum(r.get("expected", 0) for r in runs)
        record[f"lost_{run}"] = sum(r.get("lost", 0) for r in runs)
        record[f"kept_up_{run}"] = cost_kept_up(lines)
        step = next((r for r in runs if r.get("phase") == "step"), None)
        if step:
            record[f"deliveries_per_s_{run}"] = step.get("deliveries_per_s")
            record[f"rate_{run}"] = lines[0].get("cost_deliveries")
            if step.get("server_cpu") is not None:
                record[f"server_cpu_{run}"] = step["server_cpu"]
            if run == "busy" and step.get("bytes_per_delivery") is not None:
                record["bytes_per_delivery"] = step["bytes_per_delivery"]
    if args.strace_busy and args.strace_idle:
        busy, idle = strace_calls(args.strace_busy), strace_calls(args.strace_idle)
        b_lines, i_lines = (cost_lines(args.results, args.server, f"strace-{run}") for run in ("busy", "idle"))
        b_del, i_del = (sum(r.get("delivered", 0) for r in lines if r.get("phase") in ("step", "half"))
                        for lines in (b_lines, i_lines))
        record.update({"strace_deliveries_busy": b_del, "strace_deliveries_idle": i_del,
                       "strace_kept_up_busy": cost_kept_up(b_lines)})
        if busy and idle and b_del > i_del:
            def delta(names: tuple[str, ...]) -> float:
                return (sum(busy.get(n, 0) for n in names) - sum(idle.get(n, 0) for n in names)) / (b_del - i_del)
            record["syscalls_per_delivery"] = delta(("total",))
            record["write_calls_per_delivery"] = delta(WRITE_CALLS)
            top = sorted(((n, (busy.get(n, 0) - idle.get(n, 0)) / (b_del - i_del)) for n in busy if n != "total"),
                         key=lambda p: -p[1])[:4]
            record["syscalls_per_delivery_top"] = {n: v for n, v in top if v > 0}
    if record.get("ir_busy") is None or record.get("ir_idle") is None:
        record["error"] = "no callgrind totals"
    elif record["deliveries_busy"] <= record["deliveries_idle"]:
        record["error"] = "the busy run delivered no more than the idle run"
    else:
        record["ir_per_delivery"] = ((record["ir_busy"] - record["ir_idle"])
                                     / (record["deliveries_busy"] - record["deliveries_idle"]))
    print(json.dumps(record, sort_keys=True))


# ---------------------------------------------------------------------------------------------
# Report


def load(run: str) -> tuple[dict, list[dict]]:
    meta = json.load(open(os.path.join(run, "meta.json")))
    rows = []
    for line in open(os.path.join(run, "results.jsonl")):
        line = line.strip()
        if line:
            rows.append(json.loads(line))
    return meta, rows


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def fmt_pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f} %"


def sh(cmd: str) -> str:
    try:
        out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20)
        return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else ""
    except Exception:
        return ""


def machine() -> list[str]:
    model = ""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = ""
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    debian = sh("cat /etc/debian_version")
    return [
        f"CPU: {model}, {os.cpu_count()} cores (server pinned to CPU 0, generator and wrk to CPU 1)",
        f"Memory: {mem}; kernel {platform.release()}; Debian {debian}",
        f"Swift: {sh('swift --version 2>&1 | grep -i version')}",
        "Peers: " + "; ".join([
            sh("nats-server --version"),
            "mosquitto " + sh("mosquitto -h | head -1").replace("mosquitto version ", ""),
            "libwebsockets-test-server " + sh("dpkg-query -W -f='${Version}' libwebsockets-test-server"),
            sh("redis-server --version").split(" sha=")[0],
            sh("wrk -v 2>&1 | head -1").split(" [")[0],
        ]),
        f"Python peer: Python {platform.python_version()}, " + ", ".join(
            f"{p} {v}" for p, v in pkg_versions(["fastapi", "uvicorn", "websockets", "redis"]).items()),
    ]


def pkg_versions(names: list[str]) -> dict:
    from importlib import metadata
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except Exception:
            out[n] = "?"
    return out


def by(rows: list[dict], scenario: str, phase: str = "summary") -> list[dict]:
    return [r for r in rows if r.get("scenario") == scenario and r.get("phase") == phase]


def sort_servers(items: list[dict]) -> list[dict]:
    return sorted(items, key=lambda r: (ORDER.index(r["server"]) if r["server"] in ORDER else 99,
                                        r.get("subscribers", 0)))


def ratio_line(name: str, value: float | None, reference: float | None, factor: float, unit_note: str = "",
               missing: str = "not measured") -> list[str]:
    """One row of the targets table: hub value against factor × reference."""
    if value is None or reference is None or reference == 0:
        return [name, fmt_rate(value) + (unit_note if value else ""), "–", missing]
    r = value / reference
    need = factor
    if r >= need:
        verdict = f"**met** ({r:.2f}×, {100 * (r / need - 1):.0f} % above target)"
    else:
        verdict = f"**missed** ({r:.2f}×, {100 * (1 - r / need):.0f} % short)"
    return [name, f"{fmt_rate(value)}{unit_note}", f"{fmt_rate(reference)}{unit_note}", verdict]


def table(header: list[str], body: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return out


def plots(rows: list[dict], outdir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    fan = sort_servers([r for r in by(rows, "fanout") if "max_deliveries_per_s" in r])
    if fan:
        servers = [s for s in ORDER if any(r["server"] == s for r in fan)]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for s in servers:
            pts = sorted((r["subscribers"], r["max_deliveries_per_s"]) for r in fan if r["server"] == s)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=NAMES.get(s, s))
        ax.set_xlabel("subscribers (one channel)")
        ax.set_ylabel("highest sustained deliveries/s")
        ax.set_yscale("log")
        ax.set_title("Fan-out throughput (p99 ≤ 50 ms, all delivered)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(outdir, "fanout-throughput.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

        fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharey=True)
        for ax, (key, label) in zip(axes, [("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")]):
            for s in servers:
                pts = sorted((r["subscribers"], r["half"][key]) for r in fan if r["server"] == s and "half" in r)
                ax.plot([p[0] for p in pts], [max(p[1], 0.01) for p in pts], marker="o", label=NAMES.get(s, s))
            ax.set_title(f"{label} at half the highest rate")
            ax.set_xlabel("subscribers")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("publish-to-deliver latency, ms")
        axes[0].axhline(10, color="grey", linestyle=":", linewidth=1)
        axes[-1].legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(outdir, "fanout-latency.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    steps = [r for r in by(rows, "fanout", "step")]
    if steps:
        counts = sorted({r["subscribers"] for r in steps})
        fig, axes = plt.subplots(1, len(counts), figsize=(6 * len(counts), 4.2), squeeze=False)
        for ax, n in zip(axes[0], counts):
            for s in ORDER:
                pts = sorted((r["deliveries_per_s"], r["p99_ms"], r["ok"]) for r in steps
                             if r["server"] == s and r["subscribers"] == n)
                if not pts:
                    continue
                line, = ax.plot([p[0] for p in pts], [max(p[1], 0.01) for p in pts], marker="o", label=NAMES.get(s, s))
                bad = [p for p in pts if not p[2]]
                ax.scatter([p[0] for p in bad], [max(p[1], 0.01) for p in bad], marker="x", color=line.get_color(), s=60)
            limits = {r.get("p99_limit_ms", 50) for r in steps if r["subscribers"] == n}
            for limit in limits:
                ax.axhline(limit, color="grey", linestyle=":", linewidth=1)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("deliveries/s achieved")
            ax.set_ylabel("p99 latency, ms")
            ax.set_title(f"Every rate step, {n} subscribers (x: failed step)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(outdir, "fanout-steps.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def stopped_by(rows: list[dict], scenario: str, server: str, subs: int | None, cpu_label: str = "server CPU") -> str:
    """The lowest-rate failed step: its rate, why it failed and how much of it was delivered."""
    failed = [r for r in by(rows, scenario, "step") if r["server"] == server and r.get("subscribers") == subs
              and not r.get("ok")]
    if not failed:
        return "no step failed"
    r = min(failed, key=lambda r: r["rate"])
    share = 100 * r.get("delivered", 0) / max(1, r.get("expected", 1))
    return (f"{r['rate']:.0f} publishes/s: {r.get('reason') or 'failed'} "
            f"({share:.0f} % delivered, {cpu_label} {fmt_pct(r.get('server_cpu'))})")


def floor_at_hub_half(fan: list[dict], subs: int) -> dict | None:
    """The kernel floor's run at the hub's half rate (`--compare-deliveries`), if there was one."""
    return next((r["compare"] for r in fan if r["server"] == "floor" and r.get("subscribers") == subs
                 and "compare" in r), None)


def summary(fan: list[dict], ch: list[dict], co: list[dict], rest: list[dict]) -> list[str]:
    """A few sentences from the numbers: what the hub did and where it stands."""
    out = ["## Summary", ""]

    def best_peer(rows: list[dict], key: str, **match) -> tuple[str, float] | None:
        peers = [(r["server"], r[key]) for r in rows if r["server"] != "hub" and r["server"] not in YARDSTICKS and key in r
                 and all(r.get(k) == v for k, v in match.items())]
        return max(peers, key=lambda p: p[1]) if peers else None

    for subs in sorted({r.get("subscribers") for r in fan if r.get("subscribers")}):
        hub = next((r for r in fan if r["server"] == "hub" and r.get("subscribers") == subs), None)
        if not hub or "max_deliveries_per_s" not in hub:
            continue
        peer = best_peer(fan, "max_deliveries_per_s", subscribers=subs)
        line = (f"- Fan-out to {subs:,} subscribers: the hub sustained {fmt_rate(hub['max_deliveries_per_s'])} deliveries/s"
                f" with its core at {fmt_pct(hub.get('max_server_cpu'))} and the generator's at "
                f"{fmt_pct(hub.get('max_generator_cpu'))}")
        if peer:
            line += f"; the best peer, {NAMES.get(peer[0], peer[0])}, {fmt_rate(peer[1])} ({hub['max_deliveries_per_s'] / peer[1]:.1f}×)"
        line += f". At half that rate its p99 was {fmt_ms(hub['half']['p99_ms'])} ms (target < 10 ms)"
        floor = floor_at_hub_half(fan, subs)
        if floor:
            line += (f"; the kernel floor (a bare epoll server doing one send per subscriber) at the same rate: "
                     f"p99 {fmt_ms(floor['p99_ms'])} ms with its core at {fmt_pct(floor.get('server_cpu'))}")
        out.append(line + ".")
    hub = next((r for r in ch if r["server"] == "hub" and "max_deliveries_per_s" in r), None)
    if hub:
        peer = best_peer(ch, "max_deliveries_per_s")
        line = (f"- Many channels ({hub['connections']:,} connections): the hub sustained "
                f"{fmt_rate(hub['max_deliveries_per_s'])} deliveries/s, p99 {fmt_ms(hub['half']['p99_ms'])} ms at half rate")
        if peer:
            ratio = hub["max_deliveries_per_s"] / peer[1]
            # Rates double per step: within a few percent means the same step was the last sustained.
            line += (f"; the best peer, {NAMES.get(peer[0], peer[0])}, {fmt_rate(peer[1])} — the hub is "
                     + ("ahead here" if ratio >= 1.05 else "level with it here (the same rate step)" if ratio >= 0.95
                        else "behind here (see the profile: lws's poll(2) loop walks every connection per wake-up)"))
        out.append(line + ".")
    hub = next((r for r in co if r["server"] == "hub" and r.get("kib_per_connection") is not None), None)
    if hub:
        out.append(f"- Idle connections: {hub['kib_per_connection']:.1f} KiB of RSS per connection "
                   f"({hub['ready']:,} connected in {hub['connect_s']:.1f} s; target < 10 KiB).")
    h = next((r for r in rest if r["server"] == "hub"), None)
    f = next((r for r in rest if r["server"] == "fastapi"), None)
    if h and f:
        out.append(f"- REST: {h['rps']:,.0f} requests/s (p99 {fmt_ms(h.get('p99_ms'))} ms) on the hub's "
                   f"`{h['url'].split('127.0.0.1:')[-1].split('/', 1)[-1]}` against {f['rps']:,.0f} (p99 "
                   f"{fmt_ms(f.get('p99_ms'))} ms) on FastAPI's `/status` ({h['rps'] / max(f['rps'], 1):.1f}×; target 10×).")
    out += ["", "Targets, one by one, are under [Targets](#targets); where the hub misses, "
            "[Where the hub's time goes](#where-the-hubs-time-goes) has the profile.", ""]
    return out


# ---------------------------------------------------------------------------------------------
# Scenario 6: the hub's codecs and transports (a section that stands alone, so a run of only
# this scenario can replace it in an existing report: see --splice)

CODEC_MODES = [
    ("json", "JSON, WebSocket"), ("protobuf", "Protobuf, WebSocket"),
    ("json-gateway", "JSON, gateway record"), ("json-delta", "JSON + fossil delta, gateway record"),
    ("protobuf-gateway", "Protobuf, gateway record"), ("protobuf-delta", "Protobuf + fossil delta, gateway record"),
    ("sse", "JSON, uni_sse (EventSource wire)"),
]
SECTION_BEGIN = "<!-- section:{} -->"
SECTION_END = "<!-- /section:{} -->"


def codec_runs(rows: list[dict]) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for r in by(rows, "codecs"):
        runs.setdefault(r["server"].removeprefix("hub-codec-"), []).append(r)
    return runs


def codec_ceiling(runs: dict[str, list[dict]], mode: str) -> float | None:
    values = [r["max_deliveries_per_s"] for r in runs.get(mode, []) if "max_deliveries_per_s" in r]
    return statistics.median(values) if values else None


def codec_half(runs: dict[str, list[dict]], mode: str, key: str) -> float | None:
    values = [r["half"][key] for r in runs.get(mode, []) if key in r.get("half", {})]
    return statistics.median(values) if values else None


def codec_targets(rows: list[dict]) -> list[list[str]]:
    runs = codec_runs(rows)
    body = []
    if runs.get("json") and runs.get("protobuf"):
        body.append(ratio_line("6 (1,000 subs): Protobuf ceiling ≥ JSON (medians)", codec_ceiling(runs, "protobuf"),
                               codec_ceiling(runs, "json"), 1.0, "/s"))
    for codec in ("json", "protobuf"):
        whole = codec_half(runs, f"{codec}-gateway", "bytes_per_delivery")
        delta = codec_half(runs, f"{codec}-delta", "bytes_per_delivery")
        if whole and delta:
            cut = whole / delta
            body.append([f"6: {codec} fossil delta cuts wire bytes ≥ 5× (gateway record)", f"{delta:.0f} B/delivery",
                         f"{whole:.0f} B/delivery whole",
                         f"**{'met' if cut >= 5 else 'missed'}** ({cut:.2f}× on the wire; data "
                         f"{codec_half(runs, f'{codec}-gateway', 'data_bytes_per_delivery') or 0:.0f} → "
                         f"{codec_half(runs, f'{codec}-delta', 'data_bytes_per_delivery') or 0:.0f} B)"])
    return body


def codecs_section(rows: list[dict], meta: dict, dated: str) -> list[str]:
    runs = codec_runs(rows)
    md = [SECTION_BEGIN.format("codecs"), "## 6. The hub's codecs and transports: fan-out to 1,000 subscribers", ""]
    if not runs:
        return md + ["Not run.", "", SECTION_END.format("codecs")]
    md += [dated, ""]
    body = []
    json_ceiling = codec_ceiling(runs, "json")
    for mode, title in CODEC_MODES:
        mine = runs.get(mode, [])
        if not mine:
            continue
        ceilings = [r["max_deliveries_per_s"] for r in mine if "max_deliveries_per_s" in r]
        median = codec_ceiling(runs, mode)
        spread = ", ".join(fmt_rate(c) for c in ceilings) if len(ceilings) > 1 else ""
        base = codec_ceiling(runs, mode.replace("-delta", "-gateway")) if mode.endswith("-delta") else json_ceiling
        vs = f"{median / base:.2f}×" if median and base and mode not in ("json", "json-gateway") else "–"
        cpu = statistics.median([r["max_server_cpu"] for r in mine if r.get("max_server_cpu") is not None] or [0])
        body.append([title, f"{mine[0].get('payload_bytes', 0)}",
                     (f"**{fmt_rate(median)}**" + (f" (runs: {spread})" if spread else "")) if median else
                     "failed: " + mine[0].get("error", "?"),
                     vs, fmt_pct(cpu), fmt_ms(codec_half(runs, mode, "p50_ms")), fmt_ms(codec_half(runs, mode, "p99_ms")),
                     f"{codec_half(runs, mode, 'bytes_per_delivery') or 0:.0f}",
                     f"{codec_half(runs, mode, 'data_bytes_per_delivery') or 0:.0f}"])
    md += table(["mode", "payload B", "highest sustained deliveries/s (median)", "vs JSON (deltas: vs the same record whole)",
                 "server CPU", "p50 ms (half rate)", "p99 ms (half rate)", "wire B per delivery", "data B per delivery"], body)
    md += ["", "Each mode on a fresh hub whose default namespace allows fossil deltas; JSON and Protobuf ran twice, "
           "interleaved (JSON, Protobuf, JSON, Protobuf), and the table gives the median. *Wire bytes* are what the "
           "subscribers' sockets read per delivery at the half rate (WebSocket or SSE framing and the push envelope: "
           "channel, offset, time, the publishing client's info); *data bytes* are the publication's `data` field. "
           "The gateway record is seed 000's `gateways:*` payload (186 bytes) with the benchmark's 15-digit stamp and "
           "a media-duration counter that move in every publication; the generator rebuilds each delta to find the "
           "stamp. The uni_sse subscribers are subscribed by their token's `channels` claim and read "
           "`text/event-stream` events; the publisher is a JSON WebSocket client in every mode.", ""]
    targets = codec_targets(rows)
    if targets:
        md += table(["target", "hub", "reference", "verdict"], targets) + [""]
    return md + [SECTION_END.format("codecs")]


def splice(markdown: str, name: str, section: list[str], heading: str | None = None, after: str | None = None) -> None:
    """Replaces section `name` of an existing report (or adds it before the targets). A report
    written before the section had markers has it from `heading` to the next `## `: that is replaced.
    A section not there yet goes right after the line `after` when the report has it."""
    text = open(markdown).read() if os.path.exists(markdown) else "# Benchmarks\n"
    begin, end = SECTION_BEGIN.format(name), SECTION_END.format(name)
    block = "\n".join(section)
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    elif heading and "\n" + heading + "\n" in text:
        head, rest = text.split("\n" + heading + "\n", 1)
        # up to the next section: its heading, or the marker just before it
        ends = [i for i in (rest.find("\n## "), rest.find("\n" + SECTION_BEGIN.split("{}")[0])) if i >= 0]
        text = head + "\n" + block + "\n" + (rest[min(ends):] if ends else "\n")
    elif after and after in text:
        head, rest = text.split(after, 1)
        text = head + after + "\n\n" + block + rest
    elif "\n## Targets" in text:
        head, rest = text.split("\n## Targets", 1)
        text = head + "\n" + block + "\n\n## Targets" + rest
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    open(markdown, "w").write(text)


def report(args: argparse.Namespace) -> None:
    meta, rows = load(args.run)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if args.splice:
        steal = f", hypervisor steal {args.steal} %" if args.steal else ""
        dated = (f"Measured {now} by `{meta['command'].strip()}` (mode **{meta['mode']}**, {args.elapsed} s{steal}); "
                 f"raw data: [bench/results-{'-'.join(meta.get('scenarios', 'codecs').split())}.jsonl]"
                 f"(bench/results-{'-'.join(meta.get('scenarios', 'codecs').split())}.jsonl). The other sections are from "
                 "the run named at the top.")
        ran = set(meta.get("scenarios", "").split())
        if "codecs" in ran:
            splice(args.markdown, "codecs", codecs_section(rows, meta, dated))
        if "start" in ran:
            splice(args.markdown, "start", start_section(rows, meta))
        if "proxies" in ran:
            splice(args.markdown, "proxies", proxies_section(rows, meta, dated))
        if "cluster" in ran:
            splice(args.markdown, "cluster", cluster_section(rows, meta, dated), CLUSTER_TITLE)
        if "failover" in ran:
            # after the cluster table, inside section 5
            splice(args.markdown, "failover", failover_section(rows, meta, dated), after=SECTION_END.format("cluster"))
        print(f"updated the {', '.join(sorted(ran))} section(s) of {args.markdown}", file=sys.stderr)
        return
    full_report(args, meta, rows, now)


def full_report(args: argparse.Namespace, meta: dict, rows: list[dict], now: str) -> None:
    os.makedirs(args.plots, exist_ok=True)
    made = plots(rows, args.plots)
    md: list[str] = []
    md += [
        "# Benchmarks",
        "",
        "Generated by `bench/run.sh` (do not edit by hand: run it again). "
        f"Mode: **{meta['mode']}**, {now}, {args.elapsed} s of scenarios.",
        "",
        f"Command: `{meta['command'].strip()}`",
        "",
    ]
    if args.steal:
        md += [f"Hypervisor steal over the run: **{args.steal} %** of CPU time (this machine is a VM; per-step steal is in "
               "results.jsonl as `steal_pct`). Steal, and other sessions' builds and tests on the same machine, make "
               "the numbers vary from run to run: compare servers within one run, not across runs.", ""]
    md += [
        "Machine:",
        "",
    ]
    md += [f"- {line}" for line in machine()]
    md += [
        "",
        "How: one generator, `hub-bench` (Sources/HubBench: one thread, raw non-blocking sockets on epoll, "
        "its own masked WebSocket client framing), speaks each server's protocol: the hub's Centrifugo JSON protocol, "
        "NATS text protocol and MQTT 3.1.1 (QoS 0) over WebSocket, the FastAPI peer's plain text, the lws mirror's "
        "raw messages (which the kernel floor, `hub-bench floor-server`, also speaks). Every payload is "
        f"128 bytes of JSON carrying the publisher's monotonic clock; the subscribers are in the same process, so "
        "latency is publish-to-deliver on one clock, recorded in an HdrHistogram (3 significant digits). "
        "The hub publishes from a WebSocket client (`allow_publish_for_client`), not per-request HTTP. "
        "A rate step passes when ≥ 99 % of the expected deliveries arrive (within 1 s after the last publish), "
        "p99 ≤ 50 ms and no subscriber is dropped; rates double per step (a step that kept up but missed on "
        "latency is tried again at the same rate, twice if the hypervisor stole ≥ 5 % of the CPU during it), "
        "then up to three steps bisect (geometrically) between the best rate and the lowest that failed above it "
        "(1.41×, then 1.19× or 1.68×, …), then "
        f"a run at half the best delivery rate gives the latency figures. Steps last {meta['step_seconds']} s, "
        f"the half-rate run {meta['half_seconds']} s. Connections come from 127.0.0.2, .3, … (100 per source "
        "address). Server CPU is the server process's user+system time over the publishing window "
        "(100 % = one core, its whole budget); generator CPU is the same for hub-bench.",
        "",
    ]

    insert_at = len(md)
    # Scenario 1 ---------------------------------------------------------------------------
    fan = sort_servers(by(rows, "fanout"))
    md += ["## 1. Fan-out: one channel", ""]
    body = []
    for r in fan:
        h = r.get("half", {})
        if "max_deliveries_per_s" not in r:
            body.append([NAMES.get(r["server"], r["server"]), r.get("subscribers"), f"{r.get('p99_limit_ms', 50):.0f}",
                         "failed: " + r.get("error", "?"), "", "", "", "", "", ""])
            continue
        note = " (no step failed: lower bound)" if r.get("hit_ceiling") else ""
        body.append([
            NAMES.get(r["server"], r["server"]), f"{r['subscribers']:,}", f"{r.get('p99_limit_ms', 50):.0f}",
            f"**{fmt_rate(r['max_deliveries_per_s'])}**{note}", f"{r['max_rate']:.0f}",
            f"{fmt_pct(r.get('max_server_cpu'))} / {fmt_pct(r.get('max_generator_cpu'))}",
            fmt_ms(h.get("p50_ms")), fmt_ms(h.get("p99_ms")), fmt_ms(h.get("p999_ms")),
            f"{r.get('connect_s', 0):.1f}",
        ])
    md += table(["server", "subscribers", "p99 limit ms", "highest sustained deliveries/s", "publishes/s",
                 "server / generator CPU at that rate", "p50 ms (half rate)", "p99 ms (half rate)",
                 "p99.9 ms (half rate)", "connect s"], body)
    floors = []
    big = [r for r in by(rows, "fanout", "step") if r.get("subscribers", 0) > 1000]
    for server in ORDER:
        mine = [r for r in big if r["server"] == server]
        if mine:
            low = min(mine, key=lambda r: (r["rate"], r["p99_ms"]))
            floors.append(f"{NAMES.get(server, server)} {low['p99_ms']:.0f} ms at {low['rate']:.0f}/s")
    md += [""]
    if floors:
        md += ["A single publication's fan-out to 5,000 sockets takes tens of milliseconds on every server here "
               "(p99 at the lowest rate tried: " + ", ".join(floors) + "), so with more than 1,000 subscribers the step "
               "limit scales with the count (50 ms per 1,000 subscribers); with 1,000 it is the 50 ms asked for.", ""]
    compared = [(subs, c) for subs in sorted({r.get("subscribers") for r in fan if r.get("subscribers")})
                if (c := floor_at_hub_half(fan, subs))]
    hub_half = {r.get("subscribers"): r["half"] for r in fan if r["server"] == "hub" and "half" in r}
    if compared:
        md += ["**The kernel floor.** `hub-bench floor-server` is the cheapest server that can do this job: one thread "
               "on epoll, WebSocket framing and nothing else (the lws mirror's wire), and per turn of its loop one "
               "send(2) per client carrying everything read in that turn. Pinned like every server, it was also run at "
               "the hub's half rate, so the two latencies can be read side by side:", ""]
        body = []
        for subs, c in compared:
            h = hub_half.get(subs, {})
            body.append([f"{subs:,}", fmt_rate(c.get("deliveries_per_s")),
                         f"{fmt_ms(h.get('p50_ms'))} / {fmt_ms(h.get('p99_ms'))} / {fmt_ms(h.get('p999_ms'))}",
                         fmt_pct(h.get("server_cpu")),
                         f"{fmt_ms(c.get('p50_ms'))} / {fmt_ms(c.get('p99_ms'))} / {fmt_ms(c.get('p999_ms'))}",
                         fmt_pct(c.get("server_cpu")), fmt_pct(c.get("generator_cpu"))])
        md += table(["subscribers", "deliveries/s", "hub p50 / p99 / p99.9 ms", "hub CPU",
                     "floor p50 / p99 / p99.9 ms", "floor CPU", "generator CPU (floor run)"], body)
        md += [""]
    if any(p.endswith("fanout-throughput.png") for p in made):
        md += ["![fan-out throughput](bench/fanout-throughput.png)", "",
               "![fan-out latency at half rate](bench/fanout-latency.png)", "",
               "![every step](bench/fanout-steps.png)", ""]

    # Scenario 2 ---------------------------------------------------------------------------
    ch = sort_servers(by(rows, "channels"))
    md += ["## 2. Many channels: personal channel + group of ten per connection, publishing into groups", ""]
    body = []
    for r in ch:
        if "max_deliveries_per_s" not in r:
            body.append([NAMES.get(r["server"], r["server"]), f"{r.get('connections', 0):,}", r.get("error", "?"),
                         "", "", "", "", ""])
            continue
        h = r.get("half", {})
        body.append([NAMES.get(r["server"], r["server"]), f"{r['connections']:,}",
                     f"**{fmt_rate(r['max_deliveries_per_s'])}**", f"{fmt_rate(r['max_rate'])}",
                     f"{fmt_pct(r.get('max_server_cpu'))} / {fmt_pct(r.get('max_generator_cpu'))}",
                     fmt_ms(h.get("p50_ms")), fmt_ms(h.get("p99_ms")), fmt_ms(h.get("p999_ms"))])
    md += table(["server", "connections", "highest sustained deliveries/s", "publishes/s",
                 "server / generator CPU", "p50 ms (half)", "p99 ms (half)", "p99.9 ms (half)"], body)
    md += ["", "Channel names: hub `#u<i>` (user-limited personal channel, token `sub` = `u<i>`) and `group<k>`; "
           "NATS `u.<i>`/`group.<k>`; MQTT `u/<i>`/`group/<k>`; FastAPI peer `u<i>`/`group<k>` "
           "(`@group<k> text` publishes). The lws mirror has at most ten mirror instances, so no channels.", ""]

    # Scenario 3 ---------------------------------------------------------------------------
    co = sort_servers(by(rows, "connections"))
    md += ["## 3. Idle connections", ""]
    body = []
    for r in co:
        per = r.get("kib_per_connection")
        body.append([NAMES.get(r["server"], r["server"]), f"{r.get('ready', 0):,} / {r.get('connections', 0):,}",
                     f"{r.get('connect_s', 0):.1f}", f"{r.get('connects_per_s', 0):,.0f}",
                     f"{r.get('rss_before_kib', 0) / 1024:.1f}", f"{r.get('rss_after_kib', 0) / 1024:.1f}",
                     f"**{per:.1f}**" if per is not None else "–", r.get("failures", "")])
    md += table(["server", "connected", "time to connect all, s", "connections/s", "RSS before, MiB",
                 "RSS after, MiB", "KiB per connection", "failures"], body)
    md += ["", "Each connection is logged in and subscribed to its own personal channel (the lws mirror: upgraded, "
           "no channel). RSS is VmRSS from /proc/PID/status, before connecting and 1–2 s (quick/full) after the last one is "
           f"ready. The open-files hard limit here is {meta.get('nofile')} (no CAP_SYS_RESOURCE in this container), "
           f"so the scenario uses {meta.get('idle_connections'):,} connections where 20,000 were asked for.", ""]

    # Scenario 4 ---------------------------------------------------------------------------
    rest = sort_servers(by(rows, "rest"))
    md += ["## 4. REST", ""]
    body = []
    for r in rest:
        cpu = fmt_pct(r.get("server_cpu"))
        if "redis_cpu" in r:
            cpu += f" (+ redis {r['redis_cpu']:.0f} %)"
        body.append([NAMES.get(r["server"], r["server"]), f"`{r['url'].split('127.0.0.1:')[-1].split('/', 1)[-1]}`",
                     f"**{r['rps']:,.0f}**", fmt_ms(r.get("p50_ms")), fmt_ms(r.get("p99_ms")), cpu,
                     f"{r.get('non_2xx', 0)}{' ' + r['socket_errors'] if r.get('socket_errors') else ''}"])
    md += table(["server", "path", "requests/s", "p50 ms", "p99 ms", "server CPU", "non-2xx / socket errors"], body)
    md += ["", f"wrk -t1 -c{meta.get('wrk_connections')} -d{meta.get('wrk_seconds')}s --latency on CPU 1. "
           f"The hub serves `{meta.get('hub_rest_path')}` from its record store (SQLite, the gateway registered "
           "through seed 000's `POST /register` first); the FastAPI peer serves `/status?gw_id=` with one "
           "redis-py GET per request.", ""]

    # Scenario 5 ---------------------------------------------------------------------------
    md += cluster_section(rows, meta, "Measured in the run named at the top.") + [""]
    md += failover_section(rows, meta, "Measured in the run named at the top.") + [""]
    md += codecs_section(rows, meta, "Measured in the run named at the top.") + [""]

    md += start_section(rows, meta) + [""]
    md += proxies_section(rows, meta, "Measured in the run named at the top.") + [""]

    # Targets ------------------------------------------------------------------------------
    md += ["## Targets", ""]
    body = []

    def fan_max(server: str, subs: int) -> float | None:
        for r in fan:
            if r["server"] == server and r.get("subscribers") == subs and "max_deliveries_per_s" in r:
                return r["max_deliveries_per_s"]
        return None

    def why_missing(server: str, subs: int) -> str:
        for r in fan:
            if r["server"] == server and r.get("subscribers") == subs:
                return f"not comparable: {NAMES.get(server, server)} sustained no rate step ({r.get('error', '?')})"
        return "not measured"

    for subs in sorted({r.get("subscribers") for r in fan if r.get("subscribers")}):
        hub = fan_max("hub", subs)
        for peer, factor, label in [("nats", 1.0, "hub ≥ nats"), ("mosquitto", 2.0, "hub ≥ 2× mosquitto"),
                                    ("fastapi", 10.0, "hub ≥ 10× FastAPI"), ("lws", 0.8, "hub ≥ 80 % of lws mirror")]:
            body.append(ratio_line(f"1 ({subs:,} subs): {label}", hub, fan_max(peer, subs), factor, "/s",
                                   missing=why_missing(peer, subs)))
        half = next((r["half"] for r in fan if r["server"] == "hub" and r.get("subscribers") == subs and "half" in r), None)
        if half:
            p99 = half["p99_ms"]
            verdict = f"**met** ({p99:.2f} ms)" if p99 < 10 else f"**missed** ({p99:.1f} ms, {p99 / 10:.1f}× the limit)"
            floor = floor_at_hub_half(fan, subs)
            if floor and p99 >= 10:
                verdict += (f"; the kernel floor at the same {fmt_rate(floor['deliveries_per_s'])} deliveries/s: "
                            f"p99 {floor['p99_ms']:.1f} ms" + (" (it misses too)" if floor["p99_ms"] >= 10 else ""))
            body.append([f"1 ({subs:,} subs): hub p99 < 10 ms at half load", f"{p99:.2f} ms", "10 ms", verdict])
    body += cluster_targets(rows)
    hub_conn = next((r for r in co if r["server"] == "hub"), None)
    if hub_conn and hub_conn.get("kib_per_connection") is not None:
        k = hub_conn["kib_per_connection"]
        verdict = f"**met** ({k:.1f} KiB)" if k < 10 else f"**missed** ({k:.1f} KiB, {100 * (k / 10 - 1):.0f} % over)"
        body.append(["3: hub < 10 KiB RSS per idle connection", f"{k:.1f} KiB", "10 KiB", verdict])
    hub_rest = next((r for r in rest if r["server"] == "hub"), None)
    fa_rest = next((r for r in rest if r["server"] == "fastapi"), None)
    if hub_rest and fa_rest:
        row = ratio_line("4: hub ≥ 10× FastAPI requests/s", hub_rest["rps"], fa_rest["rps"], 10.0, "/s")
        body.append(row)
        p_ok = hub_rest.get("p99_ms", 1e9) <= fa_rest.get("p99_ms", 0)
        body.append(["4: hub p99 ≤ FastAPI p99", f"{fmt_ms(hub_rest.get('p99_ms'))} ms", f"{fmt_ms(fa_rest.get('p99_ms'))} ms",
                     "**met**" if p_ok else "**missed**"])
    body += codec_targets(rows)
    md += table(["target", "hub", "reference", "verdict"], body)
    md += ["", "Scenario 4: both sides serve seed 000's `/status?gw_id=gw01` (the hub: `" + str(meta.get("hub_rest_path"))
           + "` from its record store; the peer: one redis-py GET per request).", ""]

    # Bottleneck check ---------------------------------------------------------------------
    md += ["## Who is the bottleneck", ""]
    lines = []
    for r in fan + ch:
        if "max_deliveries_per_s" not in r:
            continue
        s, g = r.get("max_server_cpu"), r.get("max_generator_cpu", 0)
        what = f"{NAMES.get(r['server'], r['server'])}, {r['scenario']}" + (
            f" {r['subscribers']:,} subs" if "subscribers" in r else "")
        if s is None:
            continue
        if g >= 90 and s < 90:
            lines.append(f"- {what}: generator {g:.0f} %, server {s:.0f}% — **generator-bound, the figure is a lower bound**")
        else:
            lines.append(f"- {what}: server {s:.0f} % of its core, generator {g:.0f} % of its core at the best step"
                         f" (steal {r.get('max_steal_pct', 0):.0f} %)")
    md += lines or ["(no data)"]
    md += ["", "The step after the best one failed on latency or delivery while the server's core was saturated "
           "(see results.jsonl, phase `step`), so the figures above are the servers' limits, not the generator's, "
           "unless marked.", ""]

    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hub-profile-notes.md")
    profile = os.path.join(args.plots, "hub-profile.md")
    if os.path.exists(profile) or os.path.exists(notes):
        md += ["## Where the hub's time goes", ""]
        if os.path.exists(notes):
            md += [open(notes).read().strip(), ""]
        if os.path.exists(profile):
            md += [open(profile).read().strip(), ""]

    md += ["## Raw data", "", "Every step and summary: [bench/results.jsonl](bench/results.jsonl) "
           "(one JSON object per line; `phase` is `step`, `half` or `summary`).", ""]
    md[insert_at:insert_at] = summary(fan, ch, co, rest)
    open(args.markdown, "w").write("\n".join(md))
    print(f"wrote {args.markdown} and {len(made)} plots", file=sys.stderr)


CLUSTER_TITLE = "## 5. Two hub nodes on Redis"
# scenario 5's cross-node runs: label -> the Redis they ran on
CLUSTER_MODES = [("hub-cluster", "standalone redis-server"), ("hub-rcluster", "Redis Cluster, 3 primaries + 3 replicas")]
# the targets: cross-node deliveries/s at least this share of one node's, by subscribers
CLUSTER_FACTORS = {1000: 0.7, 5000: 0.8}


def single_node(rows: list[dict], subs: int) -> tuple[float | None, str]:
    """The single-node hub ceiling at `subs` from the same run: scenario 1's, else scenario 5's own
    reference run (hub-single, made when scenario 1 did not run)."""
    for scenario, server, where in (("fanout", "hub", "scenario 1"), ("cluster", "hub-single", "reference run")):
        for r in by(rows, scenario):
            if r["server"] == server and r.get("subscribers") == subs and "max_deliveries_per_s" in r:
                return r["max_deliveries_per_s"], where
    return None, "not run"


def cluster_targets(rows: list[dict]) -> list[list[str]]:
    body = []
    cl = by(rows, "cluster")
    for label, redis in CLUSTER_MODES:
        for r in sorted((r for r in cl if r["server"] == label), key=lambda r: r.get("subscribers", 0)):
            subs = r.get("subscribers", 0)
            factor = CLUSTER_FACTORS.get(subs, 0.8 if subs > 1000 else 0.7)
            single, _ = single_node(rows, subs)
            body.append(ratio_line(f"5 ({subs:,} subs, {redis.split(',')[0]}): cross-node ≥ {factor:g}× single node",
                                   r.get("max_deliveries_per_s"), single, factor, "/s",
                                   missing="no single-node figure in this run" if r.get("max_deliveries_per_s")
                                   else f"cross-node sustained no rate step ({r.get('error', '?')})"))
    return body


def cluster_section(rows: list[dict], meta: dict, dated: str) -> list[str]:
    md = [SECTION_BEGIN.format("cluster"), CLUSTER_TITLE, ""]
    cl = [r for r in by(rows, "cluster") if r["server"] != "hub-single"]
    if not cl:
        return md + ["Not run.", "", SECTION_END.format("cluster")]
    md += [dated, ""]
    body = []
    order = [label for label, _ in CLUSTER_MODES]
    for r in sorted(cl, key=lambda r: (order.index(r["server"]) if r["server"] in order else 9, r.get("subscribers", 0))):
        subs = r.get("subscribers", 0)
        single, where = single_node(rows, subs)
        half = r.get("half") or {}
        best = r.get("max_deliveries_per_s")
        body.append([dict(CLUSTER_MODES).get(r["server"], r["server"]), f"{subs:,}",
                     f"**{fmt_rate(best)}**" if best else f"failed: {r.get('error', '?')}",
                     f"{fmt_rate(single)} ({where})" if single else "not run",
                     f"**{best / single:.2f}×**" if best and single else "–",
                     fmt_ms(half.get("p50_ms")), fmt_ms(half.get("p99_ms")), fmt_ms(half.get("p999_ms")),
                     stopped_by(rows, "cluster", r["server"], subs, "node B's CPU")])
    md += table(["Redis", "subscribers (node B)", "cross-node deliveries/s (publisher on node A)", "single node",
                 "cross-node / single node", "p50 ms (half rate)", "p99 ms (half rate)", "p99.9 ms (half rate)",
                 "what stopped the next step"], body)
    md += ["", "Both nodes and Redis share the server CPU with the single-node hub's pinning (CPU 0; the generator on "
           "CPU 1). Standalone: every publication goes node A → redis-server (Lua script: stream append + PUBLISH) → "
           "node B → its subscribers. Redis Cluster: six `redis-server --cluster-enabled yes` (three primaries, a "
           "replica each, `redis-cli --cluster create --cluster-replicas 1`), the hubs given them with "
           "`--redis-cluster`; the channel's stream append and its `SPUBLISH` go to the primary owning its slot, and "
           "node B reads it with `SSUBSCRIBE` there. The single-node figure is scenario 1's hub from the same run, or, "
           "when scenario 1 did not run, a single-node hub run in this scenario at the same subscriber count.", ""]
    targets = cluster_targets(rows)
    if targets:
        md += table(["target", "hub", "reference", "verdict"], targets) + [""]
    return md + [SECTION_END.format("cluster")]


FAILOVER_MODES = {"sentinel": "Redis Sentinel", "cluster": "Redis Cluster"}


def failover_section(rows: list[dict], meta: dict, dated: str) -> list[str]:
    md = [SECTION_BEGIN.format("failover"), "### Failover: publish gap seen by a subscriber", ""]
    summaries = {r.get("redis", "sentinel"): r for r in by(rows, "failover")}
    kills = [r for r in rows if r.get("scenario") == "failover" and r.get("phase") == "kill"]
    if not summaries:
        return md + ["Not run.", "", SECTION_END.format("failover")]
    md += [dated, ""]
    order = list(FAILOVER_MODES)
    body = []
    for mode in sorted(summaries, key=lambda m: order.index(m) if m in order else 9):
        s = summaries[mode]
        mine = sorted((k for k in kills if k.get("redis", "sentinel") == mode), key=lambda k: k["kill"])
        per_kill = ", ".join(fmt_ms(k.get("gap_ms")) if k.get("gap_ms") is not None else "none" for k in mine)
        body.append([FAILOVER_MODES.get(mode, mode), f"{s.get('kills')} ({s.get('recovered')} delivered again)",
                     f"**{fmt_ms(s.get('gap_p50_ms'))} / {fmt_ms(s.get('gap_max_ms'))}**" if "gap_p50_ms" in s else
                     "no delivery after a kill", per_kill,
                     f"{fmt_ms(s.get('outage_p50_ms'))} / {fmt_ms(s.get('outage_max_ms'))}" if "outage_p50_ms" in s else "–",
                     str(s.get("failed", 0)), str(s.get("acked_undelivered", 0))])
    md += table(["Redis", "SIGKILLs of the channel's primary", "publish gap at the subscriber p50 / max ms",
                 "gap per kill ms", "acknowledged again after p50 / max ms", "publishes refused (all kills)",
                 "acknowledged, not delivered (all kills)"], body) + [""]
    s = next(iter(summaries.values()))
    md += ["`bench/failover.py`, one hub on each Redis, all on the server CPU. *Redis Sentinel*: a primary and a replica "
           "`redis-server` and three `redis-sentinel`s (quorum 2, `down-after-milliseconds` "
           f"{s.get('down_after_ms', 1000)}, `failover-timeout` 3000), the hub given `--redis-sentinel … "
           "--redis-master-name`. *Redis Cluster*: six `redis-server --cluster-enabled yes` (three primaries, a replica "
           f"each, `cluster-node-timeout` {s.get('down_after_ms', 1000)}), the hub given `--redis-cluster`; the kill hits "
           "the primary owning the channel's slot (`CLUSTER KEYSLOT`, `CLUSTER NODES`). A publisher POSTs `/api/publish` "
           f"every {s.get('interval_ms', 10):g} ms (one thread per request, so one hanging in the failover holds no other "
           "back); a WebSocket subscriber on a channel with history subscribes again on an `unsubscribe` push (code "
           "2500, the stream's new epoch under a new Sentinel primary), as the SDKs do. Per kill: the *gap* runs from "
           "the last publication delivered before the SIGKILL to the first delivered one that was sent after it and "
           "acknowledged; *acknowledged again after* runs from the SIGKILL to the acknowledgement of the first publish "
           "sent after it (on the Cluster the hub retries an unreachable node for up to 3 s, so publishes wait rather "
           "than fail). The dead server is restarted (as the new primary's replica; a cluster node rejoins from its "
           "nodes.conf), and the next kill waits until every replica is in sync again. *Acknowledged, not delivered*: "
           "publications the old primary acknowledged but had not replicated, or published in a new epoch before the "
           "subscriber was back (its resubscribe answers `recovered: false`; channels.md, \"Failover (Redis "
           "Sentinel)\"). Most of the gap is the failure detection (`down-after-milliseconds`, `cluster-node-timeout`) "
           "and the election.", ""]
    return md + [SECTION_END.format("failover")]


START_STORES = {"hub": "embedded (SQLite)", "hub-redis": "Redis"}
START_TITLE = "## 7. Gateway allocation: seed 000's /start against N registered gateways"


def start_section(rows: list[dict], meta: dict) -> list[str]:
    return [SECTION_BEGIN.format("start")] + start_body(rows, meta) + [SECTION_END.format("start")]


def start_body(rows: list[dict], meta: dict) -> list[str]:
    md = [START_TITLE, ""]
    runs = by(rows, "start")
    if not runs:
        return md + ["Not run.", ""]
    md += [f"Measured {meta.get('started', '?')} ({meta.get('mode', '?')} mode, `{meta.get('command', '').strip()}`).", ""]
    body = []
    for r in sorted(runs, key=lambda r: (r["server"], r["gateways"])):
        body.append([START_STORES.get(r["server"], r["server"]), f"{r['gateways']:,}", f"{r.get('starts', 0):,} / {r.get('rounds', 0):,}",
                     f"**{fmt_ms(r.get('start_p50_ms'))}**", f"**{fmt_ms(r.get('start_p99_ms'))}**",
                     fmt_ms(r.get("release_p50_ms")), fmt_ms(r.get("release_p99_ms")), f"{r.get('register_s', 0):.1f} s"])
    md += table(["hub store", "gateways", "starts ok / rounds", "/start p50 ms", "/start p99 ms",
                 "release p50 ms", "release p99 ms", "registering them all"], body)
    growth = []
    for server in sorted({r["server"] for r in runs}):
        mine = sorted((r for r in runs if r["server"] == server and r.get("start_p50_ms")), key=lambda r: r["gateways"])
        if len(mine) >= 2:
            growth.append(f"{START_STORES.get(server, server)}: /start p50 at {mine[-1]['gateways']:,} gateways is "
                          f"{mine[-1]['start_p50_ms'] / mine[0]['start_p50_ms']:.2f}× the p50 at {mine[0]['gateways']:,}")
    md += ["", "`hub-bench starts` registers the gateways through `POST /register` (16 connections), all pointing at a "
           "stand-in launcher (seed 002's API, answering 200 with the body it got) in the generator, then, one request "
           "at a time: `POST /start` (timed), and the release that frees the gateway again, `POST /stop` then "
           "`POST /register` (timed together). A start reads a few members of the store's free-gateway set "
           "and claims one by compare-and-set; it never lists the gateways, so its time should not grow with "
           "their number" + (": " + "; ".join(growth) + "." if growth else "."),
           "",
           "Release build; the hub (and redis-server) on CPU 0, the generator on CPU 1. For comparison, before the "
           "free-gateway set a start listed every gateway record (500 per read): measured once, on 2026-12-06 with "
           "debug builds of both on this machine, its p50 went from 4.5 ms at 10 gateways to 77 ms (p99 199 ms) at "
           "10,000, where the set's was 2.2 ms and 2.6 ms.", ""]
    return md


PROXIES_TITLE = "## 8. Backend proxies: connects and subscribes decided by a backend, against direct JWT"


def proxies_section(rows: list[dict], meta: dict, dated: str) -> list[str]:
    return [SECTION_BEGIN.format("proxies")] + proxies_body(rows, meta, dated) + [SECTION_END.format("proxies")]


def proxies_body(rows: list[dict], meta: dict, dated: str) -> list[str]:
    md = [PROXIES_TITLE, ""]
    summary = by(rows, "proxies")
    if not summary:
        return md + ["Not run.", ""]
    s = summary[-1]
    md += [dated, ""]
    connects = [r for r in rows if r.get("scenario") == "proxies" and r.get("phase") == "connect"]
    subscribes = [r for r in rows if r.get("scenario") == "proxies" and r.get("phase") == "subscribe"]
    mode_name = {"jwt": "direct: HS256 token checked by the hub", "proxy": "connect proxy: the backend allows"}
    body = []
    direct = {r["round"]: r for r in connects if r["mode"] == "jwt"}
    rate_ratios, cpu_ratios = [], []
    for r in sorted(connects, key=lambda r: (r["round"], r["mode"])):
        ratio = "–"
        d = direct.get(r["round"])
        if r["mode"] == "proxy" and d and d.get("connects_per_s"):
            rate_ratios.append(r["connects_per_s"] / d["connects_per_s"])
            ratio = f"{rate_ratios[-1]:.2f}×"
            if r.get("server_cpu_us_per_connect") and d.get("server_cpu_us_per_connect"):
                cpu_ratios.append(r["server_cpu_us_per_connect"] / d["server_cpu_us_per_connect"])
                ratio += f" (CPU {cpu_ratios[-1]:.2f}×)"
        body.append([str(r["round"]), mode_name.get(r["mode"], r["mode"]), f"{r.get('ok', 0):,} / {r.get('connections', 0):,}",
                     f"**{fmt_rate(r.get('connects_per_s'))}**", fmt_ms(r.get("p50_ms")), fmt_ms(r.get("p99_ms")),
                     f"{r['server_cpu_us_per_connect']:.0f}" if r.get("server_cpu_us_per_connect") else "–",
                     f"{r['backend_cpu_s']:.2f} s" if "backend_cpu_s" in r else "–", ratio])
    md += table(["round", "connect", "ok / tried", "connects/s", "connect p50 ms", "connect p99 ms",
                 "hub CPU µs per connect", "backend CPU", "proxy / direct, same round"], body) + [""]
    sub_name = {"jwt": "direct: subscription token", "proxy": "subscribe proxy: the backend allows"}
    body = []
    for r in sorted(subscribes, key=lambda r: (r["round"], r["mode"])):
        body.append([str(r["round"]), sub_name.get(r["mode"], r["mode"]), f"{r.get('ok', 0):,} / {r.get('subscribes', 0):,}",
                     f"**{fmt_ms(r.get('p50_ms'))}**", f"**{fmt_ms(r.get('p99_ms'))}**", fmt_ms(r.get("mean_ms"))])
    md += table(["round", "subscribe", "ok / tried", "p50 ms", "p99 ms", "mean ms"], body) + [""]
    spread = (f" (per round {min(rate_ratios):.2f}–{max(rate_ratios):.2f}×; hub CPU per connect "
              f"{statistics.median(cpu_ratios):.2f}× direct, per round {min(cpu_ratios):.2f}–{max(cpu_ratios):.2f}×)"
              if rate_ratios and cpu_ratios else "")
    md += [f"Medians over the rounds: **{fmt_rate(s.get('connects_per_s_proxy'))} connects/s through the connect proxy "
           f"against {fmt_rate(s.get('connects_per_s_jwt'))} with a token checked by the hub; the same-round ratio's "
           f"median is {statistics.median(rate_ratios) if rate_ratios else 0:.2f}×**{spread}; hub CPU per connect "
           f"{s.get('server_cpu_us_per_connect_proxy', 0):.0f} µs against {s.get('server_cpu_us_per_connect_jwt', 0):.0f} µs. "
           f"The subscribe proxy adds "
           f"**{s.get('subscribe_added_p50_ms', 0):.3f} ms at p50 and {s.get('subscribe_added_p99_ms', 0):.3f} ms at p99** "
           f"(all rounds pooled: {fmt_ms(s.get('subscribe_p50_ms_proxy'))} / {fmt_ms(s.get('subscribe_p99_ms_proxy'))} ms against "
           f"{fmt_ms(s.get('subscribe_p50_ms_jwt'))} / {fmt_ms(s.get('subscribe_p99_ms_jwt'))} ms).", "",
           f"`hub-bench proxies`: {s.get('concurrency', '?')} threads each open a WebSocket, send `connect` and wait for the reply, "
           "then reset the connection (connects/s is the whole batch over its wall time; latency from the TCP connect to the "
           "reply); then one connected client subscribes and unsubscribes in turn, the subscribe timed. The modes alternate "
           "within each round, on one hub started once with both proxies configured (`--proxy-connect-endpoint`, "
           "`--proxy-subscribe-endpoint`; namespace `proxied` has `proxy_subscribe`, `direct` does not). The backend is "
           "`hub-bench proxy-backend`, one epoll thread answering allow on kept-alive connections; its CPU time above "
           "shows it is not what limits the rate.", "",
           "Release build, one service thread; the hub on CPU 0, the generator and the backend on CPU 1. Other builds "
           "may share this 2-core machine during a run: compare the two modes within one round (they run back to "
           "back) rather than absolute numbers across runs.", ""]
    return md


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("wrk-json")
    w.add_argument("file")
    w.add_argument("--server", required=True)
    w.add_argument("--url", required=True)
    w.add_argument("--server-cpu-s", default="0")
    w.add_argument("--redis-cpu-s", default="0")
    w.add_argument("--seconds", default="1")
    c = sub.add_parser("cost-json")
    c.add_argument("--results", required=True)
    c.add_argument("--server", required=True)
    c.add_argument("--busy", required=True, help="callgrind out file of the busy run")
    c.add_argument("--idle", required=True, help="callgrind out file of the idle run")
    c.add_argument("--subscribers", type=int, default=1000)
    c.add_argument("--strace-busy", help="strace -c output of the busy run")
    c.add_argument("--strace-idle", help="strace -c output of the idle run")
    k = sub.add_parser("cost-check")
    k.add_argument("--results", required=True)
    k.add_argument("--server", required=True)
    r = sub.add_parser("report")
    r.add_argument("--run", required=True)
    r.add_argument("--elapsed", default="?")
    r.add_argument("--steal", default="")
    r.add_argument("--markdown", required=True)
    r.add_argument("--plots", required=True)
    r.add_argument("--splice", action="store_true",
                   help="only stand-alone sections ran (codecs, start, proxies, cluster, failover): replace them in --markdown, keep the rest")
    args = parser.parse_args()
    if args.command == "wrk-json":
        wrk_json(args)
    elif args.command == "cost-json":
        cost_json(args)
    elif args.command == "cost-check":
        cost_check(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
