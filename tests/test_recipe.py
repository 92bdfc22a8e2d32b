import dataclasses
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from drim_data.recipe import (
    RANGES,
    ExportConfig,
    GenerateConfig,
    IngestConfig,
    MineConfig,
    Recipe,
    RecipeError,
    TrajectoryConfig,
    VerifyConfig,
    ViewConfig,
    load_recipe,
)

BASE = "dataset: d\ndb: s.duckdb\noutput_dir: out\ningest: {images: imgs}\n"


def recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_demo_recipe_loads_with_paths_relative_to_the_file():
    r = load_recipe(Path(__file__).parents[1] / "pipelines" / "demo.yaml")
    assert r.dataset == "drim-demo"
    assert Path(r.ingest.images).is_dir() and Path(r.ingest.images).name == "images"
    assert r.ingest.annotations[0].format == "voc"
    assert r.view.max_pixels == 262144


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


@pytest.mark.parametrize(
    "extra, message",
    [
        ("mine: {top_k: -5}\n", "mine.top_k: -5 must be at least 1"),
        ("mine: {top_k: 0}\n", "mine.top_k: 0 must be at least 1"),
        ("generate: {per_image: -1}\n", "generate.per_image: -1 must be at least 1"),
        ("view: {max_pixels: 0}\n", "view.max_pixels: 0 must be at least 1"),
        ("view: {min_resolvable_px: .nan}\n", "view.min_resolvable_px: nan must be a finite number"),
        ("export: {rows_per_shard: 0}\n", "export.rows_per_shard: 0 must be at least 1"),
        ("export: {rl_share: 1.5}\n", "export.rl_share: 1.5 must be at most 1"),
        ("trajectories: {reflective_share: -0.1}\n", "trajectories.reflective_share: -0.1 must be at least 0"),
        ("mine: {proposal_max_side: 0}\n", "mine.proposal_max_side: 0 must be at least 16"),
        ("mine: {top_k: 100000000000000000000}\n", "mine.top_k: 100000000000000000000 does not fit in 64 bits"),
        ("mine: {min_area_frac: 0.5, max_area_frac: 0.1}\n", "mine.min_area_frac must be at most mine.max_area_frac"),
        ("verify: {referent_radius: 30}\n", "unknown key 'verify.referent_radius'; it is now mine.unique_radius"),
        ("dataset: ../../../x\n", "dataset: '../../../x' must be a plain folder name"),
        ("dataset: a/b\n", "must be a plain folder name"),
        ("dataset: ''\n", "must be a plain folder name"),
        ("mine: {top_k: 5}\nmine: {top_k: 6}\n", "line 6: key 'mine' is given twice"),
        ("mine: {top_k: 5, top_k: 6}\n", "line 5: key 'top_k' is given twice"),
        ("ingest: {images: imgs, extensions: []}\n", "ingest.extensions is empty"),
        ("ingest: {images: imgs, extensions: ['.jpg', 'j p g']}\n", "ingest.extensions[1]: 'j p g' is not a file"),
        ('db: "a\\0b"\n', "db: expected a path string"),
        ("mine: {2: 3}\n", "unknown key 'mine.2'"),
        ("mine: {sources: !!binary aGk=}\n", "mine.sources: expected a list"),
        ("generate: {seed: 2001-13-45}\n", "not valid YAML: month must be in 1..12"),
    ],
)
def test_values_out_of_range_are_refused_by_name(tmp_path, extra, message):
    base = BASE
    for line in extra.splitlines():
        key = line.split(":")[0]
        base = "\n".join(b for b in base.splitlines() if not b.startswith(key + ":")) + "\n"
    if extra.startswith("dataset"):
        base = BASE.replace("dataset: d\n", "")
    path = recipe(tmp_path, base + extra)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_extensions_are_normalised_to_a_lower_case_dot_form(tmp_path):
    r = load_recipe(recipe(tmp_path, BASE.replace("{images: imgs}", "{images: imgs, extensions: [JPG, .Png, tif]}")))
    assert r.ingest.extensions == [".jpg", ".png", ".tif"]


def _numeric_fields():
    """Every int and float field of every section, with its class: all must have a range in RANGES."""
    seen, todo, found = set(), [Recipe], []
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            todo += [a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)]
            if tp in (int, float):
                found.append((cls, f.name))
    return found


def test_every_numeric_setting_has_its_range_in_one_table():
    fields = _numeric_fields()
    assert len(fields) > 40
    missing = [f"{cls.__name__}.{name}" for cls, name in fields if name not in RANGES.get(cls, {})]
    assert missing == []


def _plain_recipe() -> dict:
    return {"dataset": "d", "db": "s.duckdb", "output_dir": "out", "ingest": {"images": "imgs"}}


TRICKY = ["", "\0", "a\0b", "..", "../x", "jpg", ".JPG", "0", -1, 0, 2**64, -(2**70), float("nan"), float("inf")]
yaml_values = st.recursive(
    st.sampled_from(TRICKY)
    | st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
SECTIONS = {
    "ingest": IngestConfig,
    "view": ViewConfig,
    "mine": MineConfig,
    "generate": GenerateConfig,
    "verify": VerifyConfig,
    "trajectories": TrajectoryConfig,
    "export": ExportConfig,
}
section_fields = st.sampled_from(
    [(s, f.name) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    + [(None, name) for name in ("dataset", "db", "output_dir", "license", "sources", "teacher")]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section_fields, yaml_values)
@example((None, "db"), "a\0b")
@example(("view", "min_resolvable_px"), 2**1100)
@example(("export", "rl_share"), float("nan"))
def test_any_value_for_any_key_loads_or_is_a_recipe_error(tmp_path, where, value):
    data = _plain_recipe()
    section, name = where
    if section is None:
        data[name] = value
    else:
        data[section] = {**data.get(section, {}), name: value}
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    try:
        loaded = load_recipe(path)
    except RecipeError as exc:
        assert str(path) in str(exc)
    else:
        assert isinstance(loaded, Recipe)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=200), yaml_values.map(lambda v: yaml.safe_dump(v, allow_unicode=True))))
def test_any_document_loads_or_is_a_recipe_error(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_recipe(path)
    except RecipeError as exc:
        assert str(path) in str(exc)


ENDPOINT = "teacher: {stages: [verification], endpoint: {model: m, base_url: %s}}\n"


def test_base_url_takes_one_url_or_a_list_of_replicas(tmp_path):
    one = load_recipe(recipe(tmp_path, BASE + ENDPOINT % "http://a:8000/v1")).teacher.endpoint
    assert one.urls == ["http://a:8000/v1"]
    replicas = load_recipe(recipe(tmp_path, BASE + ENDPOINT % "[http://a:8000/v1, 'https://b/v1']")).teacher.endpoint
    assert replicas.base_url == replicas.urls == ["http://a:8000/v1", "https://b/v1"]


@pytest.mark.parametrize(
    "base_url, message",
    [
        ("localhost:8000/v1", "teacher.endpoint.base_url: 'localhost:8000/v1' is not an http:// or https:// URL"),
        ("[http://a/v1, ftp://b/v1]", "teacher.endpoint.base_url[1]: 'ftp://b/v1' is not an http:// or https://"),
        ("[http://a/v1, 'http://[b/v1']", "base_url[1]: 'http://[b/v1' is not an http:// or https:// URL"),
        ("[http://a/v1, http://a/v1]", "base_url[1]: 'http://a/v1' is listed twice"),
        ("[]", "teacher.endpoint.base_url: the list of replicas is empty"),
        ("[http://a/v1, 3]", "base_url[1]: expected str, got int"),
    ],
)
def test_a_bad_base_url_is_refused_by_name(tmp_path, base_url, message):
    path = recipe(tmp_path, BASE + ENDPOINT % base_url)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(path) in str(err.value) and message in str(err.value)
