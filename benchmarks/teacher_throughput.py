"""Teacher throughput against a local OpenAI-compatible server with a fixed latency.

For each in-flight limit, N distinct requests go through the real client and the real DuckDB cache; achieved
requests/s is compared with the ideal (in-flight limit / latency), and the client's CPU time per request is
measured. A fully cached rerun must send no request at all. The server runs in its own process, so its CPU is
not counted as the client's. Each level runs --repeat times: a virtual machine's neighbours take CPU time at
random (the "CPU stolen" column, from /proc/stat), and noise only ever lowers throughput, so the best run is shown
with the median beside it.

    python benchmarks/teacher_throughput.py [--latency 0.2] [--levels 1 8 32 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drim_data.db import connect  # noqa: E402
from drim_data.recipe import EndpointConfig  # noqa: E402
from drim_data.teacher.client import Teacher, run  # noqa: E402


async def send_all(teacher: Teacher, n: int, tag: str) -> None:
    await asyncio.gather(
        *(
            teacher.ask(
                [{"role": "user", "content": f"{tag} question {i}"}],
                purpose="bench",
                stage="bench",
                prompt_version="v1",
            )
            for i in range(n)
        )
    )


async def measured(teacher: Teacher, n: int, level: int) -> tuple[float, float]:
    """Warm up (imports, connections) on the same event loop, then time n requests."""
    await send_all(teacher, level, f"warm-up{level}")
    wall, cpu = time.perf_counter(), time.process_time()
    await send_all(teacher, n, f"level{level}")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await teacher.close()
    return wall, cpu


async def rerun(teacher: Teacher, n: int, level: int) -> None:
    await send_all(teacher, n, f"level{level}")
    await teacher.close()


def run_level(base_url: str, level: int, latency: float, db: Path) -> dict:
    n = max(64, level * 32)  # about 6 s of requests at the ideal rate: the start and the end weigh little
    con = connect(db)
    cfg = EndpointConfig(base_url=base_url, model="bench", api_key_env="DRIM_BENCH_KEY", max_in_flight=level)
    wall, cpu = run(measured(Teacher(cfg, con), n, level))
    again = Teacher(cfg, con)  # a fresh client over the same database: everything is cached
    run(rerun(again, n, level))
    seen = con.execute("SELECT median(latency_s) FROM teacher_calls WHERE request LIKE '%level%'").fetchone()[0]
    con.close()
    achieved, ideal = n / wall, level / latency
    return {
        "in_flight": level,
        "requests": n,
        "req_per_s": achieved,
        "ideal": ideal,
        "share": achieved / ideal,
        "cpu_ms_per_req": cpu / n * 1000,
        "rerun_sent": again.sent,
        "latency_ms": seen * 1000,
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of another process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_ticks() -> list[int]:
    """The machine's CPU time by state (user, nice, system, idle, iowait, irq, softirq, steal), from /proc/stat."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--repeat", type=int, default=3, help="runs per level; the table shows the best and median")
    args = parser.parse_args()
    os.environ["DRIM_BENCH_KEY"] = "local"
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.openai_server", str(args.latency)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    rows = []
    try:
        base_url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as tmp:
            for level in args.levels:
                runs = []
                for attempt in range(args.repeat):
                    before, ticks = _cpu_seconds(server.pid), _cpu_ticks()
                    runs.append(run_level(base_url, level, args.latency, Path(tmp) / f"{level}-{attempt}.duckdb"))
                    sent = runs[-1]["requests"] + level  # measured requests and warm-up; the rerun sends none
                    runs[-1]["server_cpu_ms_per_req"] = (_cpu_seconds(server.pid) - before) / sent * 1000
                    spent = [b - a for a, b in zip(ticks, _cpu_ticks(), strict=True)]
                    runs[-1]["steal"] = spent[7] / sum(spent)
                best = max(runs, key=lambda r: r["share"])
                rows.append({**best, "median_share": statistics.median(r["share"] for r in runs)})
    finally:
        server.kill()
    print(f"latency {args.latency * 1000:.0f} ms per request, {os.cpu_count()} cores, best of {args.repeat} runs")
    columns = [
        ("in flight", "in_flight", "{}"),
        ("requests", "requests", "{}"),
        ("req/s", "req_per_s", "{:.1f}"),
        ("ideal", "ideal", "{:.0f}"),
        ("of ideal", "share", "{:.1%}"),
        ("median run", "median_share", "{:.1%}"),
        ("client CPU ms/req", "cpu_ms_per_req", "{:.2f}"),
        ("server CPU ms/req", "server_cpu_ms_per_req", "{:.2f}"),
        ("median latency ms", "latency_ms", "{:.1f}"),
        ("CPU stolen", "steal", "{:.0%}"),
        ("cached rerun sent", "rerun_sent", "{}"),
    ]
    print("| " + " | ".join(title for title, _, _ in columns) + " |")
    print("|" + "---:|" * len(columns))
    for r in rows:
        print("| " + " | ".join(fmt.format(r[key]) for _, key, fmt in columns) + " |")


if __name__ == "__main__":
    main()
