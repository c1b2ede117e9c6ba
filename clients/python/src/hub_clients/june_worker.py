#!/usr/bin/env python3
"""Reference service workers for the hub's seed 003 (June Agent) endpoints.

A worker serves one or more of the hub's services: `tts` (espeak-ng), `stt` (pocketsphinx),
`llm` and `agent` (both forwarded to an OpenAI-compatible chat-completions endpoint).
For each service it
  1. asks the hub for a worker connection token (POST /api/services/token, server API key),
  2. connects to /connection/websocket as a Centrifuge-protocol client; the token subscribes
     it to `service:<name>`, so the hub sees it in that channel's presence,
  3. handles the requests published there that are addressed to it (`worker` = its client id),
  4. answers each with POST /api/services/reply {request_id, result | error}.
It reconnects when the connection drops. See docs/channels.md for the payloads.

    hub-june-worker --hub http://localhost:8000 --api-key KEY tts stt
    hub-june-worker --hub http://localhost:8000 --api-key KEY \
        --llm-url http://localhost:8080/v1/chat/completions llm agent

Needs: websockets (pip), espeak-ng (apt) for tts, pocketsphinx (pip) for stt.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import wave

import websockets

log = logging.getLogger("june-worker")
SAMPLE_RATE = 16000


# ------------------------------------------------------------------------------------------
# audio helpers

def resample_mono16(pcm: bytes, channels: int, width: int, rate: int) -> bytes:
    """PCM of any rate/channels/width → 16 kHz mono 16-bit (linear interpolation)."""
    import array
    if width != 2:
        # 8-bit WAV is unsigned, 32-bit signed; bring both to 16-bit.
        if width == 1:
            pcm = bytes(b ^ 0x80 for b in pcm)
            samples = array.array("h", (int.from_bytes(bytes([b]), "little", signed=True) << 8 for b in pcm))
        elif width == 4:
            ints = array.array("i", pcm)
            samples = array.array("h", (v >> 16 for v in ints))
        else:
            raise ValueError(f"unsupported sample width {width}")
    else:
        samples = array.array("h", pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    if channels > 1:
        samples = array.array("h", (sum(samples[i:i + channels]) // channels for i in range(0, len(samples), channels)))
    if rate != SAMPLE_RATE and len(samples) > 1:
        n = int(len(samples) * SAMPLE_RATE / rate)
        step = rate / SAMPLE_RATE
        out = array.array("h", bytes(2 * n))
        last = len(samples) - 1
        for i in range(n):
            pos = i * step
            j = int(pos)
            frac = pos - j
            a = samples[min(j, last)]
            b = samples[min(j + 1, last)]
            out[i] = int(a + (b - a) * frac)
        samples = out
    return samples.tobytes()


def wav_bytes(pcm16: bytes) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm16)
    return buf.getvalue()


class ServiceError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ------------------------------------------------------------------------------------------
# services

# espeak-ng voices per ISO 639-1 code; `voice_id` other than "default" is passed as a variant.
VOICES = {"en": "en-us+m3"}


def tts(payload: dict, args) -> dict:
    text = payload.get("text") or ""
    language = payload.get("language") or "en"
    voice = VOICES.get(language, language)
    variant = payload.get("voice_id") or "default"
    if variant != "default":
        voice = f"{voice.split('+')[0]}+{variant}"
    with tempfile.NamedTemporaryFile(suffix=".wav") as out:
        proc = subprocess.run(["espeak-ng", "-v", voice, "-s", "140", "-w", out.name, "--stdin"],
                              input=text.encode(), capture_output=True, timeout=120)
        if proc.returncode != 0:
            raise ServiceError(400, f"espeak-ng failed for voice {voice}: {proc.stderr.decode(errors='replace').strip()}")
        with wave.open(out.name) as w:
            pcm = resample_mono16(w.readframes(w.getnframes()), w.getnchannels(), w.getsampwidth(), w.getframerate())
    return {"audio_b64": base64.b64encode(wav_bytes(pcm)).decode(), "sample_rate": SAMPLE_RATE}


_decoder = None


def stt(payload: dict, args) -> dict:
    global _decoder
    from pocketsphinx import Decoder
    try:
        audio = base64.b64decode(payload.get("audio_b64") or "", validate=False)
        with wave.open(io.BytesIO(audio)) as w:
            pcm = resample_mono16(w.readframes(w.getnframes()), w.getnchannels(), w.getsampwidth(), w.getframerate())
    except (wave.Error, EOFError, ValueError) as error:
        raise ServiceError(400, f"audio must be a WAV file (PCM): {error}")
    language = payload.get("language") or "en"
    if language != "en":
        raise ServiceError(400, f"this worker's model recognises en only, not {language}")
    if _decoder is None:
        _decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
    _decoder.start_utt()
    _decoder.process_raw(pcm, full_utt=True)
    _decoder.end_utt()
    hyp = _decoder.hyp()
    return {"transcript": hyp.hypstr if hyp else "", "detected_language": "en"}


def chat_completion(messages: list, args) -> str:
    body = json.dumps({"model": args.llm_model, "messages": messages}).encode()
    headers = {"Content-Type": "application/json"}
    if args.llm_api_key:
        headers["Authorization"] = f"Bearer {args.llm_api_key}"
    request = urllib.request.Request(args.llm_url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=args.llm_timeout) as response:
            answer = json.load(response)
        return answer["choices"][0]["message"]["content"]
    except (urllib.error.URLError, KeyError, IndexError, ValueError, TimeoutError) as error:
        raise ServiceError(502, f"LLM endpoint failed: {error}")


def llm(payload: dict, args) -> dict:
    return {"text": chat_completion([{"role": "user", "content": payload.get("prompt") or ""}], args)}


def agent(payload: dict, args) -> dict:
    messages = [{"role": "system", "content": args.system_prompt}]
    for turn in payload.get("history") or []:
        if turn.get("role") in ("user", "assistant") and isinstance(turn.get("content"), str):
            messages.append({"role": turn["role"], "content": turn["content"]})
    messages.append({"role": "user", "content": payload.get("content") or ""})
    return {"content": chat_completion(messages, args)}


HANDLERS = {"tts": tts, "stt": stt, "llm": llm, "agent": agent}


# ------------------------------------------------------------------------------------------
# hub connection

def hub_post(args, path: str, body: dict) -> dict:
    request = urllib.request.Request(args.hub.rstrip("/") + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "X-API-Key": args.api_key}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


async def serve(service: str, args) -> None:
    handler = HANDLERS[service]
    ws_url = args.hub.replace("http://", "ws://").replace("https://", "wss://").rstrip("/") + "/connection/websocket"
    while True:
        try:
            token = (await asyncio.to_thread(hub_post, args, "/api/services/token", {"service": service}))["token"]
            async with websockets.connect(ws_url, max_size=None) as ws:
                await ws.send(json.dumps({"id": 1, "connect": {"token": token}}))
                client_id = None
                async for frame in ws:
                    for line in frame.splitlines():
                        if not line.strip():
                            continue
                        message = json.loads(line)
                        if message == {}:
                            await ws.send("{}")  # pong
                        elif message.get("id") == 1:
                            if "error" in message:
                                raise RuntimeError(f"connect refused: {message['error']}")
                            client_id = message["connect"]["client"]
                            log.info("%s worker connected as %s", service, client_id)
                        elif "push" in message:
                            data = (message["push"].get("pub") or {}).get("data") or {}
                            if data.get("worker") == client_id and data.get("request_id"):
                                asyncio.create_task(answer(service, handler, data, args))
        except (OSError, websockets.ConnectionClosed, urllib.error.URLError, RuntimeError) as error:
            log.warning("%s worker disconnected (%s); reconnecting", service, error)
        await asyncio.sleep(1)


async def answer(service: str, handler, request: dict, args) -> None:
    try:
        result = await asyncio.to_thread(handler, request.get("payload") or {}, args)
        reply = {"request_id": request["request_id"], "result": result}
    except ServiceError as error:
        reply = {"request_id": request["request_id"], "error": {"status": error.status, "message": error.message}}
    except Exception as error:  # a worker bug must still answer, or the caller waits for the timeout
        log.exception("%s request failed", service)
        reply = {"request_id": request["request_id"], "error": {"status": 500, "message": f"{service} worker error: {error}"}}
    try:
        await asyncio.to_thread(hub_post, args, "/api/services/reply", reply)
    except (OSError, urllib.error.URLError) as error:
        log.warning("could not deliver the %s reply: %s", service, error)


def main() -> None:
    parser = argparse.ArgumentParser(description="June Agent service worker for the hub")
    parser.add_argument("services", nargs="+", choices=sorted(HANDLERS))
    parser.add_argument("--hub", default=os.environ.get("HUB_URL", "http://localhost:8000"))
    parser.add_argument("--api-key", default=os.environ.get("HUB_API_KEY"))
    parser.add_argument("--llm-url", default=os.environ.get("LLM_URL", "http://localhost:8080/v1/chat/completions"),
                        help="OpenAI-compatible chat-completions URL (llama.cpp server, Ollama, vLLM…)")
    parser.add_argument("--llm-model", default=os.environ.get("LLM_MODEL", "default"))
    parser.add_argument("--llm-api-key", default=os.environ.get("LLM_API_KEY"))
    parser.add_argument("--llm-timeout", type=float, default=60)
    parser.add_argument("--system-prompt", default="You are June, a helpful assistant. Answer briefly.")
    args = parser.parse_args()
    if not args.api_key:
        parser.error("--api-key or HUB_API_KEY is required")
    if "tts" in args.services and not shutil.which("espeak-ng"):
        parser.error("the tts service needs espeak-ng (apt-get install espeak-ng)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def run_all():
        await asyncio.gather(*(serve(s, args) for s in args.services))

    try:
        asyncio.run(run_all())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
