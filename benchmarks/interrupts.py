"""Ctrl-C at random moments: nothing is recorded as an item error, nothing incomplete is exported, and the rerun's
shards equal an uninterrupted run's, on the built-in path and on a model-teacher path (a local test server).

    python benchmarks/interrupts.py [--runs 20] [--seed 0] [--paths builtin model]

Each run starts `drim-data generate` in a subprocess, sends SIGINT after a random delay within the length of a
clean run, then reruns to completion in this process and compares the shards' sha256 with the clean run's.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drim_data.pipeline import run_pipeline  # noqa: E402
from drim_data.recipe import load_recipe  # noqa: E402
from schemas.manifest import ManifestError, verify_version  # noqa: E402
from tests.conftest import HARBOUR, NEON, query, write_recipe  # noqa: E402
from tests.openai_server import FakeOpenAI  # noqa: E402
from tests.test_resume import shard_hashes  # noqa: E402
from tests.test_runner import KEY_ENV, LENIENT, _lenient_teacher  # noqa: E402


def sections(path: str, base_url: str) -> dict:
    if path == "builtin":
        return {}
    endpoint = {"api_key_env": KEY_ENV, "model": "t", "max_in_flight": 4, "base_url": base_url}
    return {"teacher": {"stages": ["verification"], "endpoint": endpoint, "verification": LENIENT}}


ERRORS = "SELECT count(*) FROM drops WHERE reason = 'error' OR reason LIKE 'teacher_%'"


def complete(version: Path) -> bool:
    """A version folder whose manifest and every shard check out (one renamed into place is whole by design)."""
    try:
        verify_version(version)
    except ManifestError:
        return False
    return True


def interrupted_run(recipe: Path, delay: float) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "drim_data", "generate", str(recipe), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, KEY_ENV: "k", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)},
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate()
    return proc.returncode, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--paths", nargs="+", default=["builtin", "model"], choices=["builtin", "model"])
    args = parser.parse_args()
    rng = random.Random(args.seed)
    os.environ[KEY_ENV] = "k"
    print(
        "| path | runs | stopped by Ctrl-C | finished first | items recorded as errors | incomplete exports "
        "| tracebacks | reruns equal to a clean run |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI(_lenient_teacher, latency=0.05) as server:
        tmp = Path(tmp)
        images = tmp / "images"
        images.mkdir()
        for src in (NEON, HARBOUR):
            shutil.copy(src, images / src.name)
        for path in args.paths:
            started = time.perf_counter()
            clean = shard_hashes(
                run_pipeline(
                    load_recipe(write_recipe(tmp / path / "clean", images, **sections(path, server.base_url)))
                ).export.path
            )
            length = time.perf_counter() - started + 2.0  # the subprocess also starts Python and imports
            stopped = finished = errors = incomplete = tracebacks = equal = 0
            for i in range(args.runs):
                folder = tmp / path / f"run{i}"
                recipe = write_recipe(folder, images, **sections(path, server.base_url))
                code, output = interrupted_run(recipe, rng.uniform(0.5, length))
                stopped += code == 130
                finished += code == 0
                if "Traceback" in output:
                    tracebacks += 1
                    print(f"run {i} of {path} printed a traceback:\n{output[-3000:]}", file=sys.stderr)
                db = folder / "state.duckdb"
                if db.exists():
                    errors += query(db, ERRORS)[0][0]
                incomplete += sum(not complete(v) for v in (folder / "out" / "test-set").glob("v*"))
                equal += shard_hashes(run_pipeline(load_recipe(recipe)).export.path) == clean
            print(
                f"| {path} | {args.runs} | {stopped} | {finished} | {errors} | {incomplete} | {tracebacks} | {equal} |"
            )


if __name__ == "__main__":
    main()
