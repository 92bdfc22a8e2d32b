"""The exported version: loads with `datasets`, validates against the schemas, and its files match the manifest."""

import hashlib
import json
from pathlib import Path

import pandera.errors
import pytest
import yaml
from datasets import Image as ImageFeature
from datasets import load_dataset
from PIL import Image

from schemas.answers import extract_answer, is_correct
from schemas.rows import RL_SCHEMA, SCHEMA_VERSION, SFT_SCHEMA, count_image_blocks


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
    import pyarrow.parquet as pq

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
