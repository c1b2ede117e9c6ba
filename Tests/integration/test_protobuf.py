"""The Protobuf flavour on the wire, below the SDK: what a malformed frame gets, and that JSON
and Protobuf subscribers of one channel both receive each publication (the SDK scenarios are in
test_sdk.py, parametrized over both flavours)."""

from __future__ import annotations

import asyncio
import json

from centrifuge.protocol import client_pb2 as pb
from websockets.asyncio.client import connect as ws_connect

from hubtest import WAIT, arun


def delimited(*messages) -> bytes:
    out = b""
    for m in messages:
        body = m.SerializeToString()
        n = len(body)
        prefix = b""
        while n >= 0x80:
            prefix += bytes([(n & 0x7F) | 0x80])
            n >>= 7
        out += prefix + bytes([n]) + body
    return out


def replies(frame: bytes):
    out, pos = [], 0
    while pos < len(frame):
        n, shift = 0, 0
        while True:
            b = frame[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        r = pb.Reply()
        r.ParseFromString(frame[pos:pos + n])
        pos += n
        out.append(r)
    return out


async def open_pb(hub):
    ws = await ws_connect(hub.ws_url, subprotocols=["centrifuge-protobuf"], open_timeout=WAIT)
    assert ws.subprotocol == "centrifuge-protobuf"
    return ws


async def recv_replies(ws):
    frame = await asyncio.wait_for(ws.recv(), WAIT)
    assert isinstance(frame, bytes), "Protobuf replies travel in binary frames"
    return replies(frame)


async def pb_connect(hub, ws, user="alice"):
    cmd = pb.Command(id=1)
    cmd.connect.token = hub.token(user)
    await ws.send(delimited(cmd))
    (reply,) = await recv_replies(ws)
    assert reply.id == 1 and reply.HasField("connect"), reply
    return reply.connect


def test_protobuf_connect_reply_and_commands_in_one_frame(hub):
    async def main():
        ws = await open_pb(hub)
        try:
            result = await pb_connect(hub, ws)
            assert result.client and result.ping > 0 and result.pong
            sub = pb.Command(id=2)
            sub.subscribe.channel = "pb-news"
            hist = pb.Command(id=3)
            hist.history.channel = "pb-news"
            hist.history.limit = 0
            await ws.send(delimited(sub, hist))
            got = []
            while len(got) < 2:
                got += await recv_replies(ws)
            assert [r.id for r in got] == [2, 3]
            assert got[0].subscribe.recoverable and got[0].subscribe.epoch
            assert got[1].history.epoch == got[0].subscribe.epoch
        finally:
            await ws.close()
    arun(main())


def test_json_and_protobuf_subscribers_get_the_same_publication(hub):
    async def main():
        ws = await open_pb(hub)
        try:
            await pb_connect(hub, ws)
            sub = pb.Command(id=2)
            sub.subscribe.channel = "mixed"
            await ws.send(delimited(sub))
            await recv_replies(ws)
            async with await hub.client("bob") as js:
                await js.subscribe("mixed")
                await asyncio.to_thread(hub.publish, "mixed", {"state": "working", "gw": "gw01"})
                (push,) = await recv_replies(ws)
                assert push.push.channel == "mixed"
                assert json.loads(push.push.pub.data) == {"state": "working", "gw": "gw01"}
                assert push.push.pub.offset == 1
                (jpub,) = await js.pubs(1)
                assert jpub["data"] == {"state": "working", "gw": "gw01"}
        finally:
            await ws.close()
    arun(main())


def test_malformed_protobuf_gets_bad_request_and_connection_survives(hub):
    async def main():
        ws = await open_pb(hub)
        try:
            await pb_connect(hub, ws)
            # A length prefix longer than the frame: 107, no crash.
            await ws.send(b"\x7f\x01\x02")
            (err,) = await recv_replies(ws)
            assert err.error.code == 107
            # A corrupt varint (ten continuation bytes).
            await ws.send(b"\xff" * 11)
            (err,) = await recv_replies(ws)
            assert err.error.code == 107
            # Bytes that are not a Command.
            await ws.send(b"\x03\xff\xff\xff")
            (err,) = await recv_replies(ws)
            assert err.error.code == 107
            # Payloads must be JSON documents: the same bytes go to JSON subscribers.
            pub = pb.Command(id=5)
            pub.publish.channel = "news"
            pub.publish.data = b"\x00\x01 not json"
            await ws.send(delimited(pub))
            (err,) = await recv_replies(ws)
            assert err.id == 5 and err.error.code == 107
            # Still connected and answering.
            ping = pb.Command(id=6)
            ping.ping.SetInParent()
            await ws.send(delimited(ping))
            (pong,) = await recv_replies(ws)
            assert pong.id == 6 and pong.HasField("ping")
            history = await asyncio.to_thread(hub.api_result, "history", {"channel": "news", "limit": 10})
            assert not history.get("publications"), "a refused publish changed nothing"
        finally:
            await ws.close()
    arun(main())


def test_server_ping_is_an_empty_reply_and_empty_command_is_the_pong(hub_factory):
    hub = hub_factory("--ping-interval", "1")

    async def main():
        ws = await open_pb(hub)
        try:
            await pb_connect(hub, ws)
            frame = await asyncio.wait_for(ws.recv(), WAIT)
            assert frame == b"\x00", frame
            await ws.send(b"\x00")  # the pong
            frame = await asyncio.wait_for(ws.recv(), WAIT)
            assert frame == b"\x00"  # the next ping: still connected
        finally:
            await ws.close()
    arun(main())
