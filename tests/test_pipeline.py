"""The pipeline end to end on real photos: bad inputs quarantined, reruns idempotent, changes make new versions."""

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from drim_data.errors import DrimError
from drim_data.pipeline import run_pipeline
from drim_data.recipe import load_recipe
from tests.conftest import DEMO_IMAGES, HARBOUR, NEON, query, write_recipe
from tests.test_images import BAD_CRC_PNG, REAL_JPEG, png_header_only


def test_bad_inputs_are_quarantined_and_the_run_goes_on(tmp_path, small_images):
    (small_images / "empty.jpg").write_bytes(b"")
    (small_images / "notes.png").write_bytes(b"not an image at all")
    (small_images / "cut.jpg").write_bytes(REAL_JPEG[:50_000])
    (small_images / "bomb.png").write_bytes(png_header_only(40_000, 40_000))
    (small_images / "crc.png").write_bytes(BAD_CRC_PNG)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(buf, format="PNG")
    (small_images / "deep.png").write_bytes(buf.getvalue())
    shutil.copy(NEON, small_images / "zz_copy_of_forest.png")
    (small_images / "readme.txt").write_text("ignored: not an image extension")

    recipe = load_recipe(write_recipe(tmp_path, small_images, ingest={"max_pixels": 50_000_000}))
    result = run_pipeline(recipe)

    drops = dict(query(recipe.db, "SELECT regexp_extract(item_id, '[^/]+$'), reason FROM drops WHERE stage='ingest'"))
    assert drops == {
        "empty.jpg": "empty_file",
        "notes.png": "not_an_image",
        "cut.jpg": "truncated",
        "bomb.png": "too_many_pixels",
        "crc.png": "corrupt",
        "deep.png": "unsupported_mode",
        "zz_copy_of_forest.png": "duplicate",
        # the class-named boxes of the demo photos this folder lacks
        "labelled.coco.json#opensfm_berlin_01.jpg": "unmatched_annotation",
        "labelled.coco.json#planet_shipsnet_scene_2.jpg": "unmatched_annotation",
    }
    assert query(recipe.db, "SELECT count(*) FROM images") == [(2,)]
    assert result.export.written and sum(result.export.rows.values()) > 0


def test_rerun_is_a_no_op_and_changes_make_the_next_version(tmp_path, small_images):
    path = write_recipe(tmp_path, small_images)
    first = run_pipeline(load_recipe(path))
    assert first.export.written and first.export.version == 1

    again = run_pipeline(load_recipe(path))
    assert not again.export.written and again.export.version == 1
    assert all(s.processed == 0 for s in again.stages)
    assert sorted(p.name for p in (tmp_path / "out" / "test-set").iterdir()) == ["v1"]

    # a trajectories setting changes: that stage and later ones redo, earlier ones do not, and v2 follows v1
    path = write_recipe(tmp_path, small_images, trajectories={"reflective_share": 0.5})
    changed = run_pipeline(load_recipe(path))
    processed = {s.stage: s.processed for s in changed.stages}
    assert processed["ingest"] == processed["mine"] == processed["generate"] == processed["verify"] == 0
    assert processed["trajectories"] > 0
    assert changed.export.written and changed.export.version == 2
    manifest = json.loads((changed.export.path / "manifest.json").read_text())
    assert manifest["parent"] == 1 and manifest["version"] == 2
    assert manifest["recipe_hash"] != json.loads((first.export.path / "manifest.json").read_text())["recipe_hash"]


def test_the_view_setting_is_read_from_mining_on(tmp_path, small_images):
    run_pipeline(load_recipe(write_recipe(tmp_path, small_images)), until="mine")
    regions = query(tmp_path / "state.duckdb", "SELECT count(*) FROM regions")
    changed = run_pipeline(load_recipe(write_recipe(tmp_path, small_images, view={"min_resolvable_px": 8.0})))
    processed = {s.stage: s.processed for s in changed.stages}
    assert processed["ingest"] == 0 and processed["mine"] == 2
    assert query(tmp_path / "state.duckdb", "SELECT count(*) FROM regions") < regions  # fewer need a zoom


def test_removing_an_input_image_removes_its_items(tmp_path, small_images):
    shutil.copy(DEMO_IMAGES / "opensfm_berlin_01.jpg", small_images)  # a second image with named objects
    recipe = load_recipe(write_recipe(tmp_path, small_images))
    first = run_pipeline(recipe)
    ids_before = query(recipe.db, "SELECT count(DISTINCT image_id) FROM files WHERE status = 'ok'")
    (removed,) = query(recipe.db, f"SELECT image_id FROM images WHERE uri LIKE '%{HARBOUR.name}'")[0]
    (small_images / HARBOUR.name).unlink()
    second = run_pipeline(recipe)
    assert ids_before == [(3,)] and second.export.version == 2
    manifest = json.loads((second.export.path / "manifest.json").read_text())
    assert sum(manifest["rows"].values()) < sum(first.export.rows.values())
    from datasets import load_dataset

    rl = load_dataset("parquet", data_dir=str(second.export.path / "data" / "rl"), split="train")
    assert len(rl) == manifest["rows"]["rl"] and len(rl) > 0
    assert not any(row["image_id"] == removed for row in rl)


def test_a_second_process_gets_a_clear_error(tmp_path, small_images):
    recipe = load_recipe(write_recipe(tmp_path, small_images))
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb,time; c=duckdb.connect({str(recipe.db)!r}); print('ok', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(DrimError, match="in use by another drim-data process"):
            run_pipeline(recipe)
    finally:
        holder.kill()
        holder.wait()


def test_missing_image_folder_is_a_clear_error(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, tmp_path / "nowhere", annotations=False))
    with pytest.raises(DrimError, match="is not a folder"):
        run_pipeline(recipe)


def test_throughput_settings_redo_nothing(tmp_path, small_images):
    run_pipeline(load_recipe(write_recipe(tmp_path, small_images, mine={"workers": 1})))
    again = run_pipeline(load_recipe(write_recipe(tmp_path, small_images, mine={"workers": 2})))
    assert all(s.processed == 0 for s in again.stages)
    assert not again.export.written and again.export.version == 1  # same content: no new version
