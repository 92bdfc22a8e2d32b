"""The dataset card: YAML configs for `sft`, `rl` and `test` and the licence, then what the data is, where its
images come from under which licences, and how it was made.

Export writes the short form beside every version; publish adds statistics, a sample image and the Hub loading
line. The card is built from the manifest and shard statistics only, so nothing secret can reach it.
"""

from __future__ import annotations

import json
from collections import Counter

import yaml

from schemas.rows import SPLITS

PIPELINE = """\
1. **ingest**: every image is fully decoded once; unreadable, truncated, oversized (decompression bombs) and
   duplicate files are dropped with a reason; EXIF orientation is applied.
2. **mine** and **ground**: small-object candidates come from annotation boxes, a contrast-based proposer, or a
   model teacher naming objects on overlapping tiles; colour and brightness are measured on full-resolution pixels.
3. **generate**: questions with a rule-based checker (multiple choice, number or short text), written from what was
   measured or by a model teacher looking at crops of the candidates.
4. **verify**: an item is kept only when its targets are too small to resolve in the model's downscaled global
   view, its referent is unambiguous and it is not a repeat; with a model teacher, independent answers on the crop
   must also agree with the reference, a validator must find the referent unambiguous, and a solver must mostly
   fail without zooming. Difficulty grows as the target shrinks.
5. **trajectories**: multi-turn dialogues whose every `zoom_in` call is executed on the original image; each
   on-target crop must contain its target and the final answer must check out.
6. **export**: Parquet shards validated against the row schema, with per-shard sha256 in `manifest.json`.
"""


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def configs(manifest: dict) -> list[str]:
    """The splits the card declares as configs: those with rows (an empty split has nothing `datasets` can load;
    a version from before the test split has none)."""
    return [split for split in SPLITS if manifest["rows"].get(split, 0) > 0]


def _header(manifest: dict) -> str:
    header = {
        "license": manifest["license"],
        "pretty_name": f"{manifest['dataset']} v{manifest['version']}",
        "task_categories": ["visual-question-answering"],
        "size_categories": [_size_category(sum(manifest["rows"].values()))],
        "configs": [
            {"config_name": split, "data_files": [{"split": "train", "path": f"data/{split}/*.parquet"}]}
            for split in configs(manifest)
        ],
        "tags": ["visual-question-answering", "tool-use", "zoom-in", "drim"],
    }
    return f"---\n{yaml.safe_dump(header, sort_keys=False).strip()}\n---\n"


def _sources(manifest: dict) -> str:
    sources = manifest.get("sources") or []
    lines = [
        "## Sources and licences",
        "",
        f"Dataset licence: `{manifest['license']}`. Images and their crops keep the licence of their source:",
        "",
    ]
    if not sources:
        return "\n".join([*lines, "The recipe that built this version lists no sources.", ""])
    lines += ["| source | licence | credit |", "|---|---|---|"]
    for s in sources:
        name = f"[{s['name']}]({s['url']})" if s.get("url") else s["name"]
        lines.append(f"| {name} | {s['license']} | {s.get('attribution') or ''} |")
    return "\n".join([*lines, ""])


def _statistics(stats: Counter) -> str:
    """Items per split, question type and difficulty."""
    types = sorted({t for _, t, _ in stats})
    levels = [d for d in ("easy", "medium", "hard") if any(k[2] == d for k in stats)]
    levels += sorted({d for _, _, d in stats} - set(levels))
    lines = ["## Statistics", "", "| split | question type | " + " | ".join(levels) + " | total |"]
    lines.append("|---|---|" + "---:|" * (len(levels) + 1))
    for split in SPLITS:
        for t in types:
            counts = [stats.get((split, t, d), 0) for d in levels]
            if sum(counts):
                lines.append(f"| {split} | {t} | " + " | ".join(map(str, counts)) + f" | {sum(counts)} |")
    return "\n".join([*lines, ""])


def dataset_card(
    manifest: dict, *, stats: Counter | None = None, repo_id: str | None = None, sample: str | None = None
) -> str:
    """The card; `stats` counts items by (split, question type, difficulty), `sample` is a relative image path."""
    rows, version = manifest["rows"], manifest["version"]
    declared = configs(manifest)
    empty = [split for split in SPLITS if split not in declared]
    first = declared[0] if declared else "sft"
    if repo_id:
        loading = f'{first} = load_dataset("{repo_id}", "{first}", split="train", revision="v{version}")'
    else:
        loading = f'{first} = load_dataset("v{version}", "{first}", split="train")  # this folder'
    parts = [
        _header(manifest),
        f"# {manifest['dataset']} v{version}",
        "",
        "Multi-turn zoom-in VQA built by drim-data: questions about small objects in high-resolution images, each",
        "verified to need zooming, with executed zoom-in tool trajectories.",
        "",
        f"- `sft`: {rows['sft']} conversations in TRL's conversational form (`messages` + `images`: the downscaled",
        "  global view, then one crop per tool call).",
        f"- `rl`: {rows['rl']} prompts with the full-resolution image, the answer, its checker and the target boxes.",
        f"- `test`: {rows['test']} held-out evaluation prompts in the `rl` form. Test images are whole images",
        "  that appear in no training split (`sft`, `rl`): evaluate on `test`, train on the others.",
        *[f"- `{split}` is empty in this version, so the card declares no `{split}` config." for split in empty],
        "",
        "```python",
        "from datasets import load_dataset",
        loading,
        "```",
        "",
    ]
    if sample:
        parts += [f"![A sample item: the image with its target boxes]({sample})", ""]
    if stats:
        parts.append(_statistics(stats))
    parts.append(_sources(manifest))
    parts += [
        "## How it was made",
        "",
        PIPELINE,
        f"Version {version}, parent version {manifest['parent'] or 'none'}. "
        f"Recipe hash `{manifest['recipe_hash'][:16]}`, row schema {manifest['schema_version']}, "
        f"drim {manifest['code_version']}. `manifest.json` lists every shard with its sha256.",
        "",
        "## Zoom tool",
        "",
        "```json",
        json.dumps(manifest["tool"], indent=2),
        "```",
        "",
    ]
    return "\n".join(parts)
