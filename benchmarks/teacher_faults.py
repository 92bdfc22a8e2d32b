"""A model-teacher recipe under injected faults: does every run end, and is a successful request ever sent twice?

Each trial builds a fresh database over the demo images with all four teacher stages against a local server
that turns a share of requests into faults (429, 500, 503, timeouts, dropped connections, truncated bodies),
with `max_attempts: 2` so that many requests fail for good. The pipeline runs as a subprocess under a timeout
(a run past it is a hang and is killed), then runs again on the same database, as a user would after a failed
run, until it has run `--runs` times. From the server's log: requests received, successful ones, and successful
requests whose identical payload had already succeeded earlier in the trial (a paid response that was lost, or
a cache that was not consulted).

    python benchmarks/teacher_faults.py [--trials 20] [--runs 4] [--faults 0.6] [--timeout 90]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fake_teacher import competent_teacher, with_faults  # noqa: E402
from tests.openai_server import FakeOpenAI  # noqa: E402

KEY_ENV = "DRIM_BENCH_TEACHER_KEY"
IMAGES = REPO / "data" / "demo" / "images"
TIMEOUT_S = 0.3  # the client's request timeout; the injected slow replies outlast it


def write_recipe(folder: Path, base_url: str) -> Path:
    images = folder / "images"
    images.mkdir()
    for name in ("neon_2019_YELL_2_541000_4977000_image_crop.png", "planet_shipsnet_scene_2.jpg"):
        (images / name).symlink_to(IMAGES / name)
    recipe = {
        "dataset": "faults",
        "db": str(folder / "state.duckdb"),
        "output_dir": str(folder / "out"),
        "ingest": {"images": str(images)},
        "teacher": {
            "stages": ["ground", "questions", "verification", "trajectories"],
            "questions_per_image": 6,
            "verification": {"votes": 3, "solver_samples": 2},
            "endpoint": {
                "base_url": base_url,
                "model": "big-vlm",
                "api_key_env": KEY_ENV,
                "max_attempts": 2,
                "timeout_s": TIMEOUT_S,
                "backoff_base_s": 0.01,
                "backoff_max_s": 0.02,
                "max_in_flight": 8,
            },
        },
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_once(recipe: Path, timeout: float) -> tuple[int | None, float]:
    """The CLI's exit code (None: killed at the timeout) and the seconds it ran."""
    env = {**os.environ, KEY_ENV: "local", "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "drim_data", "generate", str(recipe), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    return code, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--faults", type=float, default=0.6, help="share of requests answered with a fault")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds after which a run counts as hung")
    parser.add_argument("--runs", type=int, default=4, help="runs per trial on the same database")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    for trial in range(args.trials):
        responder = with_faults(competent_teacher, args.faults, seed=args.seed + trial, timeout_s=TIMEOUT_S)
        with FakeOpenAI(responder) as server, tempfile.TemporaryDirectory() as tmp:
            recipe = write_recipe(Path(tmp), server.base_url)
            runs = [run_once(recipe, args.timeout) for _ in range(args.runs)]
        seen, repeated = set(), 0
        for request in server.successful():
            repeated += request.digest in seen
            seen.add(request.digest)
        completions = [r for r in server.log if r.path == "/v1/chat/completions"]
        rows.append(
            {
                "trial": trial + 1,
                "exit": " / ".join("hung" if code is None else str(code) for code, _ in runs),
                "seconds": " / ".join(f"{s:.0f}" for _, s in runs),
                "hangs": sum(code is None for code, _ in runs),
                "requests": len(completions),
                "ok": len(server.successful()),
                "repeated": repeated,
            }
        )
        print(rows[-1], file=sys.stderr, flush=True)
    print(f"{args.trials} trials at {args.faults:.0%} injected faults, max_attempts 2, timeout {args.timeout:.0f} s")
    print("| trial | exit codes, run by run | seconds | requests | successful | repeated successful |")
    print("|---:|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['trial']} | {r['exit']} | {r['seconds']} | {r['requests']} | {r['ok']} | {r['repeated']} |")
    hangs = sum(r["hangs"] for r in rows)
    repeated = sum(r["repeated"] for r in rows)
    print(f"hangs: {hangs} of {args.runs * args.trials} runs; repeated successful requests: {repeated}")


if __name__ == "__main__":
    main()
