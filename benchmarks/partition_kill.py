"""A partition's Ray worker killed with SIGKILL mid-run: the run still writes the single-node version, row for row.

The demo recipe runs once on one machine, then with `--partitions 4` on a local Ray (2 CPUs). `--after` seconds
after the first partition task starts, its worker process is killed (SIGKILL, as the kernel's OOM killer would).
Ray runs the task again, and the partition resumes from its own database. Printed: both runs' times, the rows
compared, and each partition's stage runs (a stage that ran before the kill and again after shows twice).

    python benchmarks/partition_kill.py [--work runs/partition-kill] [--after 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import ray

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drim_data.cluster import partition_db, run_partitioned  # noqa: E402
from drim_data.pipeline import run_pipeline  # noqa: E402
from drim_data.recipe import load_recipe  # noqa: E402

PARTITIONS = 4


def partition_workers() -> list[int]:
    """The processes running a partition task (Ray titles them after the task's function)."""
    found = subprocess.run(["pgrep", "-f", "ray::_partition"], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


def kill_one(after: float, killed: list[tuple[int, float]], started: float) -> None:
    while time.perf_counter() - started < 300 and not partition_workers():
        time.sleep(0.05)
    time.sleep(after)
    for pid in partition_workers()[:1]:
        os.kill(pid, signal.SIGKILL)
        killed.append((pid, time.perf_counter() - started))


def rows(version: Path, split: str) -> list[str]:
    return sorted(map(str, pq.read_table(version / "data" / split).to_pylist()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--after", type=float, default=4.0, help="seconds into the first partition to kill it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        base = load_recipe(REPO / "pipelines" / "demo.yaml")
        single = dataclasses.replace(base, db=work / "single.duckdb", output_dir=work / "single-out")
        started = time.perf_counter()
        alone = run_pipeline(single)
        single_s = time.perf_counter() - started
        part = dataclasses.replace(base, db=work / "ray.duckdb", output_dir=work / "ray-out")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        try:
            killed: list[tuple[int, float]] = []
            started = time.perf_counter()
            killer = threading.Thread(target=kill_one, args=(args.after, killed, started))
            killer.start()
            together = run_partitioned(part, PARTITIONS)
            ray_s = time.perf_counter() - started
            killer.join()
        finally:
            ray.shutdown()
        same = {s: rows(alone.export.path, s) == rows(together.export.path, s) for s in ("sft", "rl")}
        print(f"{'run':<40}{'seconds':>10}")
        print(f"{'one machine':<40}{single_s:>10.1f}")
        print(f"{f'{PARTITIONS} partitions, one worker killed':<40}{ray_s:>10.1f}")
        for pid, at in killed:
            print(f"killed worker {pid} at {at:.1f} s")
        print(f"rows equal to the single-node version: sft {same['sft']}, rl {same['rl']}")
        for k in range(PARTITIONS):
            con = duckdb.connect(str(partition_db(part, k, PARTITIONS)), read_only=True)
            runs = con.execute("SELECT stage, processed FROM stage_runs ORDER BY rowid").fetchall()
            con.close()
            print(f"partition {k}: " + ", ".join(f"{stage} {n}" for stage, n in runs))


if __name__ == "__main__":
    main()
