"""An item's teacher requests run as one group: they all finish, or the first failure cancels the rest.

No request outlives the item that asked for it, so nothing is left running (or waiting to be stored) when the
stage ends. Where one part of an item may fail without costing the others, `or_drop` makes its Drop a result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from drim_data.errors import Drop, RunFault
from drim_data.teacher.client import Deferred

T = TypeVar("T")


async def together(*requests: Coroutine[Any, Any, T]) -> list[T]:
    """The requests' results in order. The first failure cancels the others and is raised as itself (a run
    fault or an interrupt before anything else). Requests deferred to a batch do not cancel their siblings:
    the whole item goes into the same batch, and Deferred is raised once every request has been seen."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_deferrable(r)) for r in requests]
    except BaseExceptionGroup as failed:
        raise _most_serious(failed) from None
    results = [task.result() for task in tasks]
    deferred = next((r for r in results if isinstance(r, Deferred)), None)
    if deferred is not None:
        raise deferred
    return results


async def or_drop(request: Coroutine[Any, Any, T]) -> T | Drop:
    """The request's result, or its Drop as a value: that part of the item is lost, not the item."""
    try:
        return await request
    except Drop as exc:
        return exc


async def _deferrable(request: Coroutine[Any, Any, T]) -> T | Deferred:
    try:
        return await request
    except Deferred as exc:
        return exc


def _most_serious(failed: BaseExceptionGroup) -> BaseException:
    leaves = list(_leaves(failed))
    for kind in (KeyboardInterrupt, SystemExit, RunFault):
        for exc in leaves:
            if isinstance(exc, kind):
                return exc
    return leaves[0]


def _leaves(group: BaseExceptionGroup):
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
