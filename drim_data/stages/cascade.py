"""Verification checks asked in waves: each check only until its outcome is decided, and none after the first that
fails, so that an item pays only for the checks it needs.

The verdict equals that of asking every sample at once: the reason of the first check, in the given order, that
fails. That reason is known only once every check before it is known to pass, so the checks are asked in that
order; the caller puts first the checks that reject the most items for the fewest calls. Within a check, a wave
asks the fewest further samples that could decide it: one sample at a time would need all of them too, so waves
cost no more calls than single samples, in fewer round trips.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from drim_data.teacher.together import together

Graded = tuple[str, bool]  # an answer as stored, and whether it passes


@dataclass(frozen=True)
class Check:
    """`samples` graded answers whose pass rate must satisfy `passes` (monotone in the rate), else `reason`."""

    role: str
    reason: str
    samples: int
    passes: Callable[[float], bool]
    ask: Callable[[int], Coroutine[Any, Any, Graded]]  # sample index -> its graded answer


def rate(correct: int, samples: int) -> float:
    return correct / max(1, samples)


def outcome(check: Check, correct: int, asked: int) -> bool | None:
    """Passed (True), failed (False), or still open (None) with `correct` of `asked` samples passing: open while
    the rest could still go either way."""
    worst = check.passes(rate(correct, check.samples))
    best = check.passes(rate(correct + check.samples - asked, check.samples))
    return worst if worst == best else None


def wave_size(check: Check, correct: int, asked: int) -> int:
    """The fewest further samples that could decide the check; all passing or all failing decide soonest."""
    for more in range(1, check.samples - asked):
        if (
            outcome(check, correct + more, asked + more) is not None
            or outcome(check, correct, asked + more) is not None
        ):
            return more
    return check.samples - asked


async def run_checks(checks: list[Check], cascade: bool = True) -> tuple[str | None, dict[str, list[Graded]]]:
    """The first failing check's reason (None when all pass) and every answer asked, by role. Without `cascade`,
    every sample of every check is asked at once (one round trip; Batch API mode needs that)."""
    if not cascade:
        replies = iter(await together(*(c.ask(i) for c in checks for i in range(c.samples))))
        graded = {c.role: [next(replies) for _ in range(c.samples)] for c in checks}
        failed = (c for c in checks if not c.passes(rate(sum(ok for _, ok in graded[c.role]), c.samples)))
        return next((c.reason for c in failed), None), graded
    graded = {}
    for check in checks:
        got = graded[check.role] = []
        while (passed := outcome(check, sum(ok for _, ok in got), len(got))) is None:
            first = len(got)
            wave = wave_size(check, sum(ok for _, ok in got), first)
            got += await together(*(check.ask(i) for i in range(first, first + wave)))
        if not passed:
            return check.reason, graded
    return None, graded
