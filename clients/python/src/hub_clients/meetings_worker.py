#!/usr/bin/env python3
"""Reference worker for the hub's meetings pipeline (seed 004).

It learns of tasks on the channel `meetings:tasks#meetings-worker` (Centrifuge client protocol,
via centrifuge-python, with a connection token from POST /v1/worker/token), also polls
GET /v1/worker/tasks so nothing published while it was away is missed, and for each task:

  claim (compare-and-set on the hub: one worker wins) → fetch the media with Range requests →
  ffprobe (duration, format) → pocketsphinx (en-us transcript with word times) →
  artifacts transcript.txt + summary.json → complete.

Progress goes to the hub at each step, which shows it on GET /v1/files/{id}/status and on the
meeting's channel. Any error marks the file failed with the reason. Protocol: docs/channels.md.

    HUB_API_KEY=... hub-meetings-worker --hub http://localhost:8000 --name worker-1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import requests

log = logging.getLogger("meetings-worker")

CHUNK = 4 * 1024 * 1024  # the hub serves media in chunks of at most this many bytes
SAMPLE_RATE = 16000  # pocketsphinx's en-us model expects 16 kHz mono


class Hub:
    """The worker's HTTP calls, all with the server API key."""

    def __init__(self, base: str, api_key: str, name: str, timeout: float = 30.0):
        self.base = base.rstrip("/")
        self.name = name
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["X-API-Key"] = api_key

    def _url(self, path: str) -> str:
        return self.base + path

    def token(self) -> Dict[str, Any]:
        r = self.session.post(self._url("/v1/worker/token"), timeout=self.timeout)
        r.raise_for_status()
        return r.json()

    def queued(self) -> List[Dict[str, Any]]:
        r = self.session.get(self._url("/v1/worker/tasks"), timeout=self.timeout)
        r.raise_for_status()
        return r.json()["tasks"]

    def claim(self, file_id: str) -> Optional[Dict[str, Any]]:
        r = self.session.post(self._url(f"/v1/worker/tasks/{file_id}/claim"), json={"worker": self.name},
                              timeout=self.timeout)
        if r.status_code in (404, 409):
            return None  # deleted, finished, or another worker has it
        r.raise_for_status()
        return r.json()

    def progress(self, file_id: str, progress: int, stage: str) -> None:
        r = self.session.post(self._url(f"/v1/worker/tasks/{file_id}/progress"),
                              json={"worker": self.name, "progress": progress, "stage": stage}, timeout=self.timeout)
        r.raise_for_status()

    def fetch_media(self, task: Dict[str, Any], path: str) -> None:
        size = int(task["size"])
        with open(path, "wb") as out:
            offset = 0
            while offset < size:
                end = min(size, offset + CHUNK) - 1
                r = self.session.get(self._url(task["media_url"]), headers={"Range": f"bytes={offset}-{end}"},
                                     timeout=self.timeout)
                r.raise_for_status()
                if not r.content:
                    raise RuntimeError("hub returned an empty media chunk")
                out.write(r.content)
                offset += len(r.content)

    def artifact(self, file_id: str, name: str, body: bytes, content_type: str) -> None:
        r = self.session.put(self._url(f"/v1/worker/tasks/{file_id}/artifacts/{name}"), data=body,
                             params={"worker": self.name}, headers={"Content-Type": content_type},
                             timeout=self.timeout)
        r.raise_for_status()

    def complete(self, file_id: str, duration: Optional[float], fmt: Optional[str]) -> None:
        body: Dict[str, Any] = {"worker": self.name}
        if duration is not None:
            body["duration"] = duration
        if fmt:
            body["format"] = fmt
        r = self.session.post(self._url(f"/v1/worker/tasks/{file_id}/complete"), json=body, timeout=self.timeout)
        r.raise_for_status()

    def fail(self, file_id: str, reason: str) -> None:
        r = self.session.post(self._url(f"/v1/worker/tasks/{file_id}/fail"),
                              json={"worker": self.name, "reason": reason[:1000]}, timeout=self.timeout)
        if r.status_code not in (200, 404, 409):
            r.raise_for_status()


class ProcessingError(Exception):
    """A failure with a reason worth showing the user."""


def probe(path: str) -> Dict[str, Any]:
    """Duration, container format and audio stream facts from ffprobe."""
    try:
        out = subprocess.run(["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", path],
                             capture_output=True, timeout=60)
    except FileNotFoundError:
        raise ProcessingError("ffprobe is not installed on the worker (Debian package ffmpeg)")
    if out.returncode != 0:
        raise ProcessingError("ffprobe could not read the media: " + out.stderr.decode(errors="replace").strip()[:300])
    info = json.loads(out.stdout or b"{}")
    fmt = info.get("format", {})
    audio = [s for s in info.get("streams", []) if s.get("codec_type") == "audio"]
    if not audio:
        raise ProcessingError("the media has no audio stream")
    duration = fmt.get("duration") or audio[0].get("duration")
    return {
        "duration": float(duration) if duration else None,
        "format": fmt.get("format_name"),
        "format_long_name": fmt.get("format_long_name"),
        "codec": audio[0].get("codec_name"),
        "sample_rate": int(audio[0]["sample_rate"]) if audio[0].get("sample_rate") else None,
        "channels": audio[0].get("channels"),
        "video": any(s.get("codec_type") == "video" for s in info.get("streams", [])),
    }


def pcm(path: str) -> bytes:
    """The first audio stream as 16 kHz mono signed 16-bit PCM."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", path, "-vn", "-f", "s16le", "-ac", "1",
                          "-ar", str(SAMPLE_RATE), "-"], capture_output=True, timeout=3600)
    if out.returncode != 0:
        raise ProcessingError("ffmpeg could not decode the audio: " + out.stderr.decode(errors="replace").strip()[:300])
    return out.stdout


def transcribe(raw: bytes, report) -> Dict[str, Any]:
    """Words with times from pocketsphinx; `report(fraction)` is called as audio is consumed."""
    from pocketsphinx import Decoder  # imported here so --help works without it

    decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
    frame_rate = 100  # pocketsphinx frames per second
    step = SAMPLE_RATE * 2 * 5  # five seconds of audio per call
    decoder.start_utt()
    for offset in range(0, len(raw), step):
        decoder.process_raw(raw[offset:offset + step], False, False)
        report(min(1.0, (offset + step) / max(1, len(raw))))
    decoder.end_utt()
    hyp = decoder.hyp()
    words = []
    for seg in decoder.seg():
        word = seg.word
        if word.startswith("<") or word.startswith("[") or word == "<sil>":
            continue
        if "(" in word:
            word = word[:word.index("(")]  # alternate pronunciations: "that(2)"
        words.append({"word": word, "start": round(seg.start_frame / frame_rate, 2),
                      "end": round(seg.end_frame / frame_rate, 2)})
    text = " ".join(w["word"] for w in words) if words else (hyp.hypstr if hyp else "")
    return {"text": text, "words": words}


def turns(words: List[Dict[str, Any]], gap: float = 1.0) -> List[Dict[str, Any]]:
    """Speech turns: runs of words separated by pauses longer than `gap` seconds. One speaker
    label for all of them: telling voices apart needs a diarization model this worker lacks."""
    out: List[Dict[str, Any]] = []
    for w in words:
        if out and w["start"] - out[-1]["end"] <= gap:
            out[-1]["end"] = w["end"]
            out[-1]["text"] += " " + w["word"]
        else:
            out.append({"speaker": "S1", "start": w["start"], "end": w["end"], "text": w["word"]})
    return out


def process(hub: Hub, task: Dict[str, Any]) -> None:
    file_id = task["file_id"]
    workdir = tempfile.mkdtemp(prefix="meetings-worker-")
    try:
        media = os.path.join(workdir, "media")
        hub.progress(file_id, 5, "downloading")
        hub.fetch_media(task, media)
        hub.progress(file_id, 15, "probing")
        facts = probe(media)
        hub.progress(file_id, 25, "decoding")
        raw = pcm(media)
        last = [25]

        def report(fraction: float) -> None:
            value = 30 + int(fraction * 60)
            if value - last[0] >= 10:
                last[0] = value
                hub.progress(file_id, value, "transcribing")

        hub.progress(file_id, 30, "transcribing")
        result = transcribe(raw, report)
        hub.progress(file_id, 92, "writing artifacts")
        transcript = result["text"].strip() + "\n"
        summary = {
            "file_id": file_id,
            "meeting_id": task["meeting_id"],
            "filename": task.get("filename"),
            "duration": facts["duration"],
            "format": facts["format"],
            "format_long_name": facts["format_long_name"],
            "codec": facts["codec"],
            "sample_rate": facts["sample_rate"],
            "channels": facts["channels"],
            "has_video": facts["video"],
            "word_count": len(result["words"]),
            "words": result["words"],
            "turns": turns(result["words"]),
            "engine": {"transcript": "pocketsphinx en-us", "probe": "ffprobe"},
            "worker": hub.name,
            "processed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        hub.artifact(file_id, "transcript.txt", transcript.encode(), "text/plain; charset=utf-8")
        hub.artifact(file_id, "summary.json", json.dumps(summary, indent=2).encode(), "application/json")
        hub.complete(file_id, facts["duration"], facts["format"])
        log.info("completed %s (%.1fs, %d words)", file_id, facts["duration"] or 0, len(result["words"]))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class Worker:
    def __init__(self, hub: Hub, ws_url: str, poll: float):
        self.hub = hub
        self.ws_url = ws_url
        self.poll = poll
        self.queue: asyncio.Queue[Dict[str, Any]] = asyncio.Queue()
        self.seen: Dict[str, float] = {}
        self.stopping = asyncio.Event()

    def offer(self, task: Dict[str, Any]) -> None:
        # Re-announcements of a task still being handled here are dropped; later ones pass.
        file_id = task.get("file_id")
        if not file_id or time.monotonic() - self.seen.get(file_id, -1e9) < 5:
            return
        self.seen[file_id] = time.monotonic()
        self.queue.put_nowait(task)

    async def handle(self, task: Dict[str, Any]) -> None:
        file_id = task["file_id"]
        claimed = await asyncio.to_thread(self.hub.claim, file_id)
        if claimed is None:
            return
        log.info("claimed %s (%s, %s bytes)", file_id, claimed.get("filename"), claimed.get("size"))
        try:
            await asyncio.to_thread(process, self.hub, claimed)
        except ProcessingError as error:
            log.warning("failed %s: %s", file_id, error)
            await asyncio.to_thread(self.hub.fail, file_id, str(error))
        except requests.HTTPError as error:
            # 404/409 mid-task: the meeting was deleted or the claim was lost; nothing to report.
            status = error.response.status_code if error.response is not None else 0
            if status not in (404, 409):
                await asyncio.to_thread(self.hub.fail, file_id, f"hub refused a worker call: HTTP {status}")
        except Exception as error:  # noqa: BLE001 - any other failure still marks the file failed
            log.exception("failed %s", file_id)
            await asyncio.to_thread(self.hub.fail, file_id, f"worker error: {type(error).__name__}: {error}")

    async def poll_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                for task in await asyncio.to_thread(self.hub.queued):
                    self.offer(task)
            except requests.RequestException as error:
                log.warning("cannot list queued tasks: %s", error)
            try:
                await asyncio.wait_for(self.stopping.wait(), self.poll)
            except asyncio.TimeoutError:
                pass

    async def channel_loop(self) -> None:
        from centrifuge import Client, ClientEventHandler, SubscriptionEventHandler

        worker = self

        class SubEvents(SubscriptionEventHandler):
            async def on_publication(self, ctx):
                data = ctx.pub.data
                if isinstance(data, dict) and data.get("type") == "task":
                    worker.offer(data)

        async def get_token() -> str:
            return (await asyncio.to_thread(self.hub.token))["token"]

        grant = await asyncio.to_thread(self.hub.token)
        client = Client(self.ws_url, events=ClientEventHandler(), token=grant["token"], get_token=get_token,
                        min_reconnect_delay=0.1, max_reconnect_delay=5.0, proxy=None)
        sub = client.new_subscription(grant["channel"], SubEvents())
        await client.connect()
        await sub.subscribe()
        try:
            await self.stopping.wait()
        finally:
            await client.disconnect()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        background = [asyncio.create_task(self.poll_loop()), asyncio.create_task(self.channel_loop())]
        log.info("worker %s serving %s", self.hub.name, self.hub.base)
        while not self.stopping.is_set():
            getter = asyncio.create_task(self.queue.get())
            stopper = asyncio.create_task(self.stopping.wait())
            done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if getter in done:
                await self.handle(getter.result())
            else:
                getter.cancel()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        log.info("worker %s stopped", self.hub.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hub", default=os.environ.get("HUB_URL", "http://127.0.0.1:8000"), help="hub base URL")
    parser.add_argument("--api-key", default=os.environ.get("HUB_API_KEY"), help="server API key (or HUB_API_KEY)")
    parser.add_argument("--name", default=os.environ.get("WORKER_NAME", f"worker-{os.getpid()}"), help="worker name")
    parser.add_argument("--poll", type=float, default=10.0, help="seconds between polls of queued tasks")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("centrifuge").setLevel(logging.WARNING)
    if not args.api_key:
        parser.error("the server API key is required (--api-key or HUB_API_KEY)")
    ws_url = args.hub.replace("http://", "ws://").replace("https://", "wss://").rstrip("/") + "/connection/websocket"
    hub = Hub(args.hub, args.api_key, args.name)
    asyncio.run(Worker(hub, ws_url, args.poll).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
