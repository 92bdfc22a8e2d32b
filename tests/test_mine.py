"""Mining on real photos: every candidate box ends as a region or a drop with its reason, whatever the source."""

import json
import shutil

import numpy as np
import pytest

from drim_data.pipeline import run_pipeline
from drim_data.pixels.annotations import AnnotationError
from drim_data.pixels.candidates import Candidate, ambiguous, not_unique, proposal_factor, side_range
from drim_data.recipe import MineConfig, ViewConfig, load_recipe
from schemas.geometry import centre_grid
from tests.conftest import DEMO_ANNOTATIONS, DEMO_IMAGES, SHIPS, query, write_recipe

W, H = 2001, 1749  # the harbour scene; its global view (1M pixels) is 0.535x, so 45 px wide objects are visible
BOXES = [  # (label, x1, y1, x2, y2, what mining should make of it)
    ("boat", 600, 400, 630, 430, "kept"),
    ("boat", 1500, 1500, 1530, 1530, "kept"),  # the same label, far away: each is still unique
    ("boat", 1000, 1000, 1060, 1060, "visible_without_zoom"),
    ("boat", 300, 300, 305, 320, "too_small"),
    ("boat", 1200, 200, 1500, 500, "too_large"),
    ("boat", 1980, 900, 2030, 930, "at_border"),  # runs off the right edge: clamped to it
    ("buoy", 800, 1300, 830, 1330, "not_unique"),  # two buoys 25 grid units apart: "the buoy at ..." is ambiguous
    ("buoy", 850, 1300, 880, 1330, "not_unique"),
    ("boat", 2100, 100, 2150, 150, "annotation_outside_image"),  # wholly outside: dropped at ingest
]


def write_annotations(folder, fmt: str, boxes=BOXES, stem: str = SHIPS.stem):
    folder.mkdir(parents=True, exist_ok=True)
    labels = sorted({b[0] for b in boxes})
    if fmt == "coco":
        doc = {
            "images": [{"id": 1, "file_name": f"{stem}.jpg"}],
            "categories": [{"id": i, "name": n} for i, n in enumerate(labels)],
            "annotations": [
                {"image_id": 1, "category_id": labels.index(b[0]), "bbox": [b[1], b[2], b[3] - b[1], b[4] - b[2]]}
                for b in boxes
            ],
        }
        (folder / "ann.json").write_text(json.dumps(doc))
        return {"format": "coco", "path": str(folder / "ann.json")}
    if fmt == "yolo":
        (folder / "classes.txt").write_text("\n".join(labels))
        lines = []
        for label, x1, y1, x2, y2, _ in boxes:
            cx, cy, w, h = (x1 + x2) / 2 / W, (y1 + y2) / 2 / H, (x2 - x1) / W, (y2 - y1) / H
            lines.append(f"{labels.index(label)} {cx} {cy} {w} {h}")
        (folder / f"{stem}.txt").write_text("\n".join(lines))
        return {"format": "yolo", "path": str(folder)}
    objects = "".join(
        f"<object><name>{b[0]}</name><bndbox><xmin>{b[1]}</xmin><ymin>{b[2]}</ymin><xmax>{b[3]}</xmax>"
        f"<ymax>{b[4]}</ymax></bndbox></object>"
        for b in boxes
    )
    (folder / f"{stem}.xml").write_text(f"<annotation>{objects}</annotation>")
    return {"format": "voc", "path": str(folder)}


def harbour(tmp_path, source: dict | None = None, **sections):
    """A recipe over the harbour scene alone, with `source` as its annotations."""
    images = tmp_path / "images"
    images.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHIPS, images / SHIPS.name)
    ingest = {"annotations": [source] if source else []}
    return load_recipe(write_recipe(tmp_path, images, annotations=False, ingest=ingest, **sections))


@pytest.mark.parametrize("fmt", ["coco", "yolo", "voc"])
def test_every_annotation_box_is_kept_or_dropped_with_its_reason(tmp_path, fmt):
    recipe = harbour(tmp_path, write_annotations(tmp_path / "ann", fmt))
    run_pipeline(recipe, until="mine")

    kept = query(recipe.db, "SELECT source, label, x1, y1, x2, y2 FROM regions ORDER BY x1")
    assert [row[:4] for row in kept] == [("annotation", "boat", 600, 400), ("annotation", "boat", 1500, 1500)]
    assert all(row[4] - row[2] in (30, 31) for row in kept)  # YOLO's fractions may round up a pixel
    reasons = sorted(r for (r,) in query(recipe.db, "SELECT reason FROM drops WHERE stage IN ('ingest', 'mine')"))
    assert reasons == sorted(b[5] for b in BOXES if b[5] != "kept")
    assert query(recipe.db, "SELECT count(*) FROM regions WHERE source = 'proposal'") == [(0,)]


def test_a_crowd_box_is_never_a_region(tmp_path):
    """A marina boxed as one crowd holds many boats: it can be no question's target."""
    source = write_annotations(tmp_path / "ann", "coco", boxes=BOXES[:2])
    doc = json.loads((tmp_path / "ann" / "ann.json").read_text())
    doc["annotations"][1]["iscrowd"] = 1
    (tmp_path / "ann" / "ann.json").write_text(json.dumps(doc))
    recipe = harbour(tmp_path, source)
    run_pipeline(recipe, until="mine")
    assert query(recipe.db, "SELECT x1, y1 FROM regions") == [(600, 400)]
    assert query(recipe.db, "SELECT count(*) FROM annotations") == [(2,)]  # kept: it tells what a region may hide


def test_an_empty_annotation_set_leaves_the_image_to_the_proposer(tmp_path):
    recipe = harbour(tmp_path, write_annotations(tmp_path / "ann", "coco", boxes=[]))
    run_pipeline(recipe, until="mine")
    rows = query(recipe.db, "SELECT source, label, x1, y1, x2, y2, score FROM regions")
    assert rows and {(s, label) for s, label, *_ in rows} == {("proposal", "object")}
    limit = side_range(W, H, recipe.mine, recipe.view)
    # boxes are each segment's extent: the shorter side is within the window, the area within max_area_frac, as
    # the filters keep them (a long hull is sought whatever its length)
    largest = (recipe.mine.max_area_frac * W * H) ** 0.5
    sides = [(min(x2 - x1, y2 - y1), ((x2 - x1) * (y2 - y1)) ** 0.5) for *_, x1, y1, x2, y2, _ in rows]
    assert all(limit[0] - 4 <= short <= limit[1] + 4 and size <= largest + 4 for short, size in sides)
    assert query(recipe.db, "SELECT count(*) FROM annotations") == [(0,)]


def test_sources_and_duplicates(tmp_path):
    """Proposals also run on an annotated image when asked; one on an annotated object is its duplicate."""
    source = write_annotations(tmp_path / "ann", "voc", boxes=[("ship", 158, 557, 175, 649, "kept")])  # a real ship
    both = harbour(tmp_path / "both", source, mine={"proposals_on_annotated": True, "proposal_min_side_px": 8})
    run_pipeline(both, until="mine")
    sources = dict(query(both.db, "SELECT source, count(*) FROM regions GROUP BY source"))
    assert sources.get("annotation") == 1 and sources.get("proposal", 0) > 0
    assert ("duplicate",) in query(both.db, "SELECT DISTINCT reason FROM drops WHERE stage = 'mine'")

    only = harbour(tmp_path / "only", mine={"sources": ["annotations"]})
    run_pipeline(only, until="mine")
    assert query(only.db, "SELECT count(*) FROM regions") == [(0,)]
    assert query(only.db, "SELECT reason FROM drops WHERE stage = 'mine'") == [("no_regions",)]


def test_a_malformed_annotation_file_stops_the_run_naming_file_and_entry(tmp_path):
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / f"{SHIPS.stem}.txt").write_text("0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1\n")
    recipe = harbour(tmp_path, {"format": "yolo", "path": str(tmp_path / "ann"), "classes": ["boat"]})
    with pytest.raises(AnnotationError, match=rf"{SHIPS.stem}\.txt:2: expected 'class cx cy w h'"):
        run_pipeline(recipe, until="mine")


def test_regions_do_not_depend_on_the_number_of_workers(tmp_path):
    runs = []
    for workers in (1, 2):
        trees = {"annotations": [{"format": "voc", "path": str(DEMO_ANNOTATIONS)}]}  # the other photos: proposals
        recipe = load_recipe(
            write_recipe(tmp_path / f"w{workers}", DEMO_IMAGES, ingest=trees, mine={"workers": workers})
        )
        stats = {s.stage: s for s in run_pipeline(recipe, until="mine").stages}
        assert stats["mine"].processed == 4
        runs.append(
            (
                query(recipe.db, "SELECT * FROM regions ORDER BY region_id"),
                query(recipe.db, "SELECT item_id, reason FROM drops WHERE stage = 'mine' ORDER BY ALL"),
            )
        )
    assert runs[0] == runs[1]
    regions, drops = runs[0]
    assert {r[2] for r in regions} == {"annotation", "proposal"}  # the forest's trees; proposals elsewhere
    assert {reason for _, reason in drops} >= {"visible_without_zoom", "not_unique"}


@pytest.mark.parametrize(
    "boxes, labels, expected",
    [
        ([(100, 100, 120, 120), (130, 100, 150, 120)], ["car", "car"], [True, True]),  # 15 grid units apart
        ([(100, 100, 120, 120), (130, 100, 150, 120)], ["car", "Bus"], [False, False]),
        ([(100, 100, 120, 120), (130, 100, 150, 120)], ["car", "object"], [False, True]),  # the blob may be a car
        ([(100, 100, 120, 120), (700, 100, 720, 120)], ["car", "car"], [False, False]),  # 300 units apart
        ([(100, 100, 120, 120)], ["car"], [False]),
    ],
)
def test_uniqueness_is_by_label_and_distance_on_the_grid(boxes, labels, expected):
    candidates = [Candidate("annotation", label, box, 1.0) for label, box in zip(labels, boxes, strict=True)]
    assert not_unique(candidates, 2000, 1000, radius=40).tolist() == expected
    assert not not_unique(candidates, 2000, 1000, radius=0).any()
    # verify and ground ask the same question one referent at a time, and get the same answers
    points = [(c.label, centre_grid(c.box, 2000, 1000)) for c in candidates]
    one_by_one = [ambiguous([p], points[:i] + points[i + 1 :], radius=40) for i, p in enumerate(points)]
    assert one_by_one == expected


def test_mine_reads_the_size_of_the_view(tmp_path):
    """Seen whole at full size (`view.max_pixels` above the image's 3.5 MP), a 30 px boat needs no zoom."""
    recipe = harbour(tmp_path, write_annotations(tmp_path / "ann", "voc"), view={"max_pixels": 4_000_000})
    run_pipeline(recipe, until="mine")
    assert query(recipe.db, "SELECT count(*) FROM regions") == [(0,)]
    reasons = sorted(r for (r,) in query(recipe.db, "SELECT reason FROM drops WHERE stage = 'mine'"))
    assert reasons == ["at_border", "no_regions", "too_large", "too_small"] + ["visible_without_zoom"] * 5  # buoys too


def test_the_proposal_view_shrinks_with_the_smallest_object_sought_and_the_image():
    cfg = MineConfig()  # objects from 8 px (or min_area_frac of the image), kept 4+ px wide in the view
    assert [proposal_factor(side, side, cfg) for side in (1000, 4000, 8192, 10_000)] == [2, 4, 8, 8]
    assert proposal_factor(1000, 1000, MineConfig(proposal_min_side_px=32)) == 8
    low, high = side_range(10_000, 10_000, cfg, ViewConfig())  # a 100 MP image seen at 1 MP: 0.1x
    assert (round(low), round(high)) == (45, 240)  # min_area_frac outweighs proposal_min_side_px here
    assert side_range(4000, 3000, MineConfig(), ViewConfig(min_resolvable_px=0)) == (
        pytest.approx(np.sqrt(0.00002 * 12e6)),
        pytest.approx(np.sqrt(0.01 * 12e6)),
    )


def _noisy(side: int = 300, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (side, side), dtype=np.uint8)


def test_the_no_data_check_skips_only_images_without_a_constant_run_along_an_edge(monkeypatch):
    """`_no_data` looks no further than the edge when no constant run lies along it; the shortcut must never miss
    an area the full check finds (a rotated scene's constant corner, a letterbox strip)."""
    from drim_data.pixels import proposer

    assert proposer._no_data(_noisy()).size == 0  # a photo: no constant run along any edge
    corner = _noisy()
    corner[np.add.outer(np.arange(300), np.arange(300)) < 14] = 0  # a small no-data wedge in the top-left corner
    strip = _noisy(seed=1)
    strip[:, -8:] = 255  # a thin letterbox strip on the right
    shortcut = [proposer._no_data(image) for image in (corner, strip)]
    monkeypatch.setattr(proposer, "_constant_run", lambda edge, size: True)  # always the full check
    full = [proposer._no_data(image) for image in (corner, strip)]
    for fast, slow in zip(shortcut, full, strict=True):
        assert slow.any() and fast.shape == slow.shape and (fast == slow).all()
    assert full[0][2, 2] and full[1][150, -3]
