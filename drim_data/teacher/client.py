"""Model teachers behind any OpenAI-compatible endpoint. This is the only module that imports `openai`.

Every request is keyed by a hash of its canonical content (model, messages with images replaced by their
sha256, parameters, prompt version). A stored successful response is never requested again, so reruns, resumed
runs and parser fixes replay from DuckDB (teacher/store.py). Requests run concurrently (bounded in flight),
under optional request / token per-minute limits, with retries that honour Retry-After on 429 and back off
exponentially with jitter on 5xx, timeouts and dropped connections, up to a cap; every final failure is
recorded with its reason. What no retry can fix (no key, a malformed URL, refused credentials, an unknown model
or path, a server that cannot be reached at all) is a `RunFault` that stops the run.

A `base_url` list names replicas of one model: each attempt goes to the live replica with the fewest requests in
flight, and one that refuses connections, or fails several attempts in a row, is set aside for a cool-down while
the others carry on. Only when the last live one cannot be reached is the run stopped. Which replica answered is
no part of a request's key.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gc
import os
import random
import re
import socket
import ssl
import time
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import duckdb
import openai
from PIL import Image

from drim_data.errors import RunFault
from drim_data.pixels.images import encode_jpeg, sha256
from drim_data.recipe import EndpointConfig, sha256_json, url_problem
from drim_data.teacher import batch
from drim_data.teacher.limits import budget_for
from drim_data.teacher.store import CallStore, call_row

IMAGE_TOKENS_ESTIMATE = 800  # for the tokens-per-minute limit, before the server reports real usage
# The SDK's telemetry headers (OS, architecture, runtime): none of the server's business, and each header costs
# client CPU on every request.
_NO_PLATFORM_HEADERS = {
    f"X-Stainless-{name}": openai.Omit()
    for name in ("Lang", "Package-Version", "OS", "Arch", "Runtime", "Runtime-Version")
}
REPLICA_FAILURES = 3  # failed attempts in a row that set a replica aside (a refused connection: at once)
REPLICA_COOLDOWN_S = 30.0  # how long a failing replica is set aside while the others carry on
# failures that are the server's, not the request's (and every 5xx): they count against a replica
_REPLICA_FAULTS = ("unreachable", "connection", "timeout", "malformed_response")
_TOKENS = re.compile(r"(?i)\bbearer\s+[^\s\"',;]+|\bsk-[A-Za-z0-9_\-]{6,}")


class TeacherFailed(Exception):
    """A request that could not be completed after all attempts; `reason` is what `status` counts."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Deferred(Exception):
    """The request was queued for the Batch API; the item is retried once the batch is collected."""


@dataclass
class Answer:
    content: str | None
    refusal: str | None
    tool_calls: list[dict]
    cached: bool


class _Outcome(NamedTuple):
    """One attempt's result: the body, or why it failed, the server's requested wait and whether to retry."""

    body: dict | None
    reason: str = ""
    detail: str = ""
    latency: float = 0.0
    wait: float | None = None
    retryable: bool = False


@dataclass
class _Request:
    """One request in flight, shared by every caller that asked for the same content."""

    task: asyncio.Task | None = None
    callers: int = 0
    on_wire: bool = False  # an attempt is being answered: it is paid for, so its reply is kept
    abandoned: bool = False  # nobody waits any more: finish the attempt on the wire, start no other


@dataclass
class _Replica:
    """One server of an endpoint; `client` belongs to the event loop the teacher is bound to."""

    url: str
    client: Any = None
    in_flight: int = 0
    sent: int = 0
    failures: int = 0  # failed attempts since its last success
    down_until: float = 0.0  # set aside until then
    error: str = ""  # its last failure, for the message when none is left


def sent_size(width: int, height: int, max_pixels: int, multiple: int = 1) -> tuple[int, int]:
    """The size an image reaches the endpoint at: downscaled to the pixel budget, never upscaled, each side then
    rounded down to a `multiple` (the endpoint's `image_multiple`). A teacher's boxes in pixels are in this size."""
    if width * height > max_pixels:
        scale = (max_pixels / (width * height)) ** 0.5
        width, height = max(1, int(width * scale)), max(1, int(height * scale))
    if multiple > 1:
        width, height = (max(multiple, side // multiple * multiple) for side in (width, height))
    return width, height


def image_part(image: Image.Image, max_pixels: int, multiple: int = 1) -> tuple[dict, str]:
    """An image as a base64 JPEG data URL, downscaled to the pixel budget, and its content hash."""
    size = sent_size(image.width, image.height, max_pixels, multiple)
    if size != image.size:
        image = image.resize(size)
    data = encode_jpeg(image, 90)
    url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    return {"type": "image_url", "image_url": {"url": url}}, sha256(data)


@dataclass
class Teacher:
    """One endpoint and model; `ask` is safe to call from many coroutines of one event loop, and `close` ends
    every request still in flight and writes every received response before the stage's event loop ends."""

    cfg: EndpointConfig
    con: duckdb.DuckDBPyConnection
    role: str = "teacher"
    sent: int = 0  # requests that reached the network in this process
    waits: list[float] = field(default_factory=list)  # every retry's wait, for status and tests
    deferred: list[batch.Pending] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._key = os.environ.get(self.cfg.api_key_env)
        if not self._key:
            raise RunFault(
                f"the {self.role} endpoint needs an API key in the environment variable "
                f"{self.cfg.api_key_env} (set it to any value for servers without authentication)"
            )
        problems = [url_problem(url) for url in self.cfg.urls] or ["is an empty list"]
        if any(problems):
            raise RunFault(f"the {self.role} endpoint's base_url {next(p for p in problems if p)}")
        self.replicas = [_Replica(url) for url in self.cfg.urls]
        self.model = self.cfg.model
        self.store = CallStore(self.con)
        self._loop = None
        self._inflight: dict[str, _Request] = {}
        self._parts: dict[int, tuple[dict, str]] = {}
        self._budget = budget_for(self.cfg)  # this process's, or the one all partitions of a run share

    def _bind(self) -> None:
        """Clients and semaphores belong to one event loop; each stage runs its own."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self.store.abandon_loop()
            self._inflight.clear()  # requests of an ended loop were cancelled with it
            self._loop = loop
            for replica in self.replicas:  # aiohttp's transport costs about half the CPU per request of httpx's
                replica.client = openai.AsyncOpenAI(
                    api_key=self._key,
                    base_url=replica.url,
                    max_retries=0,
                    timeout=self.cfg.timeout_s,
                    default_headers=_NO_PLATFORM_HEADERS,
                    http_client=openai.DefaultAioHttpClient(verify=_tls_context()),
                )
                replica.in_flight = 0
            self.client = self.replicas[0].client  # the Batch API's files and batches live on one server

    async def close(self) -> None:
        """End the stage's requests, write every response received, and close the client while its loop runs.

        Requests nobody waits for any more finish the attempt on the wire (it is paid for) unless the stage is
        being cancelled; the rest are cancelled. Whatever happens here, the queued rows are written.
        """
        if self._loop is not asyncio.get_running_loop():
            return
        stopping = asyncio.current_task().cancelling()
        requests = list(self._inflight.values())
        try:
            for request in requests:
                request.abandoned = True
                if stopping or not request.on_wire:
                    request.task.cancel()
            await asyncio.gather(*(r.task for r in requests), return_exceptions=True)
        finally:
            await self.store.drain()
            for replica in self.replicas:
                await replica.client.close()
            self._loop = None

    def build(
        self,
        messages: list[dict],
        *,
        prompt_version: str,
        schema: dict | None = None,
        variant: int = 0,
        temperature: float | None = None,
    ) -> tuple[str, dict, dict]:
        """The request payload and its cache key. Messages may hold PIL images as {"type": "image", "image": im}."""
        wire, canonical = [], []
        for message in messages:
            content = message["content"]
            if isinstance(content, list):
                parts, keys = [], []
                for part in content:
                    if part["type"] == "image":
                        wire_part, digest = self._image_part(part["image"])
                        parts.append(wire_part)
                        keys.append({"type": "image", "sha256": digest})
                    else:
                        parts.append(part)
                        keys.append(part)
                content, key_content = parts, keys
            else:
                key_content = content
            wire.append({**message, "content": content})
            canonical.append({**message, "content": key_content})
        params = {
            "model": self.model,
            "temperature": self.cfg.temperature if temperature is None else temperature,
            "max_tokens": self.cfg.max_tokens,
        }
        if schema is not None and self.cfg.json_schema:
            params["response_format"] = {"type": "json_schema", "json_schema": schema}
        payload = {**params, "messages": wire}
        if variant:
            payload["seed"] = variant  # independent samples of the same request are distinct requests
        key_doc = {**params, "messages": canonical, "prompt_version": prompt_version, "variant": variant}
        return sha256_json(key_doc), payload, key_doc

    def _image_part(self, image: Image.Image) -> tuple[dict, str]:
        """Each image object is encoded once, however many requests (votes, turns, repairs) carry it."""
        key = id(image)
        if key not in self._parts:
            self._parts[key] = image_part(image, self.cfg.image_max_pixels, self.cfg.image_multiple)
            weakref.finalize(image, self._parts.pop, key, None)  # an id is reused only after its object is gone
        return self._parts[key]

    async def ask(
        self,
        messages: list[dict],
        *,
        purpose: str,
        stage: str,
        prompt_version: str,
        schema: dict | None = None,
        variant: int = 0,
        temperature: float | None = None,
    ) -> Answer:
        """The reply to a request: from the cache, from the same request already in flight, or from the server.

        A caller that is cancelled stops waiting; the request itself stops only when nobody waits for it, and
        an attempt already being answered is finished and stored first (it is paid for either way).
        """
        self._bind()
        key, payload, canonical = self.build(
            messages, prompt_version=prompt_version, schema=schema, variant=variant, temperature=temperature
        )
        cached = self.cached(key)
        if cached is not None:
            return cached
        request = self._inflight.get(key)
        if request is None or request.task.cancelling():  # the same request from two items at once is sent once
            if self.cfg.batch:
                if all(p.key != key for p in self.deferred):
                    self.deferred.append(batch.Pending(key, payload, purpose, canonical))
                raise Deferred(key)
            request = self._inflight[key] = _Request()
            request.task = asyncio.get_running_loop().create_task(
                self._send(request, key, payload, purpose, stage, canonical)
            )
            request.task.add_done_callback(functools.partial(self._finished, key, request))
        request.callers += 1
        request.abandoned = False
        try:
            return await asyncio.shield(request.task)
        finally:
            request.callers -= 1
            if not request.callers and not request.task.done():
                request.abandoned = True
                if not request.on_wire:
                    request.task.cancel()

    def _finished(self, key: str, request: _Request, task: asyncio.Task) -> None:
        if self._inflight.get(key) is request:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: its callers re-raise it, an abandoned request has none

    def cached(self, key: str) -> Answer | None:
        body = self.store.response(key)
        return None if body is None else _answer(body, cached=True)

    def truncation(self, body: dict) -> str | None:
        """Why a reply is not a success though the server sent it: cut off at max_tokens."""
        if body["choices"][0].get("finish_reason") == "length":
            return f"truncated: the reply reached max_tokens ({self.cfg.max_tokens}) before it ended"
        return None

    async def _send(
        self, request: _Request, key: str, payload: dict, purpose: str, stage: str, canonical: dict
    ) -> Answer:
        replica = None
        for attempt in range(1, self.cfg.max_attempts + 1):
            async with self._budget.slot(_estimate_tokens(payload)):  # a wait a caller may still cancel
                request.on_wire = True
                try:
                    outcome, replica = await self._attempt(payload, avoid=replica)
                finally:
                    request.on_wire = False
            if outcome.body is not None:
                error = self.truncation(outcome.body)
                row = call_row(key, stage, self.model, purpose, canonical, outcome.body, outcome.latency, attempt)
                if error:
                    self.store.record((*row[:10], "failed", error, *row[12:]))
                    raise TeacherFailed("truncated", error.partition(": ")[2])
                await self.store.put(row)
                return _answer(outcome.body, cached=False)
            if outcome.reason in ("unauthorized", "not_found") or (
                outcome.reason == "unreachable" and attempt == self.cfg.max_attempts and not self._others_live(replica)
            ):
                raise self._fault(outcome, replica)
            if not outcome.retryable or attempt == self.cfg.max_attempts or request.abandoned:
                break
            self.waits.append(outcome.wait if outcome.wait is not None else self._backoff(attempt))
            await asyncio.sleep(self.waits[-1])
        error = f"{outcome.reason}: {outcome.detail}"[:1000]
        self.store.record(call_row(key, stage, self.model, purpose, canonical, None, None, attempt, error=error))
        raise TeacherFailed(outcome.reason, outcome.detail)

    def _fault(self, outcome: _Outcome, replica: _Replica) -> RunFault:
        """The run-level fault an attempt's outcome means, naming the endpoint, the model and the key's variable."""
        where = f"the {self.role} endpoint {replica.url} (model {self.model})"
        if outcome.reason == "unauthorized":
            return RunFault(
                f"{where} refused the API key in {self.cfg.api_key_env}: {outcome.detail[:200]}; "
                "check the key and its permissions"
            )
        if outcome.reason == "not_found":
            return RunFault(f"{where} answered 404 Not Found: check the model name and that base_url ends in /v1")
        if len(self.replicas) > 1:
            failing = "; ".join(f"{r.url} ({r.error[:120]})" for r in self.replicas)
            return RunFault(
                f"none of the {len(self.replicas)} replicas of the {self.role} endpoint (model {self.model}) can be "
                f"reached: {failing}; are the servers running, and are base_url's hosts and ports right?"
            )
        return RunFault(
            f"{where} cannot be reached after {self.cfg.max_attempts} attempts ({outcome.detail[:200]}); "
            "is the server running, and are base_url's host and port right?"
        )

    def _pick(self, avoid: _Replica | None) -> _Replica:
        """The live replica with the fewest requests in flight (then the fewest sent), other than `avoid`, the one
        this request just failed on, where another is live."""
        now = time.monotonic()
        live = [r for r in self.replicas if r.down_until <= now and r is not avoid]
        live = live or [r for r in self.replicas if r.down_until <= now] or self.replicas
        return min(live, key=lambda r: (r.in_flight, r.sent))

    def _others_live(self, replica: _Replica) -> bool:
        now = time.monotonic()
        return any(r is not replica and r.down_until <= now for r in self.replicas)

    def _settle(self, replica: _Replica, outcome: _Outcome) -> None:
        """Count a replica's failures; one that refuses connections or fails `REPLICA_FAILURES` attempts in a row
        is set aside for `REPLICA_COOLDOWN_S` while another is live (the last one is retried like a lone server)."""
        if outcome.body is not None:
            replica.failures = 0
            return
        if outcome.reason not in _REPLICA_FAULTS and not outcome.reason.startswith("http_5"):
            return  # the request's fault, or a rate limit: the replica is fine
        replica.failures += 1
        replica.error = f"{outcome.reason}: {outcome.detail}"
        if (outcome.reason == "unreachable" or replica.failures >= REPLICA_FAILURES) and self._others_live(replica):
            replica.down_until = time.monotonic() + REPLICA_COOLDOWN_S
            replica.failures = REPLICA_FAILURES - 1  # back on probation: one more failure sets it aside again

    async def _attempt(self, payload: dict, avoid: _Replica | None = None) -> tuple[_Outcome, _Replica]:
        replica = self._pick(avoid)
        replica.in_flight += 1
        replica.sent += 1
        try:
            outcome = await self._post(replica.client, payload)
        finally:
            replica.in_flight -= 1
        self._settle(replica, outcome)
        return outcome, replica

    async def _post(self, client: openai.AsyncOpenAI, payload: dict) -> _Outcome:
        """One attempt: the reply, or why it failed (never an exception, bar cancellation)."""
        self.sent += 1
        started = time.perf_counter()
        try:
            # The low-level call sends the payload as built and returns plain JSON: the typed wrapper's
            # per-request transforms cost more CPU than the rest of a request's handling together.
            body = await client.post("/chat/completions", body=payload, cast_to=object)
            if not isinstance(body, dict) or not body.get("choices"):
                raise ValueError("reply has no choices")
            return _Outcome(body, latency=time.perf_counter() - started)
        except openai.RateLimitError as exc:
            return _Outcome(None, "rate_limited", self._detail(exc), wait=_retry_after(exc), retryable=True)
        except openai.APIStatusError as exc:  # 4xx other than timeouts and conflicts: the request is wrong
            if exc.status_code in (401, 403):
                return _Outcome(None, "unauthorized", self._detail(exc))
            if exc.status_code == 404:
                return _Outcome(None, "not_found", self._detail(exc))
            retryable = exc.status_code >= 500 or exc.status_code in (408, 409)
            return _Outcome(None, f"http_{exc.status_code}", self._detail(exc), retryable=retryable)
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            # the SDK reports a refused connection as a connect timeout: the cause tells them apart
            if _unreachable(exc):
                return _Outcome(None, "unreachable", self._detail(exc), retryable=True)
            reason = "timeout" if isinstance(exc, openai.APITimeoutError) else "connection"
            return _Outcome(None, reason, self._detail(exc), retryable=True)
        except (openai.APIError, ValueError) as exc:  # unparseable or truncated response bodies
            return _Outcome(None, "malformed_response", self._detail(exc, named=True), retryable=True)

    def _detail(self, exc: Exception, named: bool = False) -> str:
        """An error's text as it may be stored and shown: a server that echoes credentials gets them scrubbed."""
        text = f"{type(exc).__name__}: {exc}" if named else str(exc)
        return scrub(text, self._key)[:300]

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter."""
        return random.uniform(0, min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** (attempt - 1)))

    async def flush_batch(self, stage: str) -> int:
        """Submit deferred requests as one batch (or resume an open one), wait for it, store every response."""
        self._bind()
        return await batch.flush_batch(self, stage)


def scrub(text: str, key: str | None) -> str:
    """`text` without the API key or anything that looks like a credential (Bearer tokens, sk-... keys)."""
    if key:
        text = text.replace(key, "[redacted]")
    return _TOKENS.sub("[redacted]", text)


def _unreachable(exc: BaseException) -> bool:
    """Whether the connection itself failed: refused, or the host name did not resolve."""
    for _ in range(10):  # the SDK's wrapper, the transport's, the socket's: a short chain
        if exc is None:
            return False
        if isinstance(exc, ConnectionRefusedError | socket.gaierror):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def run(coroutine: Coroutine) -> object:
    """Run a stage's requests on uvloop where it is installed: its event loop costs a fraction of asyncio's own
    per request, which is what bounds a single client's requests per second."""
    try:
        from uvloop import run as run_loop
    except ImportError:  # Windows
        run_loop = asyncio.run
    gc.freeze()  # what is alive now (modules, the run's state) is never garbage: full collections skip it
    try:
        return run_loop(coroutine)
    finally:
        gc.unfreeze()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context per process: loading the CA store costs more than a hundred requests' worth of CPU."""
    return ssl.create_default_context()


def _answer(body: dict, cached: bool) -> Answer:
    message = body["choices"][0]["message"]
    return Answer(message.get("content"), message.get("refusal"), message.get("tool_calls") or [], cached)


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                return None
    return None


def _estimate_tokens(payload: dict) -> int:
    text, images = 0, 0
    for message in payload["messages"]:
        content = message["content"]
        if isinstance(content, str):
            text += len(content)
        else:
            for part in content:
                if part["type"] == "image_url":
                    images += 1
                else:
                    text += len(part.get("text") or "")
    return text // 4 + images * IMAGE_TOKENS_ESTIMATE + payload.get("max_tokens", 0)
