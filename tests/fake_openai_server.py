"""A small OpenAI-compatible HTTP server for tests (standard library only).

It serves ``POST /v1/chat/completions`` on 127.0.0.1 (a free port) in a thread and answers with a
script, one entry per request, in order. It records every request it got (path, headers with lower-case names, JSON body).

    with FakeOpenAIServer([pairs_reply([("She ate an apple.", "She ate a apple.")]),
                           error_reply(429), pairs_reply([...])]) as server:
        ... OpenAI(base_url=server.base_url, ...) ...
        assert len(server.requests) == 3

A script entry is a ``Reply``, or a callable ``f(body: dict) -> Reply`` (to answer by content).
Once the script is used up, ``default`` answers (a 400 error unless given).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass
class Reply:
    status: int = 200
    body: str = ""
    headers: dict = field(default_factory=dict)
    drop: bool = False  # close the connection without answering (a connection error for the client)


def chat_reply(content: str | None, model: str = "fake-model", finish_reason: str = "stop") -> Reply:
    """A 200 chat completion whose message content is ``content``."""
    body = {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "finish_reason": finish_reason,
                     "message": {"role": "assistant", "content": content, "refusal": None}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }
    return Reply(200, json.dumps(body))


def pairs_reply(pairs, **kw) -> Reply:
    """A chat completion whose content is ``{"pairs": [{"a": ..., "b": ...}, ...]}``."""
    return chat_reply(json.dumps({"pairs": [{"a": a, "b": b} for a, b in pairs]}), **kw)


def error_reply(status: int, message: str = "scripted error", headers: dict | None = None) -> Reply:
    body = {"error": {"message": message, "type": "fake_error", "param": None, "code": None}}
    return Reply(status, json.dumps(body), headers or {})


def drop_connection() -> Reply:
    return Reply(drop=True)


class FakeOpenAIServer:
    def __init__(self, script: list[Reply | Callable[[dict], Reply]] | None = None,
                 default: Reply | None = None):
        self.script = list(script or [])
        self.default = default or error_reply(400, "fake server: the script is used up")
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def _next(self, body: dict) -> Reply:
        with self._lock:
            entry = self.script.pop(0) if self.script else self.default
        return entry(body) if callable(entry) else entry

    def start(self) -> "FakeOpenAIServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep the test output clean
                pass

            def _send(self, status: int, text: str, headers: dict | None = None) -> None:
                data = text.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8")
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"_unparsed": raw}
                with server._lock:
                    server.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}))
                    return
                reply = server._next(body)
                if reply.drop:
                    self.close_connection = True
                    try:
                        import socket
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                self._send(reply.status, reply.body, reply.headers)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
