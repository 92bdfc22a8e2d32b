"""Reading what drim-data exports: a version folder (or a Hub dataset at a revision), checked against `schemas/`.

A version holds `manifest.json` and `data/{sft,rl,test}/train-*.parquet`; `test` holds whole images no training
split shows, so only evaluation may read it (`held_out=True`), and a version from before it has none. Before any
row is read, the folder must pass
`schemas.manifest.verify_version`, the contract drim-data checks too: format and schema versions, every listed
shard's sha256 and row count, no unlisted shard; a Hub download is checked the same way. Only the listed shards are
loaded, and each is then checked twice: its Hugging Face features must equal the shared ones, and its rows must
pass the shared pandera schema.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

from datasets import Dataset, Image, List, load_dataset
from PIL import Image as PILImage

from schemas import manifest as manifest_contract
from schemas.rows import SPLITS, TRAINING_SPLITS
from schemas.tool import ZoomSpec, global_view

Split = Literal["sft", "rl", "test"]
VALIDATE_BATCH = 256  # rows per pandera check; the `id` uniqueness check therefore holds within a batch


class DataError(ValueError):
    """A dataset that cannot be trained on, with the reason in the message."""


class SchemaVersionError(DataError):
    """The version was written for another row schema than the one this drim-train understands."""


def resolve(data: str, revision: str | None = None) -> Path:
    """A local version folder, or a Hub dataset repository downloaded at `revision` (for example the tag `v3`)."""
    path = Path(data)
    if path.exists():
        return path
    if data.count("/") != 1:
        raise DataError(f"{data!r} is neither an existing folder nor a Hub dataset id (owner/name)")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(data, repo_type="dataset", revision=revision))


def verified(version_dir: Path) -> manifest_contract.Manifest:
    """The version's manifest once the folder is intact and in a format and schema version this code reads."""
    try:
        return manifest_contract.verify_version(Path(version_dir))
    except manifest_contract.SchemaVersionError as exc:
        raise SchemaVersionError(str(exc)) from None
    except manifest_contract.ManifestError as exc:
        raise DataError(f"refusing to train on {version_dir}: {exc}") from None


def read_manifest(version_dir: Path) -> dict:
    """The fields of a verified version's manifest (the tool limits, the row counts...)."""
    return verified(version_dir).fields


def zoom_spec(manifest: dict) -> ZoomSpec:
    """The zoom limits the data was made with, so training executes the very same tool."""
    limits = (manifest.get("tool") or {}).get("limits")
    return ZoomSpec(**limits) if limits else ZoomSpec()


def load_split(
    data: str | Path, split: Split, revision: str | None = None, validate: bool = True, held_out: bool = False
) -> Dataset:
    """One split of a version as a `datasets.Dataset` (images decode to PIL), checked against the shared schema.
    The held-out `test` split is refused unless `held_out` says the caller evaluates."""
    if split not in TRAINING_SPLITS and not held_out:
        raise DataError(f"the {split} split is held out from training; only evaluation reads it")
    version_dir = resolve(str(data), revision)
    manifest = verified(version_dir)
    files = manifest.files(split)
    if manifest.rows[split] == 0:
        raise DataError(f"{version_dir} holds no {split} rows")
    if not files:
        raise DataError(f"{version_dir} has no {split} shards under data/{split}/")
    dataset = load_dataset("parquet", data_files=files, split="train")
    if validate:
        validate_split(dataset, split)
    return dataset


def validate_split(dataset: Dataset, split: Split) -> None:
    """Raise DataError unless the features and every row match `schemas.rows`."""
    features, schema = SPLITS[split]
    if dataset.features != features:
        ours, theirs = set(features), set(dataset.features)
        detail = f"missing {sorted(ours - theirs)}, unexpected {sorted(theirs - ours)}"
        if ours == theirs:
            detail = "columns with other types: " + ", ".join(
                c for c in features if features[c] != dataset.features[c]
            )
        raise DataError(f"{split} shards do not have the shared features ({detail})")
    raw = dataset.with_format("arrow")  # undecoded: images stay {"bytes", "path"}, as the exporter validated them
    for start in range(0, len(raw), VALIDATE_BATCH):
        frame = raw[start : start + VALIDATE_BATCH].to_pandas()
        try:
            schema.validate(frame, lazy=True)
        except Exception as exc:  # pandera's SchemaErrors lists every failing check and row
            raise DataError(f"{split} rows {start}..{start + len(frame) - 1} break the shared schema:\n{exc}") from exc


def _rl_view(batch: dict) -> dict:
    """Decodes each row of the batch once: TRL fetches a prompt once per rollout of its group, so a batch holds each
    row `num_generations` times, and a 4K original takes a decode and tens of megabytes each time. The images come
    undecoded (`rl_for_training`), and the rollouts of one prompt share the decoded original and its view; the zoom
    tool only reads them."""
    decoded = {}
    for images, size, row_id in zip(batch["images"], batch["global_view_size"], batch["id"], strict=True):
        if row_id not in decoded:
            stored = images[0]  # {"bytes", "path"}: exported shards embed the bytes
            original = PILImage.open(io.BytesIO(stored["bytes"]) if stored["bytes"] else stored["path"]).convert("RGB")
            decoded[row_id] = original, global_view(original, size)
    batch["original_image"] = [decoded[row_id][0] for row_id in batch["id"]]
    batch["images"] = [[decoded[row_id][1]] for row_id in batch["id"]]
    return batch


def rl_for_training(dataset: Dataset) -> Dataset:
    """RL rows as the trainer consumes them: `images` holds the global view shown in the prompt (as in SFT), and
    `original_image` the full-resolution image the zoom tool crops from. Applied lazily, per accessed row."""
    return dataset.cast_column("images", List(Image(decode=False))).with_transform(_rl_view)
