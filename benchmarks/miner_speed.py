"""Mining throughput against a floor measured in the same run: a plain full decode of the same files.

Per image: the fastest plain decode (PIL or OpenCV, whole image to RGB) against mining it (a reduced decode,
proposals on it, filters), both single-threaded, best of --repeat. An image that is about the size
of the model's global view has no object that needs zooming: mining it costs nothing. Then the mine stage end to end
(database reads and writes included) with one worker and with one per core, and, with --scale, the same stage
on a set --scale times larger, whose time should grow --scale times. No annotations: every image is proposed on.

    python benchmarks/miner_speed.py [--repeat 3] [--huge] [--scale 10]
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image

from drim_data.db import connect, reset_stage
from drim_data.pipeline import run_pipeline
from drim_data.pixels.candidates import Job, mine_image, side_range
from drim_data.pixels.sources import ImageRef, image_bytes
from drim_data.pixels.workers import cpu_count
from drim_data.recipe import load_recipe

sys.path.insert(0, str(Path(__file__).parent))
from image_sets import demo_copies, huge_jpeg  # noqa: E402

Image.MAX_IMAGE_PIXELS = None


def best_of(fn, repeat: int) -> float:
    return min(_timed(fn) for _ in range(repeat))


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def fastest_decode(data: bytes, repeat: int) -> tuple[float, float]:
    """Best-of times of a plain full decode by PIL (to its own RGB image) and by OpenCV (to an RGB array)."""
    pil = best_of(lambda: Image.open(io.BytesIO(data)).load(), repeat)
    ocv = best_of(lambda: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB), repeat)
    return pil, ocv


def ingested(folder: Path, images: Path, workers: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    recipe = {
        "dataset": "bench",
        "db": str(folder / "state.duckdb"),
        "output_dir": str(folder / "out"),
        "ingest": {"images": str(images), "max_pixels": 200_000_000},
        "mine": {"workers": workers},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_pipeline(load_recipe(path), until="ingest")
    return path


def stage_times(recipe_path: Path, repeat: int) -> list[float]:
    """The mine stage alone, from scratch each time, run by the CLI as a user would; its time as recorded."""
    recipe = load_recipe(recipe_path)
    times = []
    for _ in range(repeat):
        con = connect(recipe.db)
        reset_stage(con, "mine")
        con.close()
        command = [sys.executable, "-m", "drim_data", "generate", str(recipe_path), "--until", "mine", "--no-progress"]
        subprocess.run(command, check=True, capture_output=True)
        con = connect(recipe.db)
        times.append(
            con.execute("SELECT seconds FROM stage_runs WHERE stage = 'mine' ORDER BY started_at DESC").fetchone()[0]
        )
        con.close()
    return times


def spread(times: list[float]) -> str:
    return f"best {min(times):.2f} s, median {statistics.median(times):.2f}, worst {max(times):.2f}"


def per_image(folder: Path, repeat: int) -> None:
    recipe = load_recipe(ingested(folder / "db", folder / "images", 1))
    con = connect(recipe.db)
    rows = [
        (image_id, uri, image_bytes(con, image_id), width, height)
        for image_id, uri, width, height in con.execute(
            "SELECT image_id, uri, width, height FROM images ORDER BY 2"
        ).fetchall()
    ]
    con.close()
    print(f"\nPer image, single-threaded, best of {repeat} (seconds)\n")
    print("| image | MP | PIL decode | OpenCV decode | mining | mining / fastest decode |")
    print("|---|---:|---:|---:|---:|---:|")
    floors, mined = 0.0, 0.0
    for image_id, path, data, width, height in rows:
        ref = ImageRef(image_id, path, len(data), data)  # the bytes in hand: mining is timed, not reading
        job = Job(image_id, ref, width, height, [], recipe.mine, recipe.view)
        error = mine_image(job).error  # mining returns its errors, which would look very fast
        if error:
            raise RuntimeError(f"mining {path} failed: {error}")
        pil, ocv = fastest_decode(data, repeat)
        cost = best_of(lambda: mine_image(job), repeat)  # noqa: B023
        name, mp = Path(path).name, width * height / 1e6
        if not needs_proposals(width, height, recipe):
            print(f"| {name} | {mp:.1f} | {pil:.3f} | {ocv:.3f} | {cost:.3f} | - (nothing needs zooming) |")
            continue
        floors, mined = floors + min(pil, ocv), mined + cost
        print(f"| {name} | {mp:.1f} | {pil:.3f} | {ocv:.3f} | {cost:.3f} | {cost / min(pil, ocv):.2f} |")
    print(f"| all mined | | {floors:.3f} (fastest) | | {mined:.3f} | {mined / floors:.2f} |")


def needs_proposals(width: int, height: int, recipe) -> bool:
    """Whether the image has box sizes left to propose (one about the size of the model's view has none)."""
    low, high = side_range(width, height, recipe.mine, recipe.view)
    return low <= high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--huge", action="store_true", help="add a generated 10000x10000 JPEG to the per-image table")
    parser.add_argument("--copies", type=int, default=3, help="copies of the demo photos in the stage's base set")
    parser.add_argument("--scale", type=int, default=0, help="also time the stage on a set this many times larger")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # like a mining worker; decoding is single-threaded too

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo_copies(tmp / "single" / "images", 1)
        if args.huge:
            huge_jpeg(tmp / "single" / "images" / "huge_10000x10000.jpg")
        per_image(tmp / "single", args.repeat)

        files = demo_copies(tmp / "base" / "images", args.copies)
        megapixels = sum(Image.open(p).width * Image.open(p).height for p in files) / 1e6
        probe = load_recipe(ingested(tmp / "base" / "probe", tmp / "base" / "images", 1))
        decoded = [p for p in files if needs_proposals(*Image.open(p).size, probe)]  # mining skips the others
        floor = sum(min(fastest_decode(p.read_bytes(), args.repeat)) for p in decoded)
        decoded_mp = sum(Image.open(p).width * Image.open(p).height for p in decoded) / 1e6
        print(f"\nMine stage on {len(files)} images ({megapixels:.0f} MP), run by the CLI, best of {args.repeat}\n")
        print("| run | seconds | MP/s | images/s | / plain decode |")
        print("|---|---:|---:|---:|---:|")
        row = "| {} | {:.2f} | {:.0f} | {:.1f} | {:.2f} |"
        label = f"plain decode of the {len(decoded)} mined"
        print(row.format(label, floor, decoded_mp / floor, len(decoded) / floor, 1.0))
        times = {}
        for workers in sorted({1, cpu_count()}):
            recipe = ingested(tmp / "base" / f"w{workers}", tmp / "base" / "images", workers)
            times[workers] = stage_times(recipe, args.repeat)
            best = min(times[workers])
            print(row.format(f"mine, {workers} worker(s)", best, megapixels / best, len(files) / best, best / floor))
        for workers, t in times.items():
            print(f"spread with {workers} worker(s): {spread(t)}")

        if args.scale:
            bigger = demo_copies(tmp / "scaled" / "images", args.copies * args.scale)
            print(f"\nLinear scaling: {len(files)} images against {len(bigger)}, best of {args.repeat}\n")
            print(f"| workers | small set | large set | ratio (ideal {args.scale}) | ms per image, small / large |")
            print("|---:|---:|---:|---:|---:|")
            for workers in times:
                recipe = ingested(tmp / "scaled" / f"w{workers}", tmp / "scaled" / "images", workers)
                scaled = stage_times(recipe, args.repeat)
                small, large = min(times[workers]), min(scaled)
                each = f"{small / len(files) * 1000:.0f} / {large / len(bigger) * 1000:.0f}"
                print(f"| {workers} | {small:.2f} s | {large:.2f} s | {large / small:.2f} | {each} |")


if __name__ == "__main__":
    main()
