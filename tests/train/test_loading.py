import json
import shutil

import pyarrow.parquet as pq
import pytest
from PIL import Image

from drim_train import data
from drim_train.data import DataError, SchemaVersionError, load_split, rl_for_training, zoom_spec
from schemas.tool import ZoomSpec
from tests.train.helpers import rewrite_manifest, write_version


def test_loads_and_validates_what_drim_data_exports(demo_version):
    manifest = json.loads((demo_version / "manifest.json").read_text())
    sft, rl = load_split(demo_version, "sft"), load_split(demo_version, "rl")
    assert (len(sft), len(rl)) == (manifest["rows"]["sft"], manifest["rows"]["rl"]) and len(sft) > 0 and len(rl) > 0
    for row in sft:
        assert all(isinstance(img, Image.Image) for img in row["images"])
        assert len(row["images"]) == 1 + sum(m["role"] == "tool" for m in row["messages"])
    assert rl[0]["images"][0].size == (rl[0]["width"], rl[0]["height"])


def test_refuses_another_schema_version(tmp_path):
    version = write_version(tmp_path, n_sft=1, n_rl=1, schema_version="0.9")
    with pytest.raises(SchemaVersionError, match=r"schema version '0.9'.*reads schema version '2.0'"):
        load_split(version, "sft")


def test_refuses_a_folder_without_manifest(tmp_path, synthetic):
    shutil.copytree(synthetic / "data", tmp_path / "v1" / "data")
    with pytest.raises(DataError, match="no manifest.json"):
        load_split(tmp_path / "v1", "sft")


def test_refuses_rows_that_break_the_schema(tmp_path):
    version = write_version(tmp_path, n_sft=3, n_rl=1)
    path = next((version / "data" / "sft").glob("*.parquet"))
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[1]["images"] = rows[1]["images"][:1]  # a crop is missing: placeholders no longer match images
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), path)
    rewrite_manifest(version)  # the shard is listed as it now is, so the row check is what refuses it
    with pytest.raises(DataError, match="image placeholders != images"):
        load_split(version, "sft")
    assert len(load_split(version, "sft", validate=False)) == 3


def test_refuses_shards_with_other_columns(tmp_path):
    version = write_version(tmp_path, n_sft=1, n_rl=2)
    path = next((version / "data" / "rl").glob("*.parquet"))
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["difficulty"]), path)
    rewrite_manifest(version)
    with pytest.raises(DataError, match=r"missing \['difficulty'\]"):
        load_split(version, "rl")


def test_rl_rows_show_the_global_view_and_keep_the_original(demo_version):
    row = rl_for_training(load_split(demo_version, "rl"))[0]
    assert row["images"][0].size == tuple(row["global_view_size"])
    assert row["original_image"].size == (row["width"], row["height"])


def test_zoom_spec_comes_from_the_manifest(demo_version):
    manifest = json.loads((demo_version / "manifest.json").read_text())
    assert zoom_spec(manifest) == ZoomSpec()
    manifest["tool"]["limits"]["min_side_px"] = 64
    assert zoom_spec(manifest).min_side_px == 64
    assert zoom_spec({}) == ZoomSpec()


def test_hub_ids_are_downloaded_at_a_revision(monkeypatch, synthetic):
    calls = []

    def fake_snapshot_download(repo_id, repo_type, revision):
        calls.append((repo_id, repo_type, revision))
        return str(synthetic)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert len(load_split("drim-lab/drim-demo", "rl", revision="v1")) == 8
    assert calls == [("drim-lab/drim-demo", "dataset", "v1")]
    with pytest.raises(DataError, match="neither an existing folder nor a Hub dataset id"):
        data.resolve("no/such/folder")
