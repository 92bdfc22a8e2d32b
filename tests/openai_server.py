"""A real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions, files and batches wire format.

Replies come from a scripted `responder(request_json) -> Reply | str | dict`, and any reply can be a fault: an
HTTP status with headers (429 + Retry-After, 500), a delay (timeouts), a dropped connection, or a malformed body.
Every request is logged, so tests can prove what was (and was not) sent.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 refuses bursts of new connections
    daemon_threads = True
    killed = False

    def handle_error(self, request, client_address) -> None:  # a killed server's handlers fail quietly
        if not self.killed:
            super().handle_error(request, client_address)


@dataclass
class Reply:
    status: int = 200
    body: dict | str | None = None  # dict: JSON; str: sent raw (malformed JSON, truncated bodies)
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False  # close the connection without an answer
    echo_headers: bool = False  # the error body quotes the request's Authorization header, as careless servers do


def completion(
    content: str | None,
    prompt_tokens: int = 100,
    completion_tokens: int = 20,
    refusal: str | None = None,
    tool_calls: list | None = None,
    model: str = "teacher",
) -> dict:
    message = {"role": "assistant", "content": content, "refusal": refusal}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-" + hashlib.sha1(str(content).encode()).hexdigest()[:12],
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


@dataclass
class LoggedRequest:
    path: str
    body: dict | None
    status: int
    answered: bool = False  # a 200 whose body has choices: a reply the client was billed for and could use
    at: float = field(default_factory=time.monotonic)  # when it was answered

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.body, sort_keys=True).encode()).hexdigest()


class FakeOpenAI:
    """Start with `with FakeOpenAI(responder) as server:`; `server.base_url` goes to the client."""

    def __init__(self, responder: Callable[[dict], Reply | str | dict], latency: float = 0.0):
        self.responder = responder
        self.latency = latency
        self.log: list[LoggedRequest] = []
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batch_polls_until_done = 1
        self.hold_after: int | None = None  # after this many answered completions, hold further requests
        self.release = threading.Event()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()  # open client connections, which `kill` resets
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self._server.killed:
            self._server.shutdown()
            self._server.server_close()

    def kill(self) -> None:
        """Die as a crashed server does: its port refuses connections and every open one is reset mid-request."""
        self._server.killed = True
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def successful(self, path: str = "/v1/chat/completions") -> list[LoggedRequest]:
        return [r for r in self.log if r.path == path and r.answered]

    def _record(self, path: str, body: dict | None, status: int, sent: object = None) -> None:
        answered = status == 200 and isinstance(sent, dict) and bool(sent.get("choices"))
        with self._lock:
            self.log.append(LoggedRequest(path, body, status, answered))

    def _new_id(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}-{next(self._ids)}"

    def _reply_for(self, body: dict) -> Reply:
        reply = self.responder(body)
        if isinstance(reply, str):
            return Reply(body=completion(reply, model=body.get("model", "teacher")))
        if isinstance(reply, dict):
            return Reply(body=reply)
        return reply

    def _run_batch(self, batch: dict) -> None:
        lines = []
        for line in self.files[batch["input_file_id"]].decode().splitlines():
            request = json.loads(line)
            reply = self._reply_for(request["body"])
            self._record("batch:" + request["url"], request["body"], reply.status, reply.body)
            body = reply.body if isinstance(reply.body, dict) else {"raw": reply.body}
            lines.append(
                json.dumps(
                    {
                        "id": self._new_id("batch_req"),
                        "custom_id": request["custom_id"],
                        "response": {"status_code": reply.status, "body": body},
                        "error": None,
                    }
                )
            )
        output_id = self._new_id("file")
        self.files[output_id] = ("\n".join(lines) + "\n").encode()
        batch.update(
            status="completed",
            output_file_id=output_id,
            request_counts={"total": len(lines), "completed": len(lines), "failed": 0},
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # small header and body writes must not wait for delayed ACKs

            def log_message(self, *args) -> None:  # quiet
                pass

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server._connections.add(self.connection)

            def finish(self) -> None:
                with server._lock:
                    server._connections.discard(self.connection)
                try:
                    super().finish()
                except OSError:  # reset by `kill`
                    pass

            def _send(self, status: int, body: dict | str | bytes, headers: dict | None = None) -> None:
                data = (
                    body
                    if isinstance(body, bytes)
                    else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_POST(self) -> None:
                raw = self._body()
                if self.path == "/v1/chat/completions":
                    body = json.loads(raw)
                    if server.hold_after is not None and len(server.successful()) >= server.hold_after:
                        server.release.wait(60)
                    reply = server._reply_for(body)
                    time.sleep(server.latency + reply.delay)
                    if reply.drop:
                        server._record(self.path, body, 0)
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    message = f"status {reply.status}"
                    if reply.echo_headers:
                        message += f" for a request with Authorization: {self.headers.get('Authorization')}"
                    error = {"error": {"message": message, "type": "server_error"}}
                    sent = reply.body if reply.body is not None else error
                    try:
                        self._send(reply.status, sent, reply.headers)
                    except OSError:  # the client went away: nothing was delivered
                        server._record(self.path, body, 0)
                        return
                    server._record(self.path, body, reply.status, sent)
                elif self.path == "/v1/files":
                    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                        b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw
                    )
                    content = next(
                        p.get_payload(decode=True)
                        for p in message.iter_parts()
                        if p.get_param("name", header="content-disposition") == "file"
                    )
                    file_id = server._new_id("file")
                    server.files[file_id] = content
                    server._record(self.path, None, 200)
                    self._send(
                        200,
                        {
                            "id": file_id,
                            "object": "file",
                            "bytes": len(content),
                            "created_at": 0,
                            "filename": "batch.jsonl",
                            "purpose": "batch",
                            "status": "processed",
                        },
                    )
                elif self.path == "/v1/batches":
                    body = json.loads(raw)
                    batch = {
                        "id": server._new_id("batch"),
                        "object": "batch",
                        "endpoint": body["endpoint"],
                        "input_file_id": body["input_file_id"],
                        "completion_window": "24h",
                        "status": "validating",
                        "created_at": 0,
                        "polls": 0,
                    }
                    server.batches[batch["id"]] = batch
                    server._record(self.path, body, 200)
                    self._send(200, {k: v for k, v in batch.items() if k != "polls"})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_GET(self) -> None:
                if self.path.startswith("/v1/batches/"):
                    batch = server.batches[self.path.rsplit("/", 1)[1]]
                    batch["polls"] += 1
                    if batch["status"] != "completed" and batch["polls"] >= server.batch_polls_until_done:
                        server._run_batch(batch)
                    elif batch["status"] == "validating":
                        batch["status"] = "in_progress"
                    server._record(self.path, None, 200)
                    self._send(200, {k: v for k, v in batch.items() if k != "polls"})
                elif self.path.startswith("/v1/files/") and self.path.endswith("/content"):
                    file_id = self.path.split("/")[3]
                    server._record(self.path, None, 200)
                    self._send(200, server.files[file_id])
                else:
                    self._send(404, {"error": {"message": "not found"}})

        return Handler


if __name__ == "__main__":  # python -m tests.openai_server LATENCY: answers "ok" to everything, prints its URL
    import sys

    sys.setswitchinterval(0.0005)  # many handler threads wake at once; hand the GIL over quickly
    with FakeOpenAI(lambda body: "ok", latency=float(sys.argv[1]) if len(sys.argv) > 1 else 0.0) as running:
        sys.stdout.write(running.base_url + "\n")
        sys.stdout.flush()
        threading.Event().wait()
