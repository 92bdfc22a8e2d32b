"""Images by reference: the database records where each image lives, reads it back from there (a folder, a URL or
a dataset row), and a source gone or changed since ingest costs that image alone, with its reason."""

import hashlib
import shutil
from pathlib import Path

import duckdb
import fsspec
import pyarrow.parquet as pq
import pytest
import yaml

from drim_data.errors import DrimError
from drim_data.pipeline import run_pipeline
from drim_data.pixels.sources import image_bytes
from drim_data.recipe import load_recipe
from tests.conftest import DEMO_IMAGES, NEON, SHIPS, query, write_recipe
from tests.test_ingest import crop

SHIPS_3 = DEMO_IMAGES / "planet_shipsnet_scene_3.jpg"


@pytest.fixture
def crops(tmp_path) -> Path:
    """Three small crops of real photos, one of them a PNG."""
    folder = tmp_path / "images"
    crop(SHIPS, (0, 0, 320, 280), folder / "harbour.jpg")
    crop(SHIPS, (800, 600, 1120, 880), folder / "sea.jpg")
    crop(NEON, (0, 0, 300, 250), folder / "forest.png")
    return folder


def ingest(folder: Path, **ingest: object) -> tuple[Path, int]:
    """Ingest alone, with these `ingest` settings, into `folder`'s database: (the database, files read)."""
    recipe = {"dataset": "refs", "db": str(folder / "state.duckdb"), "output_dir": str(folder / "out")}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump({**recipe, "ingest": ingest}))
    (stats,) = run_pipeline(load_recipe(folder / "recipe.yaml"), until="ingest").stages
    return folder / "state.duckdb", stats.processed


def read_back(db: Path) -> dict[str, bytes]:
    """Each image's bytes as the stages read them, by URI."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("SELECT image_id, uri FROM images").fetchall()
        return {uri: image_bytes(con, image_id) for image_id, uri in rows}
    finally:
        con.close()


def photo_dataset(folder: Path):
    """The folder's photos as a dataset with an Image column, a file name, and one ship boxed in harbour.jpg, in
    both annotation forms: the Hub's object-detection `objects` and a COCO-like list of boxes."""
    from datasets import ClassLabel, Dataset, Features, Image, List, Value

    files = sorted(folder.iterdir())
    box = [10.0, 20.0, 30.0, 40.0]  # x, y, width, height
    features = Features(
        {
            "image": Image(),
            "file_name": Value("string"),
            "objects": {"bbox": List(List(Value("float32"), length=4)), "category": List(ClassLabel(names=["ship"]))},
            "boxes": List({"bbox": List(Value("float32"), length=4), "label": Value("string")}),
        }
    )
    harbour = [f.name == "harbour.jpg" for f in files]
    return Dataset.from_dict(
        {
            "image": [{"bytes": f.read_bytes(), "path": f.name} for f in files],
            "file_name": [f.name for f in files],
            "objects": [{"bbox": [box] if h else [], "category": [0] if h else []} for h in harbour],
            "boxes": [[{"bbox": box, "label": "ship"}] if h else [] for h in harbour],
        },
        features=features,
    )


def test_the_database_holds_references_and_the_bytes_only_when_embedded(tmp_path, crops):
    db, _ = ingest(tmp_path, images=str(crops))
    files = {str(f): f.read_bytes() for f in crops.iterdir()}
    assert {uri: (size, data) for uri, size, data in query(db, "SELECT uri, size, data FROM images")} == {
        uri: (len(data), None) for uri, data in files.items()
    }
    assert read_back(db) == files
    settings = query(db, "SELECT fingerprint FROM stage_state")

    ingest(tmp_path, images=str(crops), embed=True)
    assert dict(query(db, "SELECT uri, data FROM images")) == files
    ingest(tmp_path, images=str(crops), embed=False)
    assert query(db, "SELECT count(*) FROM images WHERE data IS NOT NULL") == [(0,)]
    assert query(db, "SELECT fingerprint FROM stage_state") == settings  # where bytes are kept redoes nothing


def test_a_folder_a_parquet_file_and_a_saved_dataset_hold_the_same_images(tmp_path, crops):
    photos = photo_dataset(crops)
    photos.to_parquet(str(tmp_path / "photos.parquet"))
    photos.save_to_disk(str(tmp_path / "saved"))
    folder, _ = ingest(tmp_path / "folder", images=str(crops))
    hub_form = {"path": str(tmp_path / "photos.parquet"), "annotations_column": "objects", "complete": ["ship"]}
    parquet, _ = ingest(tmp_path / "parquet", dataset=hub_form)
    list_form = {"path": str(tmp_path / "saved"), "id_column": "file_name", "annotations_column": "boxes"}
    saved, _ = ingest(tmp_path / "saved-db", dataset=list_form)

    def ids(db):
        return sorted(query(db, "SELECT image_id FROM images"))

    assert ids(folder) == ids(parquet) == ids(saved) and len(ids(folder)) == 3  # an image is its content
    by_name = {uri.rpartition("#")[2]: data for uri, data in read_back(saved).items()}  # read back through the rows
    assert by_name == {f.name: f.read_bytes() for f in crops.iterdir()}
    harbour = hashlib.sha256((crops / "harbour.jpg").read_bytes()).hexdigest()
    for db in (parquet, saved):
        assert query(db, "SELECT image_id, label, x1, y1, x2, y2 FROM annotations") == [
            (harbour, "ship", 10, 20, 40, 60)
        ]
    assert query(parquet, "SELECT * FROM complete_categories") == [(harbour, "ship")]
    assert ingest(tmp_path / "parquet", dataset=hub_form)[1] == 0  # an unchanged dataset is not read again


def test_an_fsspec_url_is_listed_read_and_not_read_again_while_unchanged(tmp_path, crops):
    fs, root = fsspec.filesystem("memory"), f"/drim-{tmp_path.name}"
    for f in crops.iterdir():
        fs.pipe(f"{root}/photos/{f.name}", f.read_bytes())
    try:
        db, read = ingest(tmp_path / "url", images=f"memory://{root}/photos")
        assert read == 3 and all(uri.startswith("memory://") for uri in read_back(db))
        assert sorted(read_back(db).values()) == sorted(f.read_bytes() for f in crops.iterdir())
        for name, other in (("folder", str(crops)), ("file-url", f"file://{crops}")):
            assert sorted(query(db, "SELECT image_id FROM images")) == sorted(
                query(ingest(tmp_path / name, images=other)[0], "SELECT image_id FROM images")
            )
        assert ingest(tmp_path / "url", images=f"memory://{root}/photos")[1] == 0
        fs.pipe(f"{root}/photos/sea.jpg", (crops / "harbour.jpg").read_bytes())  # a changed file is read again
        assert ingest(tmp_path / "url", images=f"memory://{root}/photos")[1] == 1
    finally:
        fs.rm(root, recursive=True)


@pytest.mark.parametrize(
    "ingest_settings, message",
    [
        ({"images": "memory://drim-nowhere/photos"}, "is not a folder"),
        ({"images": "nosuchprotocol://bucket/photos"}, "cannot list nosuchprotocol://bucket/photos"),
        ({"dataset": {"path": "./missing.parquet"}}, "ingest.dataset: cannot open"),
        ({"dataset": {"path": "drim-test/no-such-dataset"}}, "cannot open drim-test/no-such-dataset"),  # offline
        ({"images": "s3://key:secret@bucket/photos"}, "credentials .* not in the URL"),
    ],
)
def test_an_input_that_cannot_be_used_stops_the_run(tmp_path, ingest_settings, message):
    with pytest.raises(DrimError, match=message):
        ingest(tmp_path, **ingest_settings)


def test_a_deleted_and_a_modified_source_are_dropped_where_they_are_read_and_the_run_goes_on(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for src in (SHIPS, SHIPS_3, NEON):  # each has named objects, so generate reads its pixels
        shutil.copy(src, images)
    ids = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in images.iterdir()}
    recipe = load_recipe(write_recipe(tmp_path, images))

    def track(items, stage, total):
        """Between ingest and the first stage that reads pixels, one file goes and another is rewritten."""
        if stage == "generate" and (images / SHIPS.name).exists():
            (images / SHIPS.name).unlink()
            with open(images / NEON.name, "ab") as f:
                f.write(b"\0" * 16)
        yield from items

    result = run_pipeline(recipe, track=track)
    drops = {
        i: (r, d) for i, r, d in query(recipe.db, "SELECT item_id, reason, detail FROM drops WHERE stage = 'generate'")
    }
    assert drops[ids[SHIPS.name]][0] == "source_missing" and SHIPS.name in drops[ids[SHIPS.name]][1]
    assert drops[ids[NEON.name]][0] == "source_changed"
    assert exported_images(result.export.path) == {ids[SHIPS_3.name]}  # the rest go on


def test_a_source_gone_before_export_leaves_its_rows_out_until_it_is_back(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SHIPS, images)
    shutil.copy(SHIPS_3, images)
    gone = hashlib.sha256(SHIPS_3.read_bytes()).hexdigest()
    recipe = load_recipe(
        write_recipe(tmp_path, images, generate={"per_image": 2, "question_types": ["relative_position"]})
    )

    def track(items, stage, total):
        if stage == "trajectories" and (images / SHIPS_3.name).exists():
            (images / SHIPS_3.name).unlink()  # after verify: its verified items are exported as RL prompts
        yield from items

    first = run_pipeline(recipe, track=track)
    assert first.export.written and first.export.dropped == {"source_missing": 1}
    assert query(recipe.db, "SELECT item_id, reason FROM drops WHERE stage = 'export'") == [(gone, "source_missing")]
    assert gone not in exported_images(first.export.path)

    shutil.copy(SHIPS_3, images)  # restored: the stages that dropped it try again, and the next version has it
    second = run_pipeline(recipe)
    assert second.export.version == 2 and gone in exported_images(second.export.path)
    assert query(recipe.db, "SELECT count(*) FROM drops WHERE reason LIKE 'source_%'") == [(0,)]


def exported_images(version: Path) -> set[str]:
    return {i for p in version.glob("data/*/*.parquet") for i in pq.read_table(p).column("image_id").to_pylist()}
