from pathlib import Path

import pytest

from drim_data.recipe import RecipeError, load_recipe

BASE = "dataset: d\ndb: s.duckdb\noutput_dir: out\ningest: {images: imgs}\n"


def recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_demo_recipe_loads_with_paths_relative_to_the_file():
    r = load_recipe(Path(__file__).parents[1] / "pipelines" / "demo.yaml")
    assert r.dataset == "drim-demo"
    assert r.ingest.images.is_dir() and r.ingest.images.name == "images"
    assert r.ingest.annotations[0].format == "voc"
    assert r.view.max_pixels == 1003520


@pytest.mark.parametrize(
    "extra, message",
    [
        ("colour: red\n", "unknown key 'colour'"),
        ("mine: {top_kk: 3}\n", "unknown key 'mine.top_kk'"),
        ("mine: {top_k: many}\n", "mine.top_k: expected int, got str 'many'"),
        ("mine: {top_k: 2.5}\n", "mine.top_k: expected int, got float"),
        ("generate: {question_types: [colour, smell]}\n", "generate.question_types[1]: 'smell' is not one of"),
        ("ingest: {images: imgs, annotations: [{format: kitti, path: a}]}\n", "ingest.annotations[0].format"),
        (
            "ingest: {images: imgs, annotations: [{format: coco}]}\n",
            "missing required key 'ingest.annotations[0].path'",
        ),
        ("mine: 3\n", "mine: expected a mapping"),
        ("view: {min_resolvable_px: true}\n", "view.min_resolvable_px: expected float, got bool"),
    ],
)
def test_bad_keys_are_named_with_the_file(tmp_path, extra, message):
    text = BASE if not extra.startswith("ingest") else BASE.replace("ingest: {images: imgs}\n", "")
    path = recipe(tmp_path, text + extra)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_missing_required_key_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="missing required key 'dataset'"):
        load_recipe(recipe(tmp_path, "db: s\noutput_dir: o\ningest: {images: i}\n"))
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(recipe(tmp_path, "dataset: [unclosed\n"))
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")


def test_fingerprint_ignores_comments_and_order_but_not_values(tmp_path):
    a = load_recipe(recipe(tmp_path, BASE + "mine: {top_k: 5}\n"))
    b = load_recipe(recipe(tmp_path, "# comment\nmine: {top_k: 5}\n" + BASE))
    c = load_recipe(recipe(tmp_path, BASE + "mine: {top_k: 6}\n"))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.mine.top_k == 5 and a.mine.max_area_frac == 0.01  # defaults fill the rest


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "pipelines").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_bundled_recipe_loads(path):
    assert load_recipe(path).dataset
