#!/usr/bin/env python3
"""A tiny OpenAI-compatible chat-completions server for trying the workers without a model
(and for the tests): it answers `You said: <last user message>`. A message containing
`sleep:<seconds>` makes it wait that long first (to provoke timeouts).

    hub-fake-llm --port 8080
"""

import argparse
import json
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        if not self.path.endswith("/chat/completions"):
            self.send_error(404)
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        messages = body.get("messages") or []
        last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        delay = re.search(r"sleep:(\d+(?:\.\d+)?)", last)
        if delay:
            time.sleep(float(delay.group(1)))
        answer = f"You said: {last}"
        if len(messages) > 2:
            answer += f" (turn {sum(1 for m in messages if m.get('role') == 'user')})"
        reply = json.dumps({
            "id": "chatcmpl-fake", "object": "chat.completion", "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
