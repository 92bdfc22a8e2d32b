"""Shared fixtures: recipes written into tmp dirs over the bundled real photos, and one demo version per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import duckdb
import pytest
import yaml
from hypothesis import settings

# a property test is judged by its examples, not by its speed on shared CI cores; pytest-timeout catches hangs
settings.register_profile("drim", deadline=None)
settings.load_profile("drim")

os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="drim-test-hf-"))  # caches never land in ~/.cache
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DEMO_IMAGES = REPO / "data" / "demo" / "images"
DEMO_ANNOTATIONS = REPO / "data" / "demo" / "annotations"
NEON = DEMO_IMAGES / "neon_2019_YELL_2_541000_4977000_image_crop.png"
SHIPS = DEMO_IMAGES / "planet_shipsnet_scene_2.jpg"
HARBOUR = DEMO_IMAGES / "planet_shipsnet_scene_3.jpg"  # the harbour whose named ships make a question


def write_recipe(folder: Path, images: Path, annotations: bool = True, **sections) -> Path:
    """A recipe file in `folder` over `images`, with per-section overrides such as mine={"top_k": 10}."""
    recipe = {
        "dataset": "test-set",
        "db": str(folder / "state.duckdb"),
        "output_dir": str(folder / "out"),
        "ingest": {"images": str(images)},
    }
    if annotations:
        recipe["ingest"]["annotations"] = [  # the trees, and the class-named boxes the built-in teacher asks about
            {"format": "voc", "path": str(DEMO_ANNOTATIONS)},
            {"format": "coco", "path": str(DEMO_ANNOTATIONS / "labelled.coco.json")},
        ]
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def demo_settings() -> dict:
    """The demo recipe's stage settings, for recipes over the demo images that must match its database."""
    demo = yaml.safe_load((REPO / "pipelines" / "demo.yaml").read_text())
    return {key: demo[key] for key in ("mine", "generate", "view", "export") if key in demo}


def query(db: Path, sql: str) -> list[tuple]:
    """Rows of a query on a recipe's database, opened read-only and closed again."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture
def small_images(tmp_path: Path) -> Path:
    """Two real photos: the annotated forest and a harbour scene (proposals)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for src in (NEON, HARBOUR):
        shutil.copy(src, folder / src.name)
    return folder


@pytest.fixture(scope="session")
def demo_version(tmp_path_factory) -> Path:
    """A v1 folder produced by the real pipeline on the bundled demo images, with the demo recipe's settings."""
    from drim_data.pipeline import run_pipeline
    from drim_data.recipe import load_recipe

    folder = tmp_path_factory.mktemp("demo")
    result = run_pipeline(load_recipe(write_recipe(folder, DEMO_IMAGES, **demo_settings())))
    assert result.export.written and result.export.version == 1
    return result.export.path
