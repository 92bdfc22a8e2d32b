"""Ingest's identity and matching rules on real photo crops: an image is its content, annotations name paths."""

import json
import os
import shutil

import pytest
from PIL import Image

from drim_data.pipeline import run_pipeline
from drim_data.recipe import load_recipe
from tests.conftest import NEON, SHIPS, query, write_recipe
from tests.test_images import REAL_JPEG


def crop(src, box, path):
    """A crop of a real photo, saved where the test wants it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as image:
        image.convert("RGB").crop(box).save(path, quality=92)
    return path


def ingest(tmp_path, images, until="ingest", **sections):
    """Run the pipeline up to `until` over `images`; the stats of each stage by name."""
    result = run_pipeline(load_recipe(write_recipe(tmp_path, images, annotations=False, **sections)), until=until)
    return {s.stage: s for s in result.stages}


def files(tmp_path) -> dict[str, tuple[str, str]]:
    rows = query(tmp_path / "state.duckdb", "SELECT path, status, image_id FROM files")
    return {os.path.relpath(p, tmp_path / "images"): (status, image_id) for p, status, image_id in rows}


def drops(tmp_path) -> dict[str, str]:
    rows = query(tmp_path / "state.duckdb", "SELECT item_id, reason FROM drops WHERE stage = 'ingest'")
    return {os.path.relpath(i.split("#")[0], tmp_path): reason for i, reason in rows}


@pytest.fixture
def three(tmp_path):
    """Three distinct real crops in one flat folder."""
    folder = tmp_path / "images"
    crop(SHIPS, (0, 0, 640, 560), folder / "harbour.jpg")
    crop(SHIPS, (800, 600, 1440, 1160), folder / "sea.jpg")
    crop(NEON, (0, 0, 600, 500), folder / "forest.png")
    return folder


def test_a_renamed_or_restored_image_is_the_same_image_and_a_settings_change_remines_it(tmp_path, three):
    ingest(tmp_path, three, until="mine")
    before = files(tmp_path)
    (three / "sea.jpg").rename(three / "open_sea.jpg")
    shutil.move(three / "forest.png", tmp_path / "forest.png")
    ingest(tmp_path, three)
    shutil.move(tmp_path / "forest.png", three / "forest.png")  # restored
    ingest(tmp_path, three)

    after = files(tmp_path)
    assert after == {
        "harbour.jpg": before["harbour.jpg"],
        "open_sea.jpg": ("ok", before["sea.jpg"][1]),  # the same content id, not a duplicate of the old path
        "forest.png": before["forest.png"],
    }
    assert drops(tmp_path) == {}
    sources = query(tmp_path / "state.duckdb", "SELECT uri FROM images ORDER BY uri")
    assert [os.path.basename(p) for (p,) in sources] == ["forest.png", "harbour.jpg", "open_sea.jpg"]

    changed = ingest(tmp_path, three, until="mine", mine={"top_k": 40})
    assert changed["ingest"].processed == 0 and changed["mine"].processed == 3  # every current image, re-mined


def test_identical_files_are_one_image_named_by_the_first_path_whatever_came_first(tmp_path, three):
    ingest(tmp_path, three)
    shutil.copy(three / "sea.jpg", three / "a_copy_of_sea.jpg")  # added later, but first in sorted order
    ingest(tmp_path, three)
    assert files(tmp_path)["a_copy_of_sea.jpg"][0] == "ok" and files(tmp_path)["sea.jpg"][0] == "duplicate"
    assert drops(tmp_path) == {"images/sea.jpg": "duplicate"}
    assert query(tmp_path / "state.duckdb", "SELECT count(*) FROM images") == [(3,)]

    clean = tmp_path / "clean"
    shutil.copytree(three, clean / "images")
    ingest(clean, clean / "images")
    assert files(clean) == files(tmp_path)

    (three / "a_copy_of_sea.jpg").unlink()  # the other path takes over the image
    ingest(tmp_path, three)
    assert files(tmp_path)["sea.jpg"][0] == "ok" and drops(tmp_path) == {}


def test_a_fixed_quarantined_file_loses_its_old_drop(tmp_path, three):
    (three / "cut.jpg").write_bytes(REAL_JPEG[:50_000])
    ingest(tmp_path, three)
    assert drops(tmp_path) == {"images/cut.jpg": "truncated"}
    (three / "cut.jpg").write_bytes(REAL_JPEG)
    ingest(tmp_path, three)
    assert drops(tmp_path) == {} and files(tmp_path)["cut.jpg"][0] == "ok"


def test_gifs_dangling_symlinks_and_loops_are_recorded_and_symlinked_folders_followed(tmp_path, three):
    with Image.open(three / "harbour.jpg") as image:
        image.convert("P").save(three / "animation.gif")
    (three / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    outside = crop(SHIPS, (1200, 0, 1800, 500), tmp_path / "elsewhere" / "pier.jpg").parent
    (three / "linked").symlink_to(outside, target_is_directory=True)
    (three / "loop").symlink_to(three, target_is_directory=True)
    (three / "notes.txt").write_text("not an image: passed over")
    ingest(tmp_path, three)
    assert drops(tmp_path) == {
        "images/animation.gif": "unsupported_extension",
        "images/gone.jpg": "dangling_symlink",
        "images/loop": "symlink_loop",
    }
    assert files(tmp_path)["linked/pier.jpg"][0] == "ok"
    detail = query(tmp_path / "state.duckdb", "SELECT detail FROM drops WHERE reason = 'unsupported_extension'")
    assert ".gif is not in ingest.extensions" in detail[0][0]

    (three / "gone.jpg").unlink()  # the folder is fixed: its drops go with it
    ingest(tmp_path, three, ingest={"extensions": [".jpg", ".png", ".gif"]})
    assert "images/gone.jpg" not in drops(tmp_path) and files(tmp_path)["animation.gif"][0] == "ok"


@pytest.fixture
def cameras(tmp_path):
    """Two cameras whose files share names: camA/0001.jpg and camB/0001.jpg are different photos."""
    folder = tmp_path / "images"
    crop(SHIPS, (0, 0, 640, 560), folder / "camA" / "0001.jpg")
    crop(SHIPS, (800, 600, 1440, 1160), folder / "camB" / "0001.jpg")
    crop(NEON, (0, 0, 600, 500), folder / "camB" / "0003.jpg")
    return folder


def boxes_by_path(tmp_path) -> dict[str, list[str]]:
    rows = query(
        tmp_path / "state.duckdb",
        "SELECT f.path, a.label FROM annotations a JOIN files f ON f.image_id = a.image_id AND f.status = 'ok' "
        "ORDER BY f.path, a.label",
    )
    found: dict[str, list[str]] = {}
    for path, label in rows:
        found.setdefault(os.path.relpath(path, tmp_path / "images"), []).append(label)
    return found


def test_coco_annotations_name_paths_and_bare_names_only_when_unambiguous(tmp_path, cameras):
    doc = {
        "images": [
            {"id": 1, "file_name": "camA/0001.jpg"},
            {"id": 2, "file_name": "./camB/0001.jpg", "complete_categories": ["boat"]},
            {"id": 3, "file_name": "0001.jpg"},  # bare, and both cameras have one
            {"id": 4, "file_name": "0003.jpg"},  # bare, and only camB has one
            {"id": 5, "file_name": "camC/0001.jpg"},  # no such image
            {"id": 6, "file_name": "empty.jpg"},  # nothing in it: nothing lost, no drop
        ],
        "categories": [{"id": 1, "name": "ship"}, {"id": 2, "name": "boat"}, {"id": 3, "name": "tree"}],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "attributes": {"colour": "red"}},
            {"image_id": 2, "category_id": 2, "bbox": [50, 50, 20, 20]},
            {"image_id": 3, "category_id": 1, "bbox": [5, 5, 5, 5]},
            {"image_id": 4, "category_id": 3, "bbox": [100, 100, 40, 40]},
            {"image_id": 5, "category_id": 1, "bbox": [5, 5, 5, 5]},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    ingest(tmp_path, cameras, ingest={"annotations": [{"format": "coco", "path": str(tmp_path / "ann.json")}]})

    assert boxes_by_path(tmp_path) == {"camA/0001.jpg": ["ship"], "camB/0001.jpg": ["boat"], "camB/0003.jpg": ["tree"]}
    found = dict(query(tmp_path / "state.duckdb", "SELECT regexp_extract(item_id, '#(.*)$', 1), reason FROM drops"))
    assert found == {"0001.jpg": "ambiguous_annotation", "camC/0001.jpg": "unmatched_annotation"}
    (attributes,) = query(tmp_path / "state.duckdb", "SELECT attributes::VARCHAR FROM annotations WHERE label='ship'")
    assert json.loads(attributes[0]) == {"colour": "red"}
    complete = query(
        tmp_path / "state.duckdb",
        "SELECT f.path, c.label FROM complete_categories c JOIN files f ON f.image_id = c.image_id",
    )
    assert [(os.path.relpath(p, cameras), label) for p, label in complete] == [("camB/0001.jpg", "boat")]


def test_yolo_and_voc_files_mirror_the_images_folder(tmp_path, cameras):
    labels = tmp_path / "labels"
    (labels / "camA").mkdir(parents=True)
    (labels / "camB").mkdir()
    (labels / "classes.txt").write_text("ship\nboat\n")
    (labels / "camA" / "0001.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (labels / "camB" / "0001.txt").write_text("1 0.5 0.5 0.1 0.1\n1 0.2 0.2 0.1 0.1\n")
    (labels / "0001.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # bare, ambiguous
    voc = tmp_path / "voc" / "camB"
    voc.mkdir(parents=True)
    (voc / "0003.xml").write_text(
        "<annotation><object><name>tree</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>60</xmax>"
        "<ymax>60</ymax></bndbox></object></annotation>"
    )
    sources = [{"format": "yolo", "path": str(labels)}, {"format": "voc", "path": str(tmp_path / "voc")}]
    ingest(tmp_path, cameras, ingest={"annotations": sources})
    assert boxes_by_path(tmp_path) == {
        "camA/0001.jpg": ["ship"],
        "camB/0001.jpg": ["boat", "boat"],
        "camB/0003.jpg": ["tree"],
    }
    assert drops(tmp_path) == {"labels/0001.txt": "ambiguous_annotation"}


def test_annotations_follow_the_path_they_name_when_files_move(tmp_path, cameras):
    doc = {
        "images": [{"id": 1, "file_name": "camA/0001.jpg"}],
        "categories": [{"id": 1, "name": "ship"}],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30]}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    sections = {"ingest": {"annotations": [{"format": "coco", "path": str(tmp_path / "ann.json")}]}}
    ingest(tmp_path, cameras, **sections)
    assert boxes_by_path(tmp_path)["camA/0001.jpg"] == ["ship"]
    (cameras / "camA" / "0001.jpg").rename(cameras / "camA" / "0009.jpg")
    ingest(tmp_path, cameras, **sections)
    assert "camA/0009.jpg" not in boxes_by_path(tmp_path)  # the entry names a path that is gone: applied to none
    assert drops(tmp_path) == {"ann.json": "unmatched_annotation"}


def test_a_duplicate_keeps_the_annotations_of_its_first_annotated_path_once(tmp_path, cameras):
    shutil.copy(cameras / "camA" / "0001.jpg", cameras / "aaa.jpg")  # first in sorted order, no annotations
    shutil.copy(cameras / "camA" / "0001.jpg", cameras / "camZ.jpg")  # annotated too: not added a second time
    doc = {
        "images": [{"id": 1, "file_name": "camA/0001.jpg"}, {"id": 2, "file_name": "camZ.jpg"}],
        "categories": [{"id": 1, "name": "ship"}],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30]},
            {"image_id": 2, "category_id": 1, "bbox": [10, 10, 30, 30]},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    ingest(tmp_path, cameras, ingest={"annotations": [{"format": "coco", "path": str(tmp_path / "ann.json")}]})
    assert boxes_by_path(tmp_path) == {"aaa.jpg": ["ship"]}  # the image is named by aaa.jpg, boxed by camA/0001.jpg
    found = query(tmp_path / "state.duckdb", "SELECT item_id, reason FROM drops ORDER BY item_id")
    assert [(os.path.relpath(item_id, tmp_path), reason) for item_id, reason in found] == [
        ("ann.json#camZ.jpg", "duplicate_annotations"),
        ("images/camA/0001.jpg", "duplicate"),
        ("images/camZ.jpg", "duplicate"),
    ]
