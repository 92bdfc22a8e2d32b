"""Partitioned runs on a local Ray: 1 worker against 2 on a mining-bound recipe, and against one machine.

The set is `--images` distinct photo-like JPEGs of `--side` pixels square (tiled from the demo photos), with no
annotations, so every image is mined and nothing else costs much. Each run starts from an empty database; each
partition mines in its own process, on one core. The floor is the ordinary run of the same recipe on one machine
(mining with one process per core), measured in the same session. Each run is the best of `--repeats`: a shared
machine's noise only ever adds time. Ingest runs on the driver before the partitions start, with a thread per core
whatever the worker count: its share is what cannot scale with workers.

    python benchmarks/ray_scaling.py [--images 96] [--side 6000] [--partitions 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import ray
import yaml

from drim_data.cluster import run_partitioned
from drim_data.pipeline import run_pipeline
from drim_data.recipe import load_recipe

sys.path.insert(0, str(Path(__file__).parent))
from image_sets import huge_jpeg, tagged  # noqa: E402


def recipe_in(folder: Path, images: Path):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    settings = {
        "dataset": "bench",
        "db": str(folder / "state.duckdb"),
        "output_dir": str(folder / "out"),
        "ingest": {"images": str(images)},
    }
    path.write_text(yaml.safe_dump(settings))
    return load_recipe(path)


def timed(run) -> tuple[float, float]:
    """Seconds for the whole run, and for its ingest."""
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, next(s.seconds for s in result.stages if s.stage == "ingest")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--side", type=int, default=6000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = work / "images"
        images.mkdir()
        data = huge_jpeg(work / "huge.jpg", args.side).read_bytes()
        for i in range(args.images):
            (images / f"photo-{i:03d}.jpg").write_bytes(tagged(data, f"copy {i}"))
        for r in range(args.repeats):
            single = recipe_in(work / f"single-{r}", images)
            runs.setdefault("one machine, no Ray", []).append(timed(lambda single=single: run_pipeline(single)))
            for workers in (1, 2):
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
                try:
                    recipe = recipe_in(work / f"ray-{workers}-{r}", images)
                    run = timed(lambda recipe=recipe: run_partitioned(recipe, args.partitions))
                    runs.setdefault(f"Ray, {workers} worker(s)", []).append(run)
                finally:
                    ray.shutdown()
    best = {name: min(times) for name, times in runs.items()}
    one = best["Ray, 1 worker(s)"][0]
    print(
        f"{args.images} images of {args.side}x{args.side}, {args.partitions} partitions, no annotations, "
        f"best of {args.repeats}"
    )
    print(f"{'run':<26}{'seconds':>10}{'ingest':>10}{'vs 1 worker':>14}")
    for name, (seconds, ingest) in best.items():
        print(f"{name:<26}{seconds:>10.1f}{ingest:>10.1f}{one / seconds:>14.2f}")


if __name__ == "__main__":
    main()
