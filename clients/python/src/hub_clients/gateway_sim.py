#!/usr/bin/env python3
"""A media-gateway simulator speaking seed 002's launcher API (standard library only).

It serves, for one or more gateway ids at one address:

    POST /gateway/start    {gw_id, room, type?, webrtc_domain?, transcript?, ...}
    POST /gateway/stop     {gw_id}
    GET  /gateway/status?gw_id=...
    POST /gateway/command?gw_id=...   (ACK with the echoed input)

While working, a gateway's recording time counts up (HH:MM:SS) and its transcript progress
grows a few percent a second; after a stop it is `finalising` for --finalise-seconds, then
`idle` again. On start it registers each id with the hub (POST /register); on SIGTERM or
SIGINT it unregisters them (POST /unregister) and exits.

    hub-gateway-sim --hub http://localhost:8000 --token 1234 --id gw01
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TYPES = ("Record", "Streaming", "SIP")
TASKS = {"Record": "record", "Streaming": "streaming", "SIP": "sip"}
# seed 000's gw_type → seed 002's type, for starts that do not say
DEFAULT_TYPE = {"recorder": "Record", "streamer": "Streaming", "sip": "SIP"}


class Gateway:
    def __init__(self, gw_id: str, gw_type: str):
        self.gw_id = gw_id
        self.gw_type = gw_type
        self.state = "idle"
        self.room = None
        self.task = None
        self.transcript = True
        self.started = 0.0
        self.finalising_until = 0.0
        self.frozen = None  # (recording_time, progress) after a stop

    def tick(self) -> None:
        if self.state == "finalising" and time.monotonic() >= self.finalising_until:
            self.state, self.room, self.task, self.frozen = "idle", None, None, None

    def recording_time(self) -> str:
        if self.frozen:
            return self.frozen[0]
        if self.state != "working":
            return "00:00:00"
        s = int(time.monotonic() - self.started)
        return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"

    def progress(self) -> str:
        if self.frozen:
            return self.frozen[1]
        if self.state != "working" or not self.transcript:
            return "0%"
        return f"{min(99, int((time.monotonic() - self.started) * 7))}%"

    def status(self) -> dict:
        self.tick()
        return {"gw_id": self.gw_id, "processing_state": self.state, "task": self.task, "room": self.room,
                "recording_time": self.recording_time(), "transcript_progress": self.progress()}


class Simulator:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.gateways = {gw: Gateway(gw, args.type) for gw in args.ids}
        self.commands = []


def missing(field):
    return {"loc": ["body", field], "msg": "field required", "type": "value_error.missing"}


def invalid(field, msg):
    return {"loc": ["body", field], "msg": msg, "type": "value_error"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the hub's client reuses connections
    disable_nagle_algorithm = True  # headers and body go out as two writes; no 40 ms delayed-ACK stall
    server_version = "gateway-sim/1.0"
    sim: Simulator = None

    def log_message(self, fmt, *args):
        if self.sim.args.verbose:
            sys.stderr.write("gateway-sim: " + fmt % args + "\n")

    def answer(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def params(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = {}
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        return url.path, query, raw, body

    def gateway(self, params):
        gw_id = params.get("gw_id")
        if not gw_id:
            self.answer(422, {"detail": [missing("gw_id")]})
            return None
        gw = self.sim.gateways.get(gw_id)
        if gw is None:
            self.answer(404, {"detail": "Gateway not found"})
        return gw

    def do_GET(self):
        path, query, _, _ = self.params()
        if path != "/gateway/status":
            return self.answer(404, {"detail": "Not Found"})
        with self.sim.lock:
            gw = self.gateway(query)
            if gw:
                self.answer(200, gw.status())

    def do_POST(self):
        path, query, raw, body = self.params()
        if path == "/gateway/command":
            with self.sim.lock:
                gw = self.gateway({**query, **(body if isinstance(body, dict) else {})})
                if gw:
                    echoed = body if body is not None else raw.decode(errors="replace")
                    self.sim.commands.append((gw.gw_id, echoed))
                    self.answer(200, {"status": "ack", "gw_id": gw.gw_id, "command": echoed})
            return
        if body is None or not isinstance(body, dict):
            return self.answer(422, {"detail": [{"loc": ["body"], "msg": "body must be a JSON object",
                                                 "type": "value_error.jsondecode"}]})
        params = {**query, **body}
        if path == "/gateway/start":
            return self.start(params)
        if path == "/gateway/stop":
            return self.stop(params)
        self.answer(404, {"detail": "Not Found"})

    def start(self, params):
        args = self.sim.args
        if args.start_delay:
            time.sleep(args.start_delay)
        if args.fail_start:
            return self.answer(args.fail_start, {"detail": "simulated launcher failure"})
        problems = []
        kind = params.get("type") or DEFAULT_TYPE.get(args.type, "Record")
        if kind not in TYPES:
            problems.append(invalid("type", "value is not a valid enumeration member; permitted: 'Record', 'Streaming', 'SIP'"))
        if not params.get("room"):
            problems.append(missing("room"))
        domain = params.get("webrtc_domain")
        if isinstance(domain, str):
            try:
                domain = json.loads(domain)
            except ValueError:
                domain = None
            if not isinstance(domain, dict):
                problems.append(invalid("webrtc_domain", "must be JSON"))
        if problems:
            return self.answer(422, {"detail": problems})
        with self.sim.lock:
            gw = self.gateway(params)
            if not gw:
                return
            gw.tick()
            if gw.state != "idle":
                return self.answer(409, {"detail": f"Gateway busy ({gw.state})"})
            gw.state, gw.room, gw.started, gw.frozen = "working", params["room"], time.monotonic(), None
            gw.transcript = str(params.get("transcript", True)).lower() not in ("false", "0", "no")
            gw.task = TASKS[kind] + ("_transcript" if gw.transcript and kind == "Record" else "")
            self.answer(200, {"status": "success", "processing_state": "working", "gw_id": gw.gw_id,
                              "room": gw.room, "task": gw.task})

    def stop(self, params):
        with self.sim.lock:
            gw = self.gateway(params)
            if not gw:
                return
            gw.tick()
            if gw.state != "working":
                return self.answer(200, {"status": "success", "processing_state": "stopped", "gw_id": gw.gw_id})
            gw.frozen = (gw.recording_time(), gw.progress())
            gw.state, gw.finalising_until = "finalising", time.monotonic() + self.sim.args.finalise_seconds
            self.answer(200, {"status": "success", "processing_state": "finalising", "gw_id": gw.gw_id})


def hub_call(args, path: str, body: dict) -> int:
    req = urllib.request.Request(args.hub.rstrip("/") + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {args.token}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hub", help="hub base URL to register with (omit to run standalone)")
    p.add_argument("--token", default="", help="the hub's allowedToken")
    p.add_argument("--id", dest="ids", action="append", required=True,
                   help="gateway id served here; repeat or comma-separate for several")
    p.add_argument("--type", default="media", help="gw_type to register (recorder, streamer, sip, media)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    p.add_argument("--advertise", help="gw_ip to register (default host:port)")
    p.add_argument("--finalise-seconds", type=float, default=1.0)
    p.add_argument("--fail-start", type=int, default=0, help="answer every start with this HTTP status")
    p.add_argument("--start-delay", type=float, default=0.0, help="seconds to wait before answering a start")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    args.ids = [i for part in args.ids for i in part.split(",") if i]

    sim = Simulator(args)
    Handler.sim = sim
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    address = args.advertise or f"{args.host}:{port}"
    print(json.dumps({"port": port, "gw_ip": address, "ids": args.ids}), flush=True)

    def shutdown(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    if args.hub:
        for gw in args.ids:
            status = hub_call(args, "/register", {"gw_ip": address, "gw_id": gw, "gw_type": args.type})
            if status != 200:
                print(f"gateway-sim: register {gw} -> HTTP {status}", file=sys.stderr, flush=True)
                return 1
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        if args.hub:
            for gw in args.ids:
                try:
                    hub_call(args, "/unregister", {"gw_id": gw})
                except OSError:
                    pass
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
