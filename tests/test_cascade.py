"""The verification cascade: the verdict of asking everything at once, from no more calls than a check needs."""

import asyncio
import itertools

import pytest

from drim_data.stages.cascade import Check, outcome, run_checks, wave_size


def checks(script: dict[str, list[bool]], asked: list[tuple[str, int]], votes=3, samples=3) -> list[Check]:
    """The verify stage's four checks with its default thresholds, answering from `script` and logging each call."""

    def ask(role):
        async def one(i: int) -> tuple[str, bool]:
            asked.append((role, i))
            await asyncio.sleep(0)
            return f"{role}{i}", script[role][i]

        return one

    return [
        Check("vote", "teacher_disagrees", votes, lambda r: r >= 0.67, ask("vote")),
        Check("validator", "validator_ambiguous", 1, lambda r: r == 1, ask("validator")),
        Check("solver_full", "solvable_without_zoom", samples, lambda r: r <= 0.25, ask("solver_full")),
        Check("solver_crop", "unsolvable_on_crop", samples, lambda r: r >= 0.5, ask("solver_crop")),
    ]


def one_at_a_time(check: Check, answers: list[bool]) -> int:
    """How many samples a check needs when each is asked only after the one before came back."""
    for n in range(check.samples + 1):
        if outcome(check, sum(answers[:n]), n) is not None:
            return n
    raise AssertionError("a check is always decided once every sample is in")


def test_every_outcome_gets_the_all_at_once_verdict_from_only_the_calls_it_needs():
    sizes = {"vote": 3, "validator": 1, "solver_full": 3, "solver_crop": 3}
    roles = list(sizes)

    async def compare() -> int:
        cases = 0
        for bits in itertools.product([False, True], repeat=sum(sizes.values())):
            it = iter(bits)
            script = {role: [next(it) for _ in range(n)] for role, n in sizes.items()}
            everything, cascaded = [], []
            expected, all_graded = await run_checks(checks(script, everything), cascade=False)
            reason, graded = await run_checks(checks(script, cascaded), cascade=True)
            assert reason == expected
            assert len(everything) == 10
            for role in graded:  # what the cascade asked is what asking everything got, sample for sample
                assert graded[role] == all_graded[role][: len(graded[role])]
            needed = 0  # every check up to the first failing one, each until it is decided
            for check in checks(script, []):
                needed += one_at_a_time(check, script[check.role])
                if not outcome(check, sum(script[check.role]), check.samples):
                    break
            assert len(cascaded) == needed and len(set(cascaded)) == needed
            assert [r for r, _ in cascaded] == sorted((r for r, _ in cascaded), key=roles.index)
            cases += 1
        return cases

    assert asyncio.run(compare()) == 2**10


@pytest.mark.parametrize(
    ("passes", "samples", "correct", "asked", "expected"),
    [
        (lambda r: r >= 0.67, 3, 0, 0, 1),  # one wrong vote of three already fails 0.67
        (lambda r: r >= 0.5, 4, 0, 0, 2),  # two right decide "at least half"; so do three wrong
        (lambda r: r <= 0.25, 4, 0, 0, 2),  # two right are too many; three wrong are needed to pass
        (lambda r: r <= 0.25, 4, 0, 2, 1),  # one more wrong passes, one more right leaves it open
        (lambda r: r >= 0.5, 8, 3, 5, 1),
    ],
)
def test_a_wave_is_the_fewest_samples_that_could_decide(passes, samples, correct, asked, expected):
    check = Check("x", "x", samples, passes, None)
    assert outcome(check, correct, asked) is None
    assert wave_size(check, correct, asked) == expected


def test_the_first_wrong_vote_ends_the_item():
    asked: list[tuple[str, int]] = []
    script = {"vote": [False, True, True], "validator": [True], "solver_full": [False] * 3, "solver_crop": [True] * 3}
    reason, graded = asyncio.run(run_checks(checks(script, asked)))
    assert reason == "teacher_disagrees" and asked == [("vote", 0)] and graded == {"vote": [("vote0", False)]}
