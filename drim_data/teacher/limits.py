"""An endpoint's limits (requests in flight, requests and tokens per minute), kept in this process or, in a
partitioned run, shared by every partition through one Ray actor per endpoint, so that N workers together stay
within the one budget the endpoint grants."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from typing import Any

from drim_data.recipe import EndpointConfig, TeacherConfig, sha256_json

_SHARED: dict[str, Any] = {}  # endpoint key -> the actor holding its budget, in a partition's worker
_PARTITION: list[int] = [0]  # which partition this worker runs, for the actor's books


class RateLimiter:
    """At most `per_minute` units (requests, or tokens) in any window of `window_s` seconds: the count an
    endpoint keeps, so a burst of a minute's budget is followed by a wait, never by a 429."""

    def __init__(self, per_minute: int, window_s: float = 60.0):
        self.limit, self.window_s = float(per_minute), window_s
        self.spent: deque[tuple[float, float]] = deque()  # (when, how much), oldest first
        self.total = 0.0

    async def acquire(self, amount: float) -> None:
        amount = min(amount, self.limit)  # a request larger than the whole budget goes alone
        while True:
            now = time.monotonic()
            while self.spent and self.spent[0][0] <= now - self.window_s:
                self.total -= self.spent.popleft()[1]
            if self.total + amount <= self.limit:
                self.spent.append((now, amount))
                self.total += amount
                return
            await asyncio.sleep(self.spent[0][0] + self.window_s - now)


class Budget:
    """One endpoint's limits. `slot` admits one attempt: a place in flight, one request and its tokens."""

    def __init__(self, max_in_flight: int, requests_per_minute: int, tokens_per_minute: int):
        self.max_in_flight = max_in_flight
        self.in_flight: asyncio.Semaphore | None = None  # made in the event loop that first takes a place
        self._loop = None
        self.requests = RateLimiter(requests_per_minute) if requests_per_minute else None
        self.tokens = RateLimiter(tokens_per_minute) if tokens_per_minute else None
        self.held: Counter[int] = Counter()  # places in flight per partition, given back if one dies

    async def take(self, tokens: int, partition: int = 0) -> None:
        if self._loop is not asyncio.get_running_loop():  # places in flight belong to one event loop (a stage's)
            self._loop, self.in_flight = asyncio.get_running_loop(), asyncio.Semaphore(self.max_in_flight)
            self.held.clear()
        await self.in_flight.acquire()
        self.held[partition] += 1
        try:
            if self.requests:
                await self.requests.acquire(1)
            if self.tokens:
                await self.tokens.acquire(tokens)
        except BaseException:
            self.give(partition)
            raise

    def give(self, partition: int = 0) -> None:
        if self.held[partition]:
            self.held[partition] -= 1
            self.in_flight.release()

    def forget(self, partition: int) -> None:
        """A partition that died holds its places for ever: free them."""
        for _ in range(self.held[partition]):
            self.give(partition)

    @contextlib.asynccontextmanager
    async def slot(self, tokens: int) -> AsyncIterator[None]:
        await self.take(tokens)
        try:
            yield
        finally:
            self.give()


class SharedBudget:
    """A `Budget` held by a Ray actor, used the same way from any partition."""

    def __init__(self, actor: Any, partition: int):
        self.actor, self.partition = actor, partition

    @contextlib.asynccontextmanager
    async def slot(self, tokens: int) -> AsyncIterator[None]:
        import ray

        taking = self.actor.take.remote(tokens, self.partition)
        try:
            await taking
        except asyncio.CancelledError:  # a caller gone while it waited: the actor stops waiting for it too
            ray.cancel(taking)
            raise
        try:
            yield
        finally:
            self.actor.give.remote(self.partition)


def endpoint_key(cfg: EndpointConfig) -> str:
    return sha256_json([cfg.base_url, cfg.model, cfg.api_key_env])


def budget_for(cfg: EndpointConfig) -> Budget | SharedBudget:
    """The shared budget of this endpoint when a partitioned run started one, else one for this process."""
    actor = _SHARED.get(endpoint_key(cfg))
    if actor is not None:
        return SharedBudget(actor, _PARTITION[0])
    return Budget(cfg.max_in_flight, cfg.requests_per_minute, cfg.tokens_per_minute)


def start_shared(teacher: TeacherConfig) -> dict[str, Any]:
    """One actor per endpoint the recipe's model stages use, for every partition to share."""
    import ray

    actors: dict[str, Any] = {}
    if not teacher.stages:
        return actors
    actor_class = ray.remote(num_cpus=0, max_concurrency=10_000)(Budget)
    for cfg in (teacher.endpoint, teacher.solver):
        if cfg is not None and endpoint_key(cfg) not in actors:
            limits = (cfg.max_in_flight, cfg.requests_per_minute, cfg.tokens_per_minute)
            actors[endpoint_key(cfg)] = actor_class.remote(*limits)
    return actors


def use_shared(actors: dict[str, Any], partition: int) -> None:
    """In a partition's worker: teachers built from now on draw on these budgets."""
    _SHARED.clear()
    _SHARED.update(actors)
    _PARTITION[0] = partition


def forget_partition(actors: dict[str, Any], partition: int) -> None:
    for actor in actors.values():
        actor.forget.remote(partition)
