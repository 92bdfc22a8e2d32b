"""What GRPO pays to read its prompts: TRL fetches each RL row once per rollout of its group, so a batch of P
prompts with G rollouts each asks for P x G rows. `rl_for_training` decodes each distinct row of a batch once; the
floor is decoding each distinct image once, by hand, in the same run; the per-rollout line is the decoded column
of `datasets` behind the same transform, which decodes every fetched row.

The rows are zoom_learnability's RL rows (6144x6144 PNG originals).

    python benchmarks/rl_decode.py [--prompts 2] [--generations 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from drim_train.data import load_split, rl_for_training
from schemas.tool import global_view


def per_rollout(batch: dict) -> dict:
    """The view and original of every fetched row, from the decoded column: one decode per rollout."""
    originals = [images[0].convert("RGB") for images in batch["images"]]
    batch["images"] = [[global_view(o, size)] for o, size in zip(originals, batch["global_view_size"], strict=True)]
    batch["original_image"] = originals
    return batch


def timed(fetch, batches: list[list[int]]) -> float:
    started = time.perf_counter()
    for indices in batches:
        fetch(indices)
    return (time.perf_counter() - started) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from benchmarks import zoom_learnability as task

    n = args.prompts * args.repeat
    with tempfile.TemporaryDirectory() as work:
        version = task.write_version(Path(work), 1, n, 1)
        rows = load_split(version, "rl")
        batches = [
            [i for i in range(b * args.prompts, (b + 1) * args.prompts) for _ in range(args.generations)]
            for b in range(args.repeat)
        ]
        raw = rows.with_format("arrow")

        def floor(indices: list[int]) -> None:
            table = raw[sorted(set(indices))]
            for images, size in zip(table["images"].to_pylist(), table["global_view_size"].to_pylist(), strict=True):
                global_view(Image.open(io.BytesIO(images[0]["bytes"])).convert("RGB"), size)

        floor(batches[0])  # warm the file cache
        results = {
            "decode each distinct image once (floor)": timed(floor, batches),
            "rl_for_training": timed(rl_for_training(rows).__getitems__, batches),
            "decode per rollout": timed(rows.with_transform(per_rollout).__getitems__, batches),
        }
    base = results["decode each distinct image once (floor)"]
    print(f"{args.prompts} prompts x {args.generations} rollouts a batch, {task.SIZE}x{task.SIZE} PNG originals")
    print(f"{'':42}{'s per batch':>12}{'x floor':>9}")
    for name, seconds in results.items():
        print(f"{name:42}{seconds:>12.2f}{seconds / base:>9.2f}")


if __name__ == "__main__":
    main()
