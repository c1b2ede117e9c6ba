"""Turns bench/run.sh's results into docs/benchmarks.md and docs/bench/*.png.

    report.py report --run bench/results/latest --markdown docs/benchmarks.md --plots docs/bench
    report.py wrk-json wrk-output.txt --server hub --url URL ...   (one JSON line from wrk's text)
    report.py cost-json --results R --server hub --busy CG --idle CG   (scenario cost's line from two
        callgrind runs; cost-check --results R --server hub: did the busy run keep up)
    report.py report ... --splice   (a run of only stand-alone scenarios, codecs, start, proxies,
        cluster, failover, cores, cost: their sections of docs/benchmarks.md are replaced, the rest kept)
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

ORDER = ["hub", "nats", "mosquitto", "fastapi", "lws", "floor", "floor-128"]
NAMES = {
    "hub": "hub",
    "nats": "nats-server (WebSocket)",
    "mosquitto": "mosquitto (MQTT over WebSocket)",
    "fastapi": "FastAPI/uvicorn",
    "lws": "libwebsockets mirror",
    "floor": "kernel floor (epoll + send, no protocol; the hub's bytes per delivery)",
    "floor-128": "kernel floor, 128-byte payload (reference, once)",
}
# Yardsticks, not peers: never "the best peer".
YARDSTICKS = {"floor", "floor-128"}

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
        f"CPU: {model}, {os.cpu_count()} cores (server pinned to CPU 0, generator and wrk to CPU 1; "
        "the two-core runs: both on CPUs 0-1)",
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
    fan = sort_servers([r for r in collapse(by(rows, "fanout")) if "max_deliveries_per_s" in r])
    if fan:
        servers = [s for s in ORDER if any(r["server"] == s for r in fan)]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for s in servers:
            pts = sorted((r["subscribers"], r["max_deliveries_per_s"]) for r in fan if r["server"] == s)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=NAMES.get(s, s))
        ax.set_xlabel("subscribers (one channel)")
        ax.set_ylabel("highest sustained deliveries/s")
        ax.set_yscale("log")
        ax.set_title("Fan-out throughput (p99 ≤ 50 ms, all delivered; median of runs)")
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


# ---------------------------------------------------------------------------------------------
# Repeats: scenario 1 (hub, floor), scenario 2 (hub, nats) and scenario cores run BENCH_REPEATS
# times each, interleaved; every line carries its round as "repeat".

LATENCY_KEYS = ("p50_ms", "p99_ms", "p999_ms", "deliveries_per_s", "server_cpu", "generator_cpu", "bytes_per_delivery",
                "data_bytes_per_delivery")


def collapse(items: list[dict]) -> list[dict]:
    """One summary per server and size from repeated runs: the median run's line (by ceiling: its
    publishes/s, CPU, connect time) with the ceiling and the half-rate and compare figures replaced
    by their medians over the runs that sustained a step; `runs` holds every run's line."""
    groups: dict[tuple, list[dict]] = {}
    for r in items:
        groups.setdefault((r["server"], r.get("subscribers"), r.get("connections")), []).append(r)
    out = []
    for runs in groups.values():
        runs = sorted(runs, key=lambda r: r.get("repeat", 1))
        ok = [r for r in runs if "max_deliveries_per_s" in r]
        if not ok:
            row = dict(runs[0])
        else:
            ranked = sorted(ok, key=lambda r: r["max_deliveries_per_s"])
            row = dict(ranked[(len(ranked) - 1) // 2])
            row["max_deliveries_per_s"] = statistics.median(r["max_deliveries_per_s"] for r in ok)
            for part in ("half", "compare"):
                parts = [r[part] for r in ok if part in r]
                if parts:
                    merged = dict(row.get(part) or parts[0])
                    for key in LATENCY_KEYS:
                        values = [p[key] for p in parts if p.get(key) is not None]
                        if values:
                            merged[key] = statistics.median(values)
                    row[part] = merged
        row["runs"] = runs
        out.append(row)
    return out


def run_values(row: dict, get) -> list[float]:
    """`get(run)` over a collapsed row's runs, where it has a value."""
    out = []
    for r in row.get("runs", [row]):
        try:
            v = get(r)
        except (KeyError, TypeError):
            v = None
        if v is not None:
            out.append(v)
    return out


def spread(values: list[float], fmt=fmt_rate, unit: str = "") -> str:
    """" (min–max, N runs)" when there was more than one run."""
    if len(values) < 2:
        return ""
    return f" ({fmt(min(values))}–{fmt(max(values))}{unit}, {len(values)} runs)"


def ceiling_cell(row: dict | None) -> str:
    if not row or "max_deliveries_per_s" not in row:
        return "–"
    return f"**{fmt_rate(row['max_deliveries_per_s'])}**" + spread(run_values(row, lambda r: r["max_deliveries_per_s"]))


def p99_cell(row: dict | None, part: str = "half", unit: str = "") -> str:
    if not row or part not in row:
        return "–"
    return fmt_ms(row[part].get("p99_ms")) + unit + spread(run_values(row, lambda r: r[part]["p99_ms"]), fmt_ms)


def rounds(rows: list[dict], scenario: str, server: str, **match) -> dict[int, dict]:
    """Summary lines of SERVER in SCENARIO by round."""
    return {r.get("repeat", 1): r for r in by(rows, scenario)
            if r["server"] == server and all(r.get(k) == v for k, v in match.items())}


def round_ratios(a: dict[int, dict], b: dict[int, dict], get) -> list[float]:
    """get(a) / get(b) for each round both ran (b's run came right after a's)."""
    out = []
    for i in sorted(set(a) & set(b)):
        try:
            x, y = get(a[i]), get(b[i])
        except (KeyError, TypeError):
            continue
        if x is not None and y:
            out.append(x / y)
    return out


def p99_ratios(hub: dict[int, dict], floor: dict[int, dict]) -> list[float]:
    """Per round: the hub's half-rate p99 over the floor's p99 at that same rate (its compare run)."""
    return [hub[i]["half"]["p99_ms"] / floor[i]["compare"]["p99_ms"] for i in sorted(set(hub) & set(floor))
            if "half" in hub[i] and floor[i].get("compare", {}).get("p99_ms")]


def ratio_verdict(ratios: list[float], target: float, at_least: bool = True) -> str:
    """met/missed by the median of per-round ratios, with their spread."""
    if not ratios:
        return "not measured"
    m = statistics.median(ratios)
    ok = m >= target if at_least else m <= target
    rng = f"; rounds {min(ratios):.2f}–{max(ratios):.2f}×" if len(ratios) > 1 else ""
    return f"**{'met' if ok else 'missed'}** (median {m:.2f}×{rng}; target {'≥' if at_least else '≤'} {target:g}×)"


def floor_comparisons(rows: list[dict]) -> list[dict]:
    """The issue's ratios against the kernel floor (scenario 1) and nats-server (scenario 2), per
    size: per-round ratios (each pair of runs back to back), their median judged, the ratio of the
    medians beside it."""
    out = []
    fan = collapse(by(rows, "fanout"))
    for subs in sorted({r.get("subscribers") for r in fan if r.get("subscribers")}):
        hub_rounds, floor_rounds = rounds(rows, "fanout", "hub", subscribers=subs), rounds(rows, "fanout", "floor", subscribers=subs)
        hub = next((r for r in fan if r["server"] == "hub" and r.get("subscribers") == subs), None)
        floor = next((r for r in fan if r["server"] == "floor" and r.get("subscribers") == subs), None)
        if not hub or not floor:
            continue
        out.append({"what": f"1 ({subs:,} subs): ceiling, hub / kernel floor", "target": 0.8, "at_least": True,
                    "hub": ceiling_cell(hub), "reference": ceiling_cell(floor),
                    "ratios": round_ratios(hub_rounds, floor_rounds, lambda r: r["max_deliveries_per_s"]),
                    "of_medians": (hub.get("max_deliveries_per_s") or 0) / floor["max_deliveries_per_s"]
                    if floor.get("max_deliveries_per_s") else None,
                    "hub_value": hub.get("max_deliveries_per_s"), "ref_value": floor.get("max_deliveries_per_s"), "unit": "/s"})
        out.append({"what": f"1 ({subs:,} subs): p99 at the hub's half rate, hub / kernel floor at the same deliveries/s",
                    "target": 1.2, "at_least": False, "hub": p99_cell(hub, unit=" ms"), "reference": p99_cell(floor, "compare", " ms"),
                    "ratios": p99_ratios(hub_rounds, floor_rounds),
                    "of_medians": hub["half"]["p99_ms"] / floor["compare"]["p99_ms"]
                    if "half" in hub and floor.get("compare", {}).get("p99_ms") else None,
                    "hub_value": hub.get("half", {}).get("p99_ms"), "ref_value": floor.get("compare", {}).get("p99_ms"),
                    "unit": " ms"})
    ch = collapse(by(rows, "channels"))
    hub = next((r for r in ch if r["server"] == "hub"), None)
    nats = next((r for r in ch if r["server"] == "nats"), None)
    floor = next((r for r in ch if r["server"] == "floor"), None)

    def channels_ceiling(name: str, a: dict, a_key: str, ref_name: str, b: dict, b_key: str, target) -> dict:
        """Scenario 2: a's ceiling over b's, per round and of the medians."""
        return {"what": f"2 ({a.get('connections', 0):,} connections): ceiling, {name} / {ref_name}", "target": target,
                "at_least": True, "hub": ceiling_cell(a), "reference": ceiling_cell(b),
                "ratios": round_ratios(rounds(rows, "channels", a_key), rounds(rows, "channels", b_key),
                                       lambda r: r["max_deliveries_per_s"]),
                "of_medians": (a.get("max_deliveries_per_s") or 0) / b["max_deliveries_per_s"]
                if b.get("max_deliveries_per_s") else None,
                "hub_value": a.get("max_deliveries_per_s"), "ref_value": b.get("max_deliveries_per_s"), "unit": "/s"}

    if hub and nats:
        out.append(channels_ceiling("hub", hub, "hub", "nats-server", nats, "nats", 2.0))
    # Scenario 2's yardstick, no target of its own: what the cheapest server doing one send per
    # delivery sustains in the same shape, against the hub and against nats-server (the 2x target
    # asks that of any server).
    if floor and floor.get("max_deliveries_per_s"):
        for name, key, server in (("hub", "hub", hub), ("nats-server", "nats", nats)):
            if server:
                out.append(channels_ceiling(name, server, key, "kernel floor", floor, "floor", None))
    return out


def floor_section(rows: list[dict]) -> list[str]:
    comparisons = floor_comparisons(rows)
    md = ["## Against the kernel floor (and nats-server on many channels)", ""]
    if not comparisons:
        return md + ["Not run (needs the hub and the floor in scenario 1, or the hub and nats-server in scenario 2).", ""]
    body = []
    for c in comparisons:
        ratios = c["ratios"]
        body.append([c["what"], c["hub"], c["reference"],
                     (f"**{statistics.median(ratios):.2f}×**" + (f" ({min(ratios):.2f}–{max(ratios):.2f}×)" if len(ratios) > 1 else ""))
                     if ratios else "–",
                     f"{c['of_medians']:.2f}×" if c["of_medians"] else "–", target_cell(c), verdict_cell(c)])
    md += table(["what", "hub: median (min–max)", "reference: median (min–max)",
                 "hub / reference: median of per-round ratios (min–max)", "ratio of the medians", "target", "verdict"], body)
    md += ["", "Each pair ran back to back in one round (hub, then floor or nats-server; rounds interleaved: A B A B …), so "
           "drift on this shared machine hits both; a target counts as met only when the **median of the per-round "
           "ratios** meets it (the ratio of the two medians is shown beside it). The floor's p99 is its `--compare-deliveries` "
           "run at the hub's half rate of the same round, so both latencies are at the same delivery rate.", ""]
    return md


def floor_targets(rows: list[dict]) -> list[list[str]]:
    """The same ratios as lines of the targets table."""
    body = []
    for c in floor_comparisons(rows):
        unit = c["unit"]
        value = (lambda v: f"{fmt_rate(v)}{unit}") if unit == "/s" else (lambda v: f"{fmt_ms(v)}{unit}")
        name = c["what"].replace(", hub / ", ": hub vs ").replace(" at the same deliveries/s", "")
        body.append([f"{name} ({target_cell(c)}, median of rounds)" if c["target"] is not None else f"{name} (yardstick)",
                     value(c["hub_value"]) if c["hub_value"] is not None else "–",
                     value(c["ref_value"]) if c["ref_value"] is not None else "–", verdict_cell(c)])
    return body


def target_cell(c: dict) -> str:
    return f"{'≥' if c['at_least'] else '≤'} {c['target']:g}×" if c["target"] is not None else "–"


def verdict_cell(c: dict) -> str:
    """A comparison's verdict; the yardstick rows (no target) say so."""
    if c["target"] is None:
        return "yardstick (no target)"
    return ratio_verdict(c["ratios"], c["target"], c["at_least"])


CORES_TITLE = "### Two cores: hub --threads 2 against the floor on two epoll loops"


def cores_section(rows: list[dict], reference: list[dict], dated: str) -> list[str]:
    """Scenario cores beside scenario 1's one-core figures (`reference`: rows holding them)."""
    md = [SECTION_BEGIN.format("cores"), CORES_TITLE, ""]
    cores = collapse(by(rows, "cores"))
    if not cores:
        return md + ["Not run.", "", SECTION_END.format("cores")]
    md += [dated, ""]
    one = collapse(by(reference, "fanout"))

    def find(items: list[dict], server: str, subs: int) -> dict | None:
        return next((r for r in items if r["server"] == server and r.get("subscribers") == subs), None)

    def ratio(a: dict | None, b: dict | None) -> str:
        if not a or not b or not a.get("max_deliveries_per_s") or not b.get("max_deliveries_per_s"):
            return "–"
        return f"{a['max_deliveries_per_s'] / b['max_deliveries_per_s']:.2f}×"

    body, lat = [], []
    for subs in sorted({r.get("subscribers") for r in cores if r.get("subscribers")}):
        hub2, floor2 = find(cores, "hub-2t", subs), find(cores, "floor-2t", subs)
        hub1, floor1 = find(one, "hub", subs), find(one, "floor", subs)
        per_round = round_ratios(rounds(rows, "cores", "hub-2t", subscribers=subs),
                                 rounds(rows, "cores", "floor-2t", subscribers=subs), lambda r: r["max_deliveries_per_s"])
        cpu = lambda r: (f"{fmt_pct(r.get('max_server_cpu'))} / {fmt_pct(r.get('max_generator_cpu'))}"
                         if r and "max_deliveries_per_s" in r else "–")
        body.append([f"{subs:,}", ceiling_cell(hub2), cpu(hub2), ceiling_cell(floor2), cpu(floor2),
                     (f"**{statistics.median(per_round):.2f}×**" + (f" ({min(per_round):.2f}–{max(per_round):.2f}×)"
                                                                    if len(per_round) > 1 else "")) if per_round else "–",
                     fmt_rate(hub1.get("max_deliveries_per_s")) if hub1 else "–", ratio(hub2, hub1),
                     fmt_rate(floor1.get("max_deliveries_per_s")) if floor1 else "–", ratio(floor2, floor1)])
        p99s = p99_ratios(rounds(rows, "cores", "hub-2t", subscribers=subs),
                          rounds(rows, "cores", "floor-2t", subscribers=subs))
        lat.append([f"{subs:,}", fmt_rate(hub2.get("half", {}).get("deliveries_per_s")) if hub2 else "–",
                    p99_cell(hub2) if hub2 else "–", p99_cell(floor2, "compare") if floor2 else "–",
                    (f"**{statistics.median(p99s):.2f}×**" + (f" ({min(p99s):.2f}–{max(p99s):.2f}×)" if len(p99s) > 1 else ""))
                    if p99s else "–",
                    p99_cell(hub1) if hub1 else "–"])
    md += table(["subscribers", "hub --threads 2: deliveries/s, median (min–max)", "its server / generator CPU",
                 "floor, 2 loops: deliveries/s", "its server / generator CPU", "hub-2t / floor-2t (median of rounds)",
                 "hub, 1 thread on 1 core (scenario 1)", "hub 2t / 1t", "floor, 1 loop (scenario 1)", "floor 2 / 1 loops"], body)
    md += [""]
    md += table(["subscribers", "hub-2t half rate, deliveries/s", "hub-2t p99 ms (half rate)",
                 "floor-2t p99 ms at the same rate", "hub-2t / floor-2t p99 (median of rounds)",
                 "hub 1 thread p99 ms (its own half rate)"], lat)
    md += ["", "Both cores for everyone: the hub with `--threads 2` and `hub-bench floor-server --threads 2` (two epoll "
           "loops, each with its own SO_REUSEPORT listener and clients; what one loop reads goes to its own clients and, "
           "through an eventfd-woken inbox, to the other loop's) are started with `taskset -c 0,1`, and so is the generator, "
           "which then competes with the server for the same two cores (its CPU is in the table: 100 % = one core, so the "
           "server and generator can add up to 200 %). Hub and floor interleaved, "
           "the floor's latency run at the hub's half rate of the same round. The one-core figures are scenario 1's "
           "(server on CPU 0, generator on CPU 1).", ""]
    return md + [SECTION_END.format("cores")]


COST_TITLE = "### Cost per delivery: instructions, bytes and syscalls"


def cost_section(rows: list[dict], dated: str) -> list[str]:
    md = [SECTION_BEGIN.format("cost"), COST_TITLE, ""]
    cost = {r["server"]: r for r in by(rows, "cost")}
    if not cost:
        return md + ["Not run.", "", SECTION_END.format("cost")]
    md += [dated, ""]
    body = []

    def num(r: dict | None, key: str, fmt: str) -> str:
        return format(r[key], fmt) if r and r.get(key) is not None else "–"

    for server in [s for s in ORDER if s in cost] + [s for s in cost if s not in ORDER]:
        r = cost[server]
        # The cost runs give the floor its default 128-byte payload: its own bytes, not the hub's.
        name = "kernel floor (epoll + send, no protocol; 128-byte payload)" if server == "floor" else NAMES.get(server, server)
        body.append([name, f"**{num(r, 'ir_per_delivery', ',.0f')}**" if "ir_per_delivery" in r
                     else r.get("error", "–"), num(r, "bytes_per_delivery", ".0f"), num(r, "syscalls_per_delivery", ".3f"),
                     num(r, "write_calls_per_delivery", ".3f"),
                     f"{fmt_rate(r.get('deliveries_per_s_busy'))} / {fmt_rate(r.get('deliveries_per_s_idle'))}",
                     f"{fmt_pct(r.get('server_cpu_busy'))}",
                     f"{r.get('deliveries_busy', 0):,} − {r.get('deliveries_idle', 0):,}"
                     + ("" if r.get("kept_up_busy") else " (busy run lost deliveries)")])
    hub, floor = cost.get("hub"), cost.get("floor")
    if hub and floor:
        def q(key: str, fmt: str = ".2f") -> str:
            a, b = hub.get(key), floor.get(key)
            return f"**{a / b:{fmt}}×**" if a is not None and b else "–"
        body.append(["hub / floor", q("ir_per_delivery", ".1f"), q("bytes_per_delivery"), q("syscalls_per_delivery"),
                     q("write_calls_per_delivery"), "", "", ""])
    md += table(["server", "instructions per delivery (user space)", "bytes written per delivery",
                 "syscalls per delivery", "write/send calls per delivery", "deliveries/s busy / idle run",
                 "server CPU under callgrind (busy)", "deliveries busy − idle"], body)
    md += ["", "Each server (the hub as in scenario 1: one thread, the same config and queue limits; the floor with one loop) "
           "ran twice under `valgrind --tool=callgrind` on CPU 0, the generator on CPU 1: a fan-out to "
           f"{(hub or floor or {}).get('subscribers', 1000):,} subscribers, one 6 s step and a 1 s run at half its rate, "
           "busy at 20,000 deliveries/s (lower if the slowed server lost deliveries) and idle at 1,000. "
           "Instructions per delivery = (Ir busy − Ir idle) / (deliveries busy − deliveries idle), so start-up, the "
           "connections, timers and shutdown cancel out; Ir is what callgrind counts, user space only (this VM has no PMU: "
           "`perf stat` cannot count instructions, and the kernel's send path is not in the figure). Bytes per delivery are "
           "what the subscribers' sockets read (WebSocket framing and each server's envelope around the 128-byte payload), "
           "so what the server wrote. Syscalls per delivery the same way, from two runs (busy, idle) with `strace -c -f` "
           "attached; at this rate every publication is its own turn, so both do about one send per subscriber per "
           "publication: the figure says nothing about batching at high rates.", ""]
    return md + [SECTION_END.format("cost")]


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
        runs = len(hub.get("runs", []))
        line = (f"- Fan-out to {subs:,} subscribers: the hub sustained {fmt_rate(hub['max_deliveries_per_s'])} deliveries/s"
                + (f" (median of {runs} runs)" if runs > 1 else "") + f" with its core at {fmt_pct(hub.get('max_server_cpu'))} and the generator's at "
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
        runs = len(hub.get("runs", []))
        line = (f"- Many channels ({hub['connections']:,} connections): the hub sustained "
                f"{fmt_rate(hub['max_deliveries_per_s'])} deliveries/s" + (f" (median of {runs} runs)" if runs > 1 else "")
                + f", p99 {fmt_ms(hub['half']['p99_ms'])} ms at half rate")
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


def splice(markdown: str, name: str, section: list[str], heading: str | None = None, after: str | None = None,
           before: str | None = None) -> None:
    """Replaces section `name` of an existing report (or adds it before the targets). A report
    written before the section had markers has it from `heading` to the next `## `: that is replaced.
    A section not there yet goes right after the line `after`, or right before the line `before`,
    when the report has it."""
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
    elif before and "\n" + before + "\n" in text:
        head, rest = text.split("\n" + before + "\n", 1)
        text = head + "\n" + block + "\n\n" + before + "\n" + rest
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
        if "cores" in ran:
            # one-core figures: this run's scenario 1, else the full run's raw data beside the report
            reference, note = rows, ""
            main = os.path.join(args.plots, "results.jsonl")
            if not by(rows, "fanout") and os.path.exists(main):
                reference = [json.loads(line) for line in open(main) if line.strip()]
                note = " The one-core figures are scenario 1's in that run."
            splice(args.markdown, "cores", cores_section(rows, reference, dated + note),
                   after="![every step](bench/fanout-steps.png)")
        if "cost" in ran:
            splice(args.markdown, "cost", cost_section(rows, dated), before="## 3. Idle connections")
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
        f"128 bytes of JSON carrying the publisher's monotonic clock (except the kernel floor's, padded so that its "
        "frames are as long as the hub's frames in the same round: the hub's push envelope makes ~294 bytes of a "
        "128-byte payload, and the kernel's copy cost follows the bytes; the floor at a 128-byte payload is one "
        "reference row); the subscribers are in the same process, so "
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
        "(100 % = one core, its whole budget); generator CPU is the same for hub-bench. "
        f"Repeats: the hub and the kernel floor (scenario 1 and the two-core runs) and the hub and nats-server "
        f"(scenario 2) ran {(str(meta.get('repeats', 1)) + ' times') if meta.get('repeats', 1) > 1 else 'once'} each, interleaved (A B A B …, so drift on this shared "
        "machine hits both); their tables give the median with the spread (min–max), and the targets against the "
        "floor and nats-server count as met only when the median of the per-round ratios meets them. The other "
        "servers ran once.",
        "",
    ]

    insert_at = len(md)
    # Scenario 1 ---------------------------------------------------------------------------
    fan = sort_servers(collapse(by(rows, "fanout")))
    md += ["## 1. Fan-out: one channel", ""]
    body = []
    for r in fan:
        h = r.get("half", {})
        if "max_deliveries_per_s" not in r:
            body.append([NAMES.get(r["server"], r["server"]), r.get("subscribers"), f"{r.get('p99_limit_ms', 50):.0f}",
                         "failed: " + r.get("error", "?"), "", "", "", "", "", ""])
            continue
        note = " (no step failed: lower bound)" if r.get("hit_ceiling") else ""
        failed = len(r.get("runs", [])) - len(run_values(r, lambda x: x.get("max_deliveries_per_s")))
        note += f" ({failed} run{'s' if failed > 1 else ''} sustained no step)" if failed else ""
        body.append([
            NAMES.get(r["server"], r["server"]), f"{r['subscribers']:,}", f"{r.get('p99_limit_ms', 50):.0f}",
            ceiling_cell(r) + note, f"{r['max_rate']:.0f}",
            f"{fmt_pct(r.get('max_server_cpu'))} / {fmt_pct(r.get('max_generator_cpu'))}",
            fmt_ms(h.get("p50_ms")), p99_cell(r), fmt_ms(h.get("p999_ms")),
            f"{r.get('connect_s', 0):.1f}",
        ])
    if any(len(r.get("runs", [])) > 1 for r in fan):
        md += [f"The hub and the kernel floor ran {max(len(r.get('runs', [])) for r in fan)} times at each size, "
               "interleaved (hub, floor, hub, floor, …); their rows give the **median** of the runs with the spread "
               "(min–max) beside it (publishes/s and CPU: the median run's). The other servers ran once.", ""]
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
               "send(2) per client carrying everything read in that turn, writing as many bytes per delivery as the hub. "
               "Pinned like every server, it was also run at "
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
    md += cores_section(rows, rows, "Measured in the run named at the top.") + [""]

    # Scenario 2 ---------------------------------------------------------------------------
    ch = sort_servers(collapse(by(rows, "channels")))
    md += ["## 2. Many channels: personal channel + group of ten per connection, publishing into groups", ""]
    body = []
    for r in ch:
        if "max_deliveries_per_s" not in r:
            body.append([NAMES.get(r["server"], r["server"]), f"{r.get('connections', 0):,}", r.get("error", "?"),
                         "", "", "", "", ""])
            continue
        h = r.get("half", {})
        body.append([NAMES.get(r["server"], r["server"]), f"{r['connections']:,}",
                     ceiling_cell(r), f"{fmt_rate(r['max_rate'])}",
                     f"{fmt_pct(r.get('max_server_cpu'))} / {fmt_pct(r.get('max_generator_cpu'))}",
                     fmt_ms(h.get("p50_ms")), p99_cell(r), fmt_ms(h.get("p999_ms"))])
    md += table(["server", "connections", "highest sustained deliveries/s", "publishes/s",
                 "server / generator CPU", "p50 ms (half)", "p99 ms (half)", "p99.9 ms (half)"], body)
    md += ["", "Channel names: hub `#u<i>` (user-limited personal channel, token `sub` = `u<i>`) and `group<k>`; "
           "NATS `u.<i>`/`group.<k>`; MQTT `u/<i>`/`group/<k>`; FastAPI peer `u<i>`/`group<k>` "
           "(`@group<k> text` publishes). The lws mirror has at most ten mirror instances, so no channels. "
           "The kernel floor here is `hub-bench floor-server` speaking the FastAPI peer's channel wire "
           "(`/ws?channels=u<i>,group<k>`, `@group<k> text`), each member's frames of a turn in one send(2), "
           "its payload sized to the hub's bytes per delivery in the same round: the cheapest server that does this "
           "job on this core, a yardstick with no target of its own."
           + (" The hub, nats-server and the floor ran several times, interleaved: median (min–max)."
              if any(len(r.get("runs", [])) > 1 for r in ch) else ""), ""]

    md += floor_section(rows)
    md += cost_section(rows, "Measured in the run named at the top.") + [""]

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
    body += floor_targets(rows)
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
        values = [r["max_deliveries_per_s"] for r in by(rows, scenario)
                  if r["server"] == server and r.get("subscribers") == subs and "max_deliveries_per_s" in r]
        if values:
            return statistics.median(values), where + (f", median of {len(values)} runs" if len(values) > 1 else "")
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
                   help="only stand-alone sections ran (codecs, start, proxies, cluster, failover, cores, cost): replace them in --markdown, keep the rest")
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
