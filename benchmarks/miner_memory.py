"""Peak memory of mining, and of the whole `generate`, on a generated 100-megapixel JPEG.

Each run is a fresh `python -m drim_data generate` process; its peak resident set size is read back from the
operating system (ru_maxrss of the waited-for child), so nothing here is estimated.

    python benchmarks/miner_memory.py [--side 10000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from image_sets import huge_jpeg  # noqa: E402

PEAK = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, capture_output=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_mib(command: list[str]) -> tuple[float, float]:
    """Peak RSS in MiB of `command` run in a fresh wrapper process, and its wall time."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PEAK, *command], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1]) / 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        image = huge_jpeg(tmp / "images" / "huge.jpg", args.side)
        megapixels = args.side**2 / 1e6
        size = image.stat().st_size / 1e6
        print(f"\n{image.name}: {args.side}x{args.side} ({megapixels:.0f} MP), {size:.1f} MB JPEG")
        print(f"decoded RGB alone: {args.side**2 * 3 / 2**20:.0f} MiB\n")
        print("| run | peak RSS (MiB) | seconds |")
        print("|---|---:|---:|")
        for until in ("ingest", "mine", "generate", "verify", "trajectories", None):
            folder = tmp / (until or "all")
            folder.mkdir()
            recipe = {
                "dataset": "memory",
                "db": str(folder / "state.duckdb"),
                "output_dir": str(folder / "out"),
                "ingest": {"images": str(image.parent), "max_pixels": 200_000_000},
            }
            (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
            command = [sys.executable, "-m", "drim_data", "generate", str(folder / "recipe.yaml"), "--no-progress"]
            peak, seconds = peak_mib(command + (["--until", until] if until else []))
            run = f"--until {until}" if until else "(every stage and export)"
            print(f"| generate {run} | {peak:.0f} | {seconds:.1f} |")
        baseline, _ = peak_mib(
            [sys.executable, "-c", "import drim_data.cli, drim_data.pixels.candidates, duckdb, pandas"]
        )
        print(f"| the interpreter with drim's imports, nothing done | {baseline:.0f} | |")


if __name__ == "__main__":
    main()
