"""Publish one version to the Hugging Face Hub: build the Hub folder, prove it loads, upload what differs, tag v<N>.

The upload is one commit, so the repo's main branch moves from the previous version to this one at once, and the
tag is set only after that commit landed: `load_dataset(repo, revision="v<N>")` gets exactly this version.

Retrying after a failure sends only what is missing, at two levels: files already committed are found by comparing
the remote tree's sha256 (LFS) or git blob ids with the local files and are left out of the commit; file contents
uploaded by an attempt that died before its commit are skipped by the Hub's content-addressed storage, which
reports them as present when the client asks where to upload them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from PIL import ImageDraw

from drim_data.errors import DrimError
from drim_data.pixels.images import thumbnail
from drim_data.release.card import configs, dataset_card
from drim_data.release.versions import iter_rows, prepare_folder, verify_version
from schemas.manifest import file_sha256
from schemas.tool import GRID

if TYPE_CHECKING:
    from huggingface_hub import HfApi

SAMPLE = "assets/sample.jpg"
KEEP_REMOTE = {".gitattributes"}  # the Hub's own file: never deleted by a publish


@dataclass
class PublishResult:
    folder: Path
    tag: str
    repo_id: str | None = None
    uploaded: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    commit: str | None = None
    already_published: bool = False


def build_folder(version_dir: Path, folder: Path | None = None, repo_id: str | None = None) -> Path:
    """The folder to upload: the verified shards, the manifest, the full card and a sample image; checked to load."""
    version_dir = Path(version_dir)
    manifest = verify_version(version_dir)
    folder = prepare_folder(version_dir, folder, "hub", ["manifest.json", "README.md"], "--folder")
    for rel in [*manifest["shards"], "manifest.json"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(version_dir / rel, folder / rel)  # shards are never written in place, so sharing is safe
        except OSError:
            shutil.copy2(version_dir / rel, folder / rel)
    sample = _write_sample(version_dir, manifest, folder / SAMPLE)
    card = dataset_card(manifest, stats=item_stats(version_dir, manifest), repo_id=repo_id, sample=sample)
    (folder / "README.md").write_text(card)
    check_folder(folder)
    return folder


def item_stats(version_dir: Path, manifest: dict) -> Counter:
    """Items per (split, question type, difficulty)."""
    rows = iter_rows(version_dir, manifest, columns=["question_type", "difficulty"])
    return Counter((split, row["question_type"], row["difficulty"]) for split, row in rows)


def _write_sample(version_dir: Path, manifest: dict, dest: Path) -> str | None:
    """The first item's image, downscaled, with its target boxes (rl) or zoom boxes (sft) drawn in red."""
    columns = ["images", "target_boxes_norm", "messages"]
    for split in ("rl", "sft"):
        split_manifest = {"shards": {k: v for k, v in manifest["shards"].items() if f"/{split}/" in k}}
        for _, row in iter_rows(version_dir, split_manifest, columns):
            image = thumbnail(row["images"][0]["bytes"], 1024)
            boxes = row.get("target_boxes_norm") or _zoom_boxes(row.get("messages") or [])
            draw = ImageDraw.Draw(image)
            for x1, y1, x2, y2 in boxes:
                w, h = image.size
                draw.rectangle([x1 * w, y1 * h, x2 * w, y2 * h], outline=(230, 30, 30), width=3)
            dest.parent.mkdir(parents=True, exist_ok=True)
            image.save(dest, format="JPEG", quality=85)
            return SAMPLE
    return None


def _zoom_boxes(messages: list[dict]) -> list[list[float]]:
    """Boxes of the conversation's zoom calls, as fractions of the original image."""
    boxes = []
    for m in messages:
        for call in m.get("tool_calls") or []:
            box = json.loads(call["function"]["arguments"]).get("bbox_2d")
            boxes.append([v / GRID for v in box])
    return boxes


def check_folder(folder: Path) -> None:
    """The card's YAML parses, declares a config for each split with rows (an empty split gets none), and `datasets`
    loads each with the manifest's row count."""
    from datasets import load_dataset

    manifest = json.loads((folder / "manifest.json").read_text())
    text = (folder / "README.md").read_text()
    try:
        header = yaml.safe_load(text.split("---\n")[1])
    except (IndexError, yaml.YAMLError) as exc:
        raise DrimError(f"{folder}/README.md: the card's YAML header does not parse ({exc})") from None
    declared, expected = [c["config_name"] for c in header.get("configs", [])], configs(manifest)
    if declared != expected:
        raise DrimError(f"{folder}/README.md declares configs {declared}, expected {expected} (the splits with rows)")
    with tempfile.TemporaryDirectory() as cache:
        for split in declared:
            loaded = load_dataset(str(folder), split, split="train", cache_dir=cache)
            if len(loaded) != manifest["rows"][split]:
                raise DrimError(
                    f"{folder}: {split} loads {len(loaded)} rows, the manifest says {manifest['rows'][split]}"
                )


def upload(folder: Path, repo_id: str, *, private: bool = False, api: HfApi | None = None) -> PublishResult:
    """Send what the Hub lacks in one commit, then tag it `v<N>`; the token comes from HF_TOKEN or the Hub login."""
    import httpx2
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    api = api or HfApi()
    if api.token is None and get_token() is None:
        raise DrimError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    manifest = json.loads((folder / "manifest.json").read_text())
    tag = f"v{manifest['version']}"
    local = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    result = PublishResult(folder, tag, repo_id)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        refs = api.list_repo_refs(repo_id, repo_type="dataset")
        tags = {t.name for t in refs.tags}
        newer = sorted(int(t[1:]) for t in tags if t[1:].isdigit() and int(t[1:]) > manifest["version"])
        if tag not in tags and newer:
            raise DrimError(f"{repo_id} already has v{newer[-1]}; publishing {tag} now would move main back to it")
        if tag in tags:
            remote = _remote_files(api, repo_id, tag)
            if set(remote) - KEEP_REMOTE != set(local) or not all(_same(remote[p], folder / p) for p in local):
                raise DrimError(f"{repo_id} already has a tag {tag} with other files; a published tag is never moved")
            result.already_published, result.unchanged = True, local
            return result
        head = next((b.target_commit for b in refs.branches if b.name == "main"), None)
        remote = _remote_files(api, repo_id, "main") if head else {}
        result.unchanged = [p for p in local if p in remote and _same(remote[p], folder / p)]
        result.uploaded = [p for p in local if p not in result.unchanged]
        result.deleted = sorted(set(remote) - set(local) - KEEP_REMOTE)
        result.commit = head
        if result.uploaded or result.deleted:
            operations = [CommitOperationAdd(p, folder / p) for p in result.uploaded]
            operations += [CommitOperationDelete(p) for p in result.deleted]
            info = api.create_commit(
                repo_id,
                operations,
                commit_message=f"{manifest['dataset']} {tag}",
                commit_description=f"drim-data version {manifest['version']}, fingerprint {manifest['fingerprint']}",
                repo_type="dataset",
                parent_commit=head,
            )
            result.commit = info.oid
        api.create_tag(repo_id, tag=tag, revision=result.commit, repo_type="dataset", tag_message=tag)
    except (HfHubHTTPError, httpx2.HTTPError, OSError, RuntimeError, ValueError) as exc:
        raise DrimError(_failure(repo_id, exc)) from None
    return result


def _remote_files(api, repo_id: str, revision: str) -> dict:
    from huggingface_hub.hf_api import RepoFile

    tree = api.list_repo_tree(repo_id, repo_type="dataset", revision=revision, recursive=True)
    return {f.path: f for f in tree if isinstance(f, RepoFile)}


def _same(remote, path: Path) -> bool:
    """Whether a remote file already holds this content: by sha256 for LFS files, by git blob id otherwise."""
    from huggingface_hub.utils.sha import git_hash

    if remote.lfs is not None:
        return remote.lfs.sha256 == file_sha256(path)
    return remote.blob_id == git_hash(path.read_bytes())


def _failure(repo_id: str, exc: BaseException) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return (
            f"the Hub refused the token for {repo_id} (HTTP {status}): check HF_TOKEN or `hf auth login`, "
            "and that the token may write to that namespace"
        )
    root = exc
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    reason = f"{type(root).__name__}: {str(root).splitlines()[0] if str(root) else ''}"[:300]
    return (
        f"upload to {repo_id} failed ({reason}). The tag is set only after everything is up, so nothing half-done "
        "is published: run the same command again and only what is missing is sent"
    )
