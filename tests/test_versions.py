"""Versions: listed from the recipe's database with their difference from the parent, compared from their shards,
and refused once a shard no longer matches the manifest."""

import hashlib
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from drim_data.cli import app
from drim_data.db import connect
from drim_data.errors import DrimError
from drim_data.pipeline import run_pipeline
from drim_data.recipe import load_recipe
from drim_data.release.card import dataset_card
from drim_data.release.versions import compare_versions, list_versions, verify_version
from schemas import manifest as manifest_contract
from tests.conftest import DEMO_IMAGES, demo_settings, write_recipe

runner = CliRunner()
SOURCES = [
    {"name": "Planet Labs Open California", "license": "CC-BY-SA-4.0", "attribution": "Planet Labs, Inc."},
    {"name": "NEON orthophotos", "license": "CC0-1.0", "url": "https://www.neonscience.org"},
]


def derive_version(parent, dest, *, sft_shards=1, edit=True, changes=None):
    """A child version built by hand from `parent`: the first sft row removed, the second's question edited, a copy
    of the third added under a new id, the sft rows split over `sft_shards` files; rl and test untouched.
    `changes` overrides manifest fields. Returns (path, added, removed, changed)."""
    manifest = json.loads((parent / "manifest.json").read_text())
    dest.mkdir(parents=True)
    for split in ("rl", "test"):
        shutil.copytree(parent / "data" / split, dest / "data" / split)
    (sft_rel,) = [rel for rel in manifest["shards"] if "/sft/" in rel]
    table = pq.read_table(parent / sft_rel)
    rows = table.to_pylist()
    added, removed, changed = [], [], []
    if edit:
        removed = [rows[0]["id"]]
        changed = [rows[1]["id"]]
        added = ["added" + rows[2]["id"][5:]]
        rows[1]["question"] += " (edited)"
        rows = rows[1:] + [{**rows[2], "id": added[0]}]
    shards = {k: v for k, v in manifest["shards"].items() if "/sft/" not in k}
    (dest / "data" / "sft").mkdir(parents=True)
    per = -(-len(rows) // sft_shards)
    for i in range(sft_shards):
        rel = f"data/sft/train-{i:05d}-of-{sft_shards:05d}.parquet"
        chunk = rows[i * per : (i + 1) * per]
        pq.write_table(pa.Table.from_pylist(chunk, schema=table.schema), dest / rel)
        shards[rel] = {"rows": len(chunk), "sha256": hashlib.sha256((dest / rel).read_bytes()).hexdigest()}
    manifest.update(
        version=manifest["version"] + 1,
        parent=manifest["version"],
        shards=shards,
        rows={**manifest["rows"], "sft": len(rows)},
        fingerprint=hashlib.sha256(dest.name.encode()).hexdigest(),
    )
    manifest.update(changes or {})
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (dest / "README.md").write_text(dataset_card(manifest))
    return dest, added, removed, changed


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_compare_finds_the_added_removed_and_changed_items(demo_version, tmp_path):
    child, added, removed, changed = derive_version(demo_version, tmp_path / "v2", sft_shards=2)
    diff = compare_versions(demo_version, child)
    assert (diff.added, diff.removed, diff.changed) == (added, removed, changed)
    assert diff.summary() == "+1 -1 ~1"
    assert compare_versions(demo_version, demo_version).summary() == "+0 -0 ~0"

    result = runner.invoke(app, ["compare", str(demo_version), str(child)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "+1 -1 ~1" in result.output and f"removed 1: {removed[0]}" in result.output


@pytest.mark.parametrize("tamper", ["flip a byte", "delete a shard", "add a shard"])
def test_a_tampered_version_is_refused_everywhere(demo_version, tmp_path, tamper):
    copy = tmp_path / "v1"
    shutil.copytree(demo_version, copy)
    shard = sorted((copy / "data" / "sft").glob("*.parquet"))[0]
    if tamper == "flip a byte":
        flip_a_byte(shard)
    elif tamper == "delete a shard":
        shard.unlink()
    else:
        shutil.copy(shard, shard.with_name("train-00009-of-00009.parquet"))
    with pytest.raises(DrimError, match="manifest"):
        verify_version(copy)
    for args in (
        ["publish", str(copy), "--repo-id", "me/ds", "--dry-run", "--folder", str(tmp_path / "hub")],
        ["view", str(copy), "--out", str(tmp_path / "view")],
        ["compare", str(demo_version), str(copy)],
    ):
        result = runner.invoke(app, args, env={"COLUMNS": "300"})
        assert result.exit_code == 2, (args, result.output)
        assert "manifest" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "hub").exists() and not (tmp_path / "view").exists()


def test_versions_lists_parent_hash_counts_and_difference(demo_version, tmp_path):
    # A second version of the demo: the same database, its recipe now with sources and another split share (most
    # of its few items move to RL).
    shutil.copy(demo_version.parents[2] / "state.duckdb", tmp_path / "state.duckdb")
    settings = demo_settings()
    path = write_recipe(
        tmp_path, DEMO_IMAGES, **{**settings, "export": {**settings["export"], "rl_share": 0.95}}, sources=SOURCES
    )
    result = run_pipeline(load_recipe(path))
    v2 = result.export.path
    assert result.export.version == 2
    manifest = json.loads((v2 / "manifest.json").read_text())
    assert manifest["parent"] == 1
    assert [s["license"] for s in manifest["sources"]] == ["CC-BY-SA-4.0", "CC0-1.0"]

    out = runner.invoke(app, ["versions", str(path)], env={"COLUMNS": "400"})
    assert out.exit_code == 0, out.output
    expected = compare_versions(demo_version, v2)
    assert not expected.added and not expected.removed and expected.changed  # items moved between sft and rl
    v1_line = next(line for line in out.output.splitlines() if "│ v1 " in line)
    v2_line = next(line for line in out.output.splitlines() if "│ v2 " in line)
    v1_rows = json.loads((demo_version / "manifest.json").read_text())["rows"]
    assert f"+{sum(v1_rows.values())} -0 ~0" in v1_line
    assert expected.summary() in v2_line and "v1" in v2_line and manifest["recipe_hash"][:12] in v2_line
    assert f"│ {manifest['rows']['sft']} " in v2_line and f"│ {manifest['rows']['rl']} " in v2_line

    flip_a_byte(sorted((v2 / "data" / "rl").glob("*.parquet"))[0])
    con = connect(load_recipe(path).db)
    infos = {v.version: v for v in list_versions(con)}
    con.close()
    assert infos[1].state == "ok" and infos[2].state.startswith("refused:") and infos[2].diff is None


def _edit_manifest(version, edit):
    manifest = json.loads((version / "manifest.json").read_text())
    edit(manifest)
    (version / "manifest.json").write_text(json.dumps(manifest))


def _first_shard(manifest):
    return manifest["shards"][sorted(manifest["shards"])[0]]


MANIFEST_EDITS = {
    "newer format": (lambda m: m.update(format="drim-shards/3"), r"format drim-shards/3 .* reads drim-shards/2"),
    "another schema": (lambda m: m.update(schema_version="1.0"), r"row schema version '1.0'"),
    "shard rows": (lambda m: _first_shard(m).update(rows=_first_shard(m)["rows"] + 1), r"holds \d+ rows but"),
    "split rows": (lambda m: m["rows"].update(sft=m["rows"]["sft"] + 1), r"says \d+ sft rows, its sft shards hold"),
    "shard outside data": (
        lambda m: m["shards"].update({"../elsewhere.parquet": _first_shard(m)}),
        r"lists '../elsewhere.parquet', which is not a shard under data/sft or data/rl or data/test",
    ),
    "no shards": (lambda m: m.update(shards={}), r"lists no shards"),
}


@pytest.mark.parametrize("edit", MANIFEST_EDITS)
def test_the_manifest_contract_checks_versions_counts_and_paths(demo_version, tmp_path, edit):
    copy = tmp_path / "v1"
    shutil.copytree(demo_version, copy)
    change, message = MANIFEST_EDITS[edit]
    _edit_manifest(copy, change)
    with pytest.raises(manifest_contract.ManifestError, match=message):
        manifest_contract.verify_version(copy)
    result = runner.invoke(app, ["compare", str(demo_version), str(copy)], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
