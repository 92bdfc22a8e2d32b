"""Paid calls per kept item with verification's checks asked all at once, and as a cascade.

The same recipe (the four demo photos; questions, verification and trajectories by a scripted teacher on the local
test server, whose verification replies make a realistic mix of passes and failures: `tests.fake_teacher.MIX`;
the server reports 100 prompt and 20 completion tokens per reply)
runs on a fresh database with `teacher.verification.cascade: false`, then `true`. From each database: model calls
and tokens per kept item by stage, as `drim-data status` reports them, and the verdicts with their reasons, which
must be identical. Last, verification runs again with the cascade on a copy of the all-at-once database, and must
send nothing: every call it asks was cached under the same key.

    python benchmarks/verification_calls.py [--votes 3] [--samples 4] [--latency 0.1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drim_data.db import connect, reset_stage  # noqa: E402
from drim_data.pipeline import run_pipeline  # noqa: E402
from drim_data.recipe import load_recipe  # noqa: E402
from drim_data.status import read_status  # noqa: E402
from tests.conftest import DEMO_IMAGES, demo_settings, write_recipe  # noqa: E402
from tests.fake_teacher import competent_teacher, mixed_verifier, task_of  # noqa: E402
from tests.openai_server import FakeOpenAI  # noqa: E402

KEY_ENV = "DRIM_BENCH_TEACHER_KEY"
STAGES = ["questions", "verification", "trajectories"]


def honest_teacher(body: dict):
    """The scripted teacher without its deliberately wrong count reference ("oops"), which every vote rejects at
    once: the verdicts then follow `MIX` alone."""
    reply = competent_teacher(body)
    if task_of(body) == "questions":
        doc = json.loads(reply)
        doc["questions"] = [q for q in doc["questions"] if q["answer"] != "oops"]
        reply = json.dumps(doc)
    return reply


def recipe_for(folder: Path, base_url: str, cascade: bool, votes: int, samples: int) -> Path:
    endpoint = {"base_url": base_url, "model": "big-vlm", "api_key_env": KEY_ENV, "max_in_flight": 16}
    verification = {"votes": votes, "solver_samples": samples, "cascade": cascade}
    teacher = {"stages": STAGES, "questions_per_image": 6, "endpoint": endpoint, "verification": verification}
    return write_recipe(folder, DEMO_IMAGES, teacher=teacher, **demo_settings())


def verdicts(db: Path) -> dict[str, str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return dict(con.execute("SELECT question_id, coalesce(reason, 'kept') FROM verdicts").fetchall())
    finally:
        con.close()


def measure(db: Path) -> dict:
    con = duckdb.connect(str(db), read_only=True)
    try:
        status = read_status(con)
    finally:
        con.close()
    seconds = next(s.seconds for s in status.stages if s.stage == "verify")
    return {"kept": status.kept, "costs": {c.stage: c for c in status.per_kept}, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--votes", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4, help="solver samples on each view")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds the server takes per reply")
    args = parser.parse_args()
    os.environ.setdefault(KEY_ENV, "local")
    results, sent = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for cascade in (False, True):
            with FakeOpenAI(mixed_verifier(honest_teacher), latency=args.latency) as server:
                path = recipe_for(Path(tmp) / str(cascade), server.base_url, cascade, args.votes, args.samples)
                recipe = load_recipe(path)
                run_pipeline(recipe)
            results[cascade] = measure(recipe.db) | {"verdicts": verdicts(recipe.db)}
            sent[cascade] = len(server.successful())
        # the cascade over the all-at-once run's cache: the same keys per sample, so nothing is sent
        again = Path(tmp) / "again"
        shutil.copytree(Path(tmp) / "False", again)
        con = connect(again / "state.duckdb")
        for stage in ("verify", "trajectories"):
            reset_stage(con, stage)
        con.close()
        with FakeOpenAI(mixed_verifier(honest_teacher)) as server:
            run_pipeline(
                load_recipe(recipe_for(again, server.base_url, True, args.votes, args.samples)), until="verify"
            )
        rerun_sent = len(server.successful())
        rerun_same = verdicts(again / "state.duckdb") == results[False]["verdicts"]

    off, on = results[False], results[True]
    reasons: dict[str, int] = {}
    for reason in off["verdicts"].values():
        reasons[reason] = reasons.get(reason, 0) + 1
    print(f"votes {args.votes}, solver samples {args.samples}; verdicts: {dict(sorted(reasons.items()))}")
    print("| stage | calls / kept, all at once | cascade | change | tokens / kept, all at once | cascade | change |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for stage in off["costs"]:
        a, b = off["costs"][stage], on["costs"][stage]
        print(
            f"| {stage} | {a.calls_per_kept:.1f} | {b.calls_per_kept:.1f} | {b.calls / a.calls - 1:+.0%} "
            f"| {a.tokens_per_kept:.0f} | {b.tokens_per_kept:.0f} | "
            f"{(b.prompt_tokens + b.completion_tokens) / (a.prompt_tokens + a.completion_tokens) - 1:+.0%} |"
        )
    print(f"kept: {off['kept']} all at once, {on['kept']} cascade; requests answered: {sent[False]} / {sent[True]}")
    print(
        f"verify stage: {off['seconds']:.1f} s all at once, {on['seconds']:.1f} s cascade ({args.latency} s a reply)"
    )
    print(f"verdicts and reasons identical: {off['verdicts'] == on['verdicts']}")
    print(f"cascade rerun over the all-at-once cache: {rerun_sent} requests sent, verdicts identical: {rerun_same}")


if __name__ == "__main__":
    main()
