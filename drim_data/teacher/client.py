"""Model teachers behind any OpenAI-compatible endpoint. This is the only module that imports `openai`.

Every request is keyed by a hash of its canonical content (model, messages with images replaced by their
sha256, parameters, prompt version). A stored successful response is never requested again, so reruns, resumed
runs and parser fixes replay from DuckDB. Requests run concurrently (bounded in flight), under optional
request / token per-minute limits, with retries that honour Retry-After on 429 and back off exponentially with
jitter on 5xx, timeouts and dropped connections, up to a cap; every final failure is recorded with its reason.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gc
import io
import json
import os
import random
import ssl
import time
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

import duckdb
import openai
import pyarrow as pa
from PIL import Image

from drim_data.errors import DrimError
from drim_data.pixels.images import encode_jpeg, sha256
from drim_data.recipe import EndpointConfig, sha256_json

IMAGE_TOKENS_ESTIMATE = 800  # for the tokens-per-minute limit, before the server reports real usage
# The SDK's telemetry headers (OS, architecture, runtime): none of the server's business, and each header costs
# client CPU on every request.
_NO_PLATFORM_HEADERS = {
    f"X-Stainless-{name}": openai.Omit()
    for name in ("Lang", "Package-Version", "OS", "Arch", "Runtime", "Runtime-Version")
}
FLUSH_DELAY_S = 0.1  # responses arriving within this window share one database write
_CALL_SCHEMA = pa.schema(
    [
        ("call_key", pa.string()),
        ("stage", pa.string()),
        ("model", pa.string()),
        ("purpose", pa.string()),
        ("request", pa.string()),
        ("response", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("latency_s", pa.float64()),
        ("created_at", pa.timestamp("us")),
        ("status", pa.string()),
        ("error", pa.string()),
        ("attempts", pa.int32()),
        ("via_batch", pa.bool_()),
    ]
)


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
    """One request's result: the body, or why it failed, the server's requested wait and whether to retry."""

    body: dict | None
    reason: str = ""
    detail: str = ""
    latency: float = 0.0
    wait: float | None = None
    retryable: bool = False


@dataclass
class _Pending:
    key: str
    payload: dict
    purpose: str
    canonical: dict


class RateLimiter:
    """A token bucket refilled continuously at `per_minute / 60` per second."""

    def __init__(self, per_minute: int):
        self.capacity = float(per_minute)
        self.level = float(per_minute)
        self.rate = per_minute / 60.0
        self.updated = time.monotonic()

    async def acquire(self, amount: float) -> None:
        amount = min(amount, self.capacity)
        while True:
            now = time.monotonic()
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now
            if self.level >= amount:
                self.level -= amount
                return
            await asyncio.sleep((amount - self.level) / self.rate)


def image_part(image: Image.Image, max_pixels: int) -> tuple[dict, str]:
    """An image as a base64 JPEG data URL, downscaled to the pixel budget, and its content hash."""
    if image.width * image.height > max_pixels:
        scale = (max_pixels / (image.width * image.height)) ** 0.5
        image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
    data = encode_jpeg(image, 90)
    url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    return {"type": "image_url", "image_url": {"url": url}}, sha256(data)


@dataclass
class Teacher:
    """One endpoint and model; `ask` is safe to call from many coroutines of one event loop."""

    cfg: EndpointConfig
    con: duckdb.DuckDBPyConnection
    role: str = "teacher"
    sent: int = 0  # requests that reached the network in this process
    waits: list[float] = field(default_factory=list)  # every retry's wait, for status and tests
    deferred: list[_Pending] = field(default_factory=list)

    def __post_init__(self) -> None:
        key = os.environ.get(self.cfg.api_key_env)
        if not key:
            raise DrimError(
                f"the {self.role} endpoint needs an API key in the environment variable "
                f"{self.cfg.api_key_env} (set it to any value for servers without authentication)"
            )
        self.model = self.cfg.model
        self._loop = None
        self._queued: list[tuple[tuple, asyncio.Future]] = []
        self._stored: set[str] | None = None
        self._inflight: dict[str, asyncio.Future] = {}
        self._parts: dict[int, tuple[dict, str]] = {}
        self._requests = RateLimiter(self.cfg.requests_per_minute) if self.cfg.requests_per_minute else None
        self._tokens = RateLimiter(self.cfg.tokens_per_minute) if self.cfg.tokens_per_minute else None

    def _bind(self) -> None:
        """Clients and semaphores belong to one event loop; each stage runs its own."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            # aiohttp's transport costs about half the CPU per request of the default one
            self.client = openai.AsyncOpenAI(
                api_key=os.environ[self.cfg.api_key_env],
                base_url=self.cfg.base_url,
                max_retries=0,
                timeout=self.cfg.timeout_s,
                default_headers=_NO_PLATFORM_HEADERS,
                http_client=openai.DefaultAioHttpClient(verify=_tls_context()),
            )
            self._in_flight = asyncio.Semaphore(self.cfg.max_in_flight)
            self._writing = asyncio.Lock()

    async def close(self) -> None:
        """Close the client while its event loop still runs (each stage's loop ends after its items)."""
        if self._loop is asyncio.get_running_loop():
            await self.client.close()
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
            self._parts[key] = image_part(image, self.cfg.image_max_pixels)
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
        self._bind()
        key, payload, canonical = self.build(
            messages, prompt_version=prompt_version, schema=schema, variant=variant, temperature=temperature
        )
        cached = self.cached(key)
        if cached is not None:
            return cached
        if key in self._inflight:  # the same request from two items at once is sent (and paid) once
            return await asyncio.shield(self._inflight[key])
        if self.cfg.batch:
            if all(p.key != key for p in self.deferred):
                self.deferred.append(_Pending(key, payload, purpose, canonical))
            raise Deferred(key)
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            answer = await self._send(key, payload, purpose, stage, canonical)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else needs to
            raise
        else:
            future.set_result(answer)
            return answer
        finally:
            del self._inflight[key]

    def cached(self, key: str) -> Answer | None:
        if self._stored is None:  # one query for the whole run instead of one per request
            self._stored = {
                k for (k,) in self.con.execute("SELECT call_key FROM teacher_calls WHERE status = 'ok'").fetchall()
            }
        if key not in self._stored:
            return None
        row = self.con.execute("SELECT response FROM teacher_calls WHERE call_key = ?", [key]).fetchall()
        return _answer(json.loads(row[0][0]), cached=True)

    async def _send(self, key: str, payload: dict, purpose: str, stage: str, canonical: dict) -> Answer:
        for attempt in range(1, self.cfg.max_attempts + 1):
            if self._requests:
                await self._requests.acquire(1)
            if self._tokens:
                await self._tokens.acquire(_estimate_tokens(payload))
            outcome = await self._attempt(payload)
            if outcome.body is not None:
                await self._persist(self._row(key, stage, purpose, canonical, outcome.body, outcome.latency, attempt))
                return _answer(outcome.body, cached=False)
            if not outcome.retryable or attempt == self.cfg.max_attempts:
                break
            self.waits.append(outcome.wait if outcome.wait is not None else self._backoff(attempt))
            await asyncio.sleep(self.waits[-1])
        error = f"{outcome.reason}: {outcome.detail}"[:1000]
        self._write_rows([self._row(key, stage, purpose, canonical, None, None, attempt, error=error)])
        raise TeacherFailed(outcome.reason, outcome.detail)

    async def _attempt(self, payload: dict) -> _Outcome:
        async with self._in_flight:
            self.sent += 1
            started = time.perf_counter()
            try:
                # The low-level call sends the payload as built and returns plain JSON: the typed wrapper's
                # per-request transforms cost more CPU than the rest of a request's handling together.
                body = await self.client.post("/chat/completions", body=payload, cast_to=object)
                if not isinstance(body, dict) or not body.get("choices"):
                    raise ValueError("reply has no choices")
                return _Outcome(body, latency=time.perf_counter() - started)
            except openai.RateLimitError as exc:
                return _Outcome(None, "rate_limited", str(exc)[:300], wait=_retry_after(exc), retryable=True)
            except openai.APIStatusError as exc:  # 4xx other than timeouts and conflicts: the request is wrong
                retryable = exc.status_code >= 500 or exc.status_code in (408, 409)
                return _Outcome(None, f"http_{exc.status_code}", str(exc)[:300], retryable=retryable)
            except openai.APITimeoutError as exc:
                return _Outcome(None, "timeout", str(exc)[:300], retryable=True)
            except openai.APIConnectionError as exc:
                return _Outcome(None, "connection", str(exc)[:300], retryable=True)
            except (openai.APIError, ValueError) as exc:  # unparseable or truncated response bodies
                return _Outcome(None, "malformed_response", f"{type(exc).__name__}: {str(exc)[:300]}", retryable=True)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter."""
        return random.uniform(0, min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** (attempt - 1)))

    def _row(
        self,
        key: str,
        stage: str,
        purpose: str,
        canonical: dict,
        body: dict | None,
        latency: float | None,
        attempts: int,
        via_batch: bool = False,
        error: str | None = None,
    ) -> tuple:
        usage = (body or {}).get("usage") or {}
        return (
            key,
            stage,
            self.model,
            purpose,
            json.dumps(canonical),
            None if body is None else json.dumps(body),
            usage.get("prompt_tokens") or 0,
            usage.get("completion_tokens") or 0,
            latency,
            datetime.now(UTC).replace(tzinfo=None),
            "failed" if error else "ok",
            error,
            attempts,
            via_batch,
        )

    def _write_rows(self, rows: list[tuple], cursor: duckdb.DuckDBPyConnection | None = None) -> None:
        """One statement for many calls: a commit per row would cost more CPU than the request itself."""
        columns = zip(*rows, strict=True)
        table = pa.Table.from_arrays(
            [pa.array(c, t) for c, t in zip(columns, _CALL_SCHEMA.types, strict=True)], schema=_CALL_SCHEMA
        )
        with cursor or self.con.cursor() as cursor:  # its own handle: stage code may hold an open result on `con`
            cursor.register("new_calls", table)
            cursor.execute("INSERT OR REPLACE INTO teacher_calls SELECT * FROM new_calls")
            cursor.unregister("new_calls")

    async def _persist(self, row: tuple) -> None:
        """Group commit: responses that arrive together are written together, and each caller resumes only
        once its own response is in the database."""
        loop = asyncio.get_running_loop()
        if not self._queued:
            loop.call_later(FLUSH_DELAY_S, lambda: loop.create_task(self._flush()))
        done = loop.create_future()
        self._queued.append((row, done))
        await done
        if self._stored is not None:
            self._stored.add(row[0])

    async def _flush(self) -> None:
        """Writes on the writer thread (DuckDB releases the GIL), so requests keep flowing meanwhile."""
        queued, self._queued = self._queued, []
        rows = [row for row, _ in queued]
        try:
            async with self._writing:  # one write at a time, each on its own cursor
                await asyncio.get_running_loop().run_in_executor(None, self._write_rows, rows, self.con.cursor())
        except Exception as exc:  # every waiter learns that its response was not stored
            for _, done in queued:
                done.set_exception(exc)
            return
        for _, done in queued:
            done.set_result(None)

    async def flush_batch(self, stage: str) -> int:
        """Submit deferred requests as one batch (or resume an open one), wait for it, store every response."""
        self._bind()
        open_batch = next(
            iter(
                self.con.execute(
                    "SELECT batch_id FROM teacher_batches WHERE model = ? AND stage = ? AND status = 'submitted'",
                    [self.model, stage],
                ).fetchall()
            ),
            None,
        )
        if open_batch is None:
            if not self.deferred:
                return 0
            lines = [
                json.dumps({"custom_id": p.key, "method": "POST", "url": "/v1/chat/completions", "body": p.payload})
                for p in self.deferred
            ]
            upload = await self.client.files.create(
                file=("batch.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch"
            )
            batch = await self.client.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            requests = {p.key: {"purpose": p.purpose, "canonical": p.canonical} for p in self.deferred}
            self.con.execute(
                "INSERT INTO teacher_batches VALUES (?, ?, ?, 'submitted', ?, ?)",
                [batch.id, self.model, stage, json.dumps(requests), datetime.now(UTC).replace(tzinfo=None)],
            )
            batch_id = batch.id
        else:
            batch_id = open_batch[0]
        self.deferred.clear()
        return await self._collect(batch_id, stage)

    async def _collect(self, batch_id: str, stage: str) -> int:
        while True:
            batch = await self.client.batches.retrieve(batch_id)
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                break
            await asyncio.sleep(self.cfg.batch_poll_s)
        requests = json.loads(
            self.con.execute("SELECT requests FROM teacher_batches WHERE batch_id = ?", [batch_id]).fetchall()[0][0]
        )
        rows = []
        if batch.output_file_id:
            content = await self.client.files.content(batch.output_file_id)
            for line in content.text.splitlines():
                result = json.loads(line)
                request = requests.get(result["custom_id"])
                response = result.get("response") or {}
                if request and response.get("status_code") == 200 and response.get("body", {}).get("choices"):
                    rows.append(
                        self._row(
                            result["custom_id"],
                            stage,
                            request["purpose"],
                            request["canonical"],
                            response["body"],
                            0.0,
                            1,
                            via_batch=True,
                        )
                    )
        if rows:
            self._write_rows(rows)
            if self._stored is not None:
                self._stored.update(row[0] for row in rows)
        self.con.execute("UPDATE teacher_batches SET status = ? WHERE batch_id = ?", [batch.status, batch_id])
        return len(rows)


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
