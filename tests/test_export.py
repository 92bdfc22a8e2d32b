"""The exported version: loads with `datasets`, validates against the schemas, and its files match the manifest."""

import dataclasses
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pandera.errors
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import Image as ImageFeature
from datasets import load_dataset
from PIL import Image
from typer.testing import CliRunner

from drim_data.cli import app
from drim_data.errors import RunFault
from drim_data.pipeline import run_pipeline
from drim_data.recipe import load_recipe
from drim_data.stages import export
from schemas.answers import extract_answer, is_correct
from schemas.rows import RL_SCHEMA, SCHEMA_VERSION, SFT_SCHEMA, count_image_blocks
from tests.conftest import DEMO_IMAGES, demo_settings, query, write_recipe

runner = CliRunner()


def load(version, split, decode=True):
    ds = load_dataset("parquet", data_dir=str(version / "data" / split), split="train")
    return ds if decode else ds.cast_column("images", [ImageFeature(decode=False)])


def test_both_splits_load_with_pil_images_and_validate(demo_version):
    manifest = json.loads((demo_version / "manifest.json").read_text())
    for split, schema in (("sft", SFT_SCHEMA), ("rl", RL_SCHEMA)):
        ds = load(demo_version, split)
        assert len(ds) == manifest["rows"][split] > 0
        assert all(isinstance(img, Image.Image) for img in ds[0]["images"])
        schema.validate(load(demo_version, split, decode=False).to_pandas(), lazy=True)


def test_sft_conversations_carry_their_crops_and_end_correct(demo_version):
    ds = load(demo_version, "sft")
    for row in ds:
        messages = row["messages"]
        tool_turns = [m for m in messages if m["role"] == "tool"]
        assert len(row["images"]) == 1 + len(tool_turns) == count_image_blocks(messages)
        assert len(row["zoom_boxes_px"]) == len(tool_turns) >= 1
        for call_msg in (m for m in messages if m["tool_calls"]):
            args = json.loads(call_msg["tool_calls"][0]["function"]["arguments"])
            assert len(args["bbox_2d"]) == 4
        final = messages[-1]["content"][-1]["text"]
        assert is_correct(row["checker"], extract_answer(final), row["answer"])
        crop_sizes = [img.size for img in row["images"][1:]]
        assert all(w * h >= 256 * 28 * 28 * 0.99 for w, h in crop_sizes)


def test_rl_rows_hold_the_original_image_and_consistent_boxes(demo_version):
    for row in load(demo_version, "rl"):
        image = row["images"][0]
        assert image.size == (row["width"], row["height"])
        for px, norm in zip(row["target_boxes_px"], row["target_boxes_norm"], strict=True):
            assert norm == pytest.approx(
                [px[0] / row["width"], px[1] / row["height"], px[2] / row["width"], px[3] / row["height"]], abs=1e-6
            )
        assert row["prompt"][0]["role"] == "system" and row["prompt"][1]["role"] == "user"


def test_manifest_matches_the_files_and_the_card_declares_both_configs(demo_version):
    manifest = json.loads((demo_version / "manifest.json").read_text())
    assert manifest["version"] == 1 and manifest["parent"] is None
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["tool"]["name"] == "zoom_in"
    for rel, info in manifest["shards"].items():
        assert hashlib.sha256((demo_version / rel).read_bytes()).hexdigest() == info["sha256"]
    assert sum(i["rows"] for r, i in manifest["shards"].items() if "/sft/" in r) == manifest["rows"]["sft"]
    card = (demo_version / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert [c["config_name"] for c in header["configs"]] == ["sft", "rl"]
    assert len(load_dataset(str(demo_version), "rl", split="train")) == manifest["rows"]["rl"]


def test_no_secret_or_absolute_home_path_reaches_the_manifest(demo_version):
    text = (demo_version / "manifest.json").read_text()
    assert "api_key" not in text.lower()
    assert str(Path.home()) not in text and str(Path(__file__).resolve().parents[1]) not in text


def test_schema_rejects_broken_rows(demo_version):
    good = load(demo_version, "sft", decode=False).to_pandas()
    broken = {
        "answer outside options": lambda df: df.assign(
            answer=["Z" if c == "choice" else a for c, a in zip(df.checker, df.answer, strict=False)]
        ),
        "unknown checker": lambda df: df.assign(checker="vibes"),
        "image missing": lambda df: df.assign(images=[list(i)[:-1] for i in df.images]),
        "tool args not JSON": lambda df: df.assign(messages=[_break_args(m) for m in df.messages]),
        "extra column": lambda df: df.assign(secret="x"),
    }
    for name, breaker in broken.items():
        try:
            SFT_SCHEMA.validate(breaker(good.copy()), lazy=True)
        except pandera.errors.SchemaErrors:
            continue
        pytest.fail(f"the schema let rows with '{name}' through")
    SFT_SCHEMA.validate(good, lazy=True)  # and the unbroken rows pass


def _break_args(messages):
    messages = [dict(m) for m in messages]
    for m in messages:
        if m["tool_calls"] is not None and len(m["tool_calls"]):
            m["tool_calls"] = [{"type": "function", "function": {"name": "zoom_in", "arguments": "{bbox"}}]
    return messages


def test_rl_schema_rejects_boxes_outside_the_unit_square(demo_version):
    rl = load(demo_version, "rl", decode=False).to_pandas()
    rl.at[0, "target_boxes_norm"] = [[0.1, 0.1, 1.5, 0.2]]
    with pytest.raises(pandera.errors.SchemaErrors):
        RL_SCHEMA.validate(rl, lazy=True)


def test_shards_are_checked_with_image_bytes_stood_in_for_by_their_length(demo_version):
    import pyarrow as pa

    from drim_data.stages.export import _checkable

    table = pa.concat_tables(pq.read_table(p) for p in sorted((demo_version / "data" / "sft").glob("*.parquet")))
    frame = _checkable(table.slice(1))  # a sliced chunk keeps its rows' own images
    first = table.column("images")[1].as_py()
    assert [img["bytes"] for img in frame.images[0]] == [len(img["bytes"]) for img in first]
    SFT_SCHEMA.validate(frame, lazy=True)

    rows = table.to_pylist()
    rows[0]["images"][0]["bytes"] = b""
    with pytest.raises(pandera.errors.SchemaErrors, match="images need bytes"):
        SFT_SCHEMA.validate(_checkable(pa.Table.from_pylist(rows, schema=table.schema)), lazy=True)


# Export's edges: faults of the output folder, a bad shard size, shared folders, deleted versions.


def _shard_hashes(version):
    return {rel: i["sha256"] for rel, i in json.loads((version / "manifest.json").read_text())["shards"].items()}


def _exports(db):
    return query(db, "SELECT version, parent FROM exports ORDER BY version")


def test_a_full_disk_is_one_line_naming_the_folder_and_leaves_nothing(tmp_path, small_images, monkeypatch):
    recipe = load_recipe(write_recipe(tmp_path, small_images))
    root = tmp_path / "out" / "test-set"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pq, "write_table", full)
    with pytest.raises(RunFault) as fault:
        run_pipeline(recipe)
    assert str(fault.value) == f"cannot write version v1 in {root}: No space left on device; nothing was exported"
    assert list(root.iterdir()) == [] and _exports(recipe.db) == []

    monkeypatch.undo()
    result = run_pipeline(recipe)
    assert result.export.written and result.export.version == 1 and _exports(recipe.db) == [(1, None)]


def test_an_output_folder_that_cannot_be_created_is_a_run_fault(tmp_path, small_images):
    (tmp_path / "a-file").write_text("not a folder")
    recipe = load_recipe(write_recipe(tmp_path, small_images, output_dir=str(tmp_path / "a-file" / "out")))
    with pytest.raises(RunFault, match=rf"cannot write version v1 in {tmp_path / 'a-file' / 'out' / 'test-set'}: "):
        run_pipeline(recipe)
    assert _exports(recipe.db) == []


def test_rows_per_shard_zero_is_refused_before_anything_is_written(tmp_path, small_images):
    recipe = load_recipe(write_recipe(tmp_path, small_images))
    recipe = dataclasses.replace(recipe, export=dataclasses.replace(recipe.export, rows_per_shard=0))
    with pytest.raises(RunFault, match="export.rows_per_shard must be at least 1, got 0"):
        run_pipeline(recipe)
    assert not (tmp_path / "out").exists() and _exports(recipe.db) == []


def test_two_databases_never_share_a_dataset_folder_nor_remove_each_others_staging(tmp_path, small_images):
    first = load_recipe(write_recipe(tmp_path / "a", small_images, output_dir=str(tmp_path / "out")))
    second = load_recipe(write_recipe(tmp_path / "b", small_images, output_dir=str(tmp_path / "out")))
    root = tmp_path / "out" / "test-set"
    # the first recipe's export is under way (its staging folder exists); a killed run of the second left its own
    theirs = root / f".v1.{export.database_id(first.db)}.partial"
    ours = root / f".v1.{export.database_id(second.db)}.partial"
    for folder in (theirs, ours):
        (folder / "data").mkdir(parents=True)
    result = run_pipeline(second)
    assert result.export.version == 1 and theirs.is_dir() and not ours.exists()

    with pytest.raises(RunFault, match=rf"{root / 'v1'} was exported from another recipe's database"):
        run_pipeline(first)
    assert _exports(first.db) == [] and sorted(p.name for p in root.iterdir()) == [theirs.name, "v1"]


def test_a_deleted_version_is_shown_missing_and_exported_again(tmp_path, small_images):
    path = write_recipe(tmp_path, small_images)
    recipe = load_recipe(path)
    first = run_pipeline(recipe)
    shards = _shard_hashes(first.export.path)
    shutil.rmtree(first.export.path)

    listed = runner.invoke(app, ["versions", str(path)], env={"COLUMNS": "300"})
    assert listed.exit_code == 0 and "missing" in next(line for line in listed.output.splitlines() if "│ v1 " in line)

    generated = runner.invoke(app, ["generate", str(path)], env={"COLUMNS": "300"})
    assert generated.exit_code == 0, generated.output
    assert "wrote v2" in generated.output and "current" not in generated.output
    manifest = json.loads((tmp_path / "out" / "test-set" / "v2" / "manifest.json").read_text())
    assert manifest["parent"] == 1 and _shard_hashes(tmp_path / "out" / "test-set" / "v2") == shards
    assert _exports(recipe.db) == [(1, None), (2, 1)]
    status = runner.invoke(app, ["status", str(path)], env={"COLUMNS": "300"})
    assert status.output.strip().splitlines()[-1].startswith("v2 (parent 1)")

    again = run_pipeline(recipe)  # v2 is on disk now: nothing changed, nothing written
    assert not again.export.written and again.export.version == 2


def test_answer_letters_are_balanced_whatever_verify_dropped():
    from schemas.answers import with_options

    def item(i: int, answer: str = "C", checker: str = "choice", options=("red", "blue", "green", "white")):
        options = list(options)
        question = with_options(f"What is the main colour of the boat {i}?", options)
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
            {
                "role": "assistant",
                "content": [{"type": "text", "text": f"<think>green</think>\n<answer>{answer}</answer>"}],
            },
        ]
        fields = [
            f"q{i}",
            "img",
            question,
            json.dumps(options),
            answer,
            checker,
            "colour",
            "hard",
            "[]",
            "t",
            "direct",
        ]
        return export.Item(*fields, json.dumps(messages), "[]", 10, 10, "boat")

    items = [item(i) for i in range(8)] + [item(9, answer="green", checker="text")]
    out = export.balanced_letters(items)
    assert [o.answer for o in out[:8]] == list("ABCDABCD")  # every one was "C" before
    for o in out[:8]:
        options = json.loads(o.options)
        assert options["ABCD".index(o.answer)] == "green" and sorted(options) == ["blue", "green", "red", "white"]
        assert o.question == with_options(o.question.split("\n")[0], options)
        turns = json.loads(o.messages)
        assert turns[0]["content"][1]["text"] == o.question
        assert extract_answer(turns[1]["content"][0]["text"]) == o.answer
    assert out[8] == items[8]  # a short answer is left as it is
    # rows of two and of four options together: a two-option row's letter goes where four-option rows left a gap
    mixed = [item(i, "B", options=("green", "white")) if i == 0 else item(i) for i in range(6)]
    letters = [o.answer for o in export.balanced_letters(mixed)]
    assert letters == list("ABCDAB")  # A 2, B 2, C 1, D 1; letters by option count apart: A 3, B 1, C 1, D 1


def split_of(question_id, image_id, config):
    return export.image_splits(image_id, [question_id], config)[question_id]


def test_split_by_image_keeps_every_item_of_an_image_in_one_split():
    by_image = export.ExportConfig(test_share=0, rl_share=0.5)
    images = [f"image-{i}" for i in range(40)]
    for image in images:
        assert len(set(export.image_splits(image, [f"{image}/q{q}" for q in range(12)], by_image).values())) == 1
    assert {split_of("q", image, by_image) for image in images} == {"sft", "rl"}
    # an item with no search to show is an RL prompt, unless its image is bound for SFT
    sft_image = next(i for i in images if split_of("q", i, by_image) == "sft")
    rl_image = next(i for i in images if split_of("q", i, by_image) == "rl")
    assert export.image_splits(sft_image, ["q", "p"], by_image, frozenset({"q"})) == {"q": None, "p": "sft"}
    assert export.image_splits(rl_image, ["q", "p"], by_image, frozenset({"q"})) == {"q": "rl", "p": "rl"}


def test_by_item_each_question_type_takes_its_share_of_both_splits():
    """Split in turn question type by type: a type with two items on an image is never all in one split."""
    config = export.ExportConfig(test_share=0, rl_share=0.5, split_by="item")
    for image in (f"image-{i}" for i in range(50)):
        kinds = {f"{kind}{i}": kind for kind in ("colour", "count", "text") for i in range(2)} | {"relpos0": "rel"}
        splits = export.image_splits(image, kinds, config, kinds=kinds)
        for kind in ("colour", "count", "text"):
            assert {splits[f"{kind}{i}"] for i in range(2)} == {"sft", "rl"}, (image, splits)
        assert abs(list(splits.values()).count("rl") - 3.5) < 1


def test_by_item_an_item_without_a_dialogue_takes_the_place_of_an_rl_item():
    config = export.ExportConfig(test_share=0, rl_share=0.5, split_by="item")
    items = [f"q{i}" for i in range(8)]
    plain = export.image_splits("image", items, config)
    sft = [q for q in items if plain[q] == "sft"]
    undialogued = frozenset(sft[:2])
    splits = export.image_splits("image", items, config, undialogued)
    assert all(splits[q] == "rl" for q in undialogued)
    assert list(splits.values()).count("rl") == list(plain.values()).count("rl")  # the shares hold
    assert all(splits[q] == "sft" for q in sft[2:])  # SFT items with a dialogue stay (their reflective picks too)


def test_split_by_item_gives_each_image_its_share_however_few_items_it_has():
    """Two of eight items to RL where half were asked for is what a hash threshold on each item alone can give."""
    for share in (0.25, 0.5, 0.7):
        config = export.ExportConfig(test_share=0, rl_share=share, split_by="item")
        for n in (1, 2, 3, 8, 40):
            for image in ("image-a", "image-b", "image-c"):
                items = [f"{image}/q{q}" for q in range(n)]
                splits = export.image_splits(image, items, config)
                rl = sum(s == "rl" for s in splits.values())
                assert abs(rl - share * n) < 1, (share, n, image, rl)
                assert set(splits.values()) <= {"rl", "sft"}
        # over many one-item images the share holds as well: the offset depends on the image
        alone = [split_of("q", f"image-{i}", config) for i in range(2000)]
        assert abs(alone.count("rl") / len(alone) - share) < 0.04
    config = export.ExportConfig(test_share=0, rl_share=0.5, split_by="item")
    assert export.image_splits("x", ["q1", "q2"], config) == export.image_splits("x", ["q2", "q1"], config)


def test_the_test_split_takes_whole_images_whatever_split_by_and_its_share():
    images = [f"image-{i}" for i in range(4000)]
    for split_by in ("image", "item"):
        config = export.ExportConfig(test_share=0.1, rl_share=0.5, split_by=split_by)
        tested = {image for image in images if split_of(f"{image}/q", image, config) == "test"}
        for image in images[:200]:  # an image's every item is held out, or none of them is
            held_out = set(export.image_splits(image, [f"{image}/q{q}" for q in range(12)], config).values())
            assert (held_out == {"test"}) == (image in tested) and (image in tested or "test" not in held_out)
        assert 0.09 <= len(tested) / len(images) <= 0.11  # the share, within tolerance
        rest = [image for image in images if image not in tested]
        rl = sum(split_of(f"{image}/q", image, config) == "rl" for image in rest)
        assert 0.47 <= rl / len(rest) <= 0.53  # RL takes its share of what is left
        assert export.image_splits(next(iter(tested)), ["q"], config, frozenset({"q"})) == {"q": "test"}
    none = export.ExportConfig(test_share=0)
    assert all(split_of("q", image, none) != "test" for image in images)


def test_a_version_holds_out_whole_images_in_a_test_split_that_loads(demo_version, tmp_path):
    """The demo's database exported again with a fifth of its four photos' hashes held out (the Berlin photo here):
    the test images appear in no training split, and each split with rows loads from the card's configs (the
    harbours' few rows may all land in one training split)."""
    shutil.copy(demo_version.parents[2] / "state.duckdb", tmp_path / "state.duckdb")
    settings = demo_settings()
    recipe = write_recipe(tmp_path, DEMO_IMAGES, **{**settings, "export": {**settings["export"], "test_share": 0.2}})
    version = run_pipeline(load_recipe(recipe)).export.path
    manifest = json.loads((version / "manifest.json").read_text())
    splits = [split for split in ("sft", "rl", "test") if manifest["rows"][split]]
    assert "test" in splits and len(splits) >= 2
    card = (version / "README.md").read_text()
    assert [c["config_name"] for c in yaml.safe_load(card.split("---\n")[1])["configs"]] == splits
    assert "appear in no training split" in card
    loaded = {
        split: load_dataset(str(version), split, split="train", cache_dir=str(tmp_path / "cache")) for split in splits
    }
    images = {split: set(ds["image_id"]) for split, ds in loaded.items()}
    for split, ds in loaded.items():
        assert len(ds) == manifest["rows"][split] > 0
    trained = set().union(*(images[split] for split in splits if split != "test"))
    assert len(images["test"]) == 1 and not images["test"] & trained
    RL_SCHEMA.validate(load(version, "test", decode=False).to_pandas(), lazy=True)
    ids = [set(ds["id"]) for ds in loaded.values()]
    assert sum(map(len, ids)) == len(set().union(*ids))  # no row in two splits
