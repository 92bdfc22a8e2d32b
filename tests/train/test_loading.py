import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import constants
from PIL import Image
from typer.testing import CliRunner

from drim_train import cli, data
from drim_train.data import DataError, SchemaVersionError, load_split, read_manifest, rl_for_training, zoom_spec
from schemas.tool import ZoomSpec
from tests.fake_hub import FakeHub
from tests.test_versions import flip_a_byte
from tests.train.helpers import rewrite_manifest, write_version

HUB_TOKEN = "hf_fakeTokenForTheTrainerTests0123456789"


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


def test_a_prompt_fetched_once_per_rollout_is_decoded_once(demo_version):
    """TRL's batches repeat each prompt once per rollout of its group: they share one decoded original and view."""
    dataset = rl_for_training(load_split(demo_version, "rl"))
    rows = dataset.__getitems__([0, 0, 1, 0])
    assert rows[0]["original_image"] is rows[1]["original_image"] is rows[3]["original_image"]
    assert rows[0]["images"][0] is rows[1]["images"][0]
    assert rows[2]["original_image"] is not rows[0]["original_image"] and rows[2]["id"] != rows[0]["id"]
    assert rows[2]["original_image"].size == (rows[2]["width"], rows[2]["height"])


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


SFT_SHARD = "data/sft/train-00000-of-00001.parquet"
RL_SHARD = "data/rl/train-00000-of-00001.parquet"


def _poison_answers(version):
    """Every answer swapped for a wrong one, written back as a valid Parquet file: only the sha256 tells."""
    table = pq.read_table(version / RL_SHARD)
    rows = [{**row, "answer": "B" if row["answer"] == "A" else "A"} for row in table.to_pylist()]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), version / RL_SHARD)


def _set_format(version, value):
    manifest = json.loads((version / "manifest.json").read_text())
    (version / "manifest.json").write_text(json.dumps({**manifest, "format": value}))


TAMPERING = {
    "flipped byte": (lambda v: flip_a_byte(v / SFT_SHARD), rf"{SFT_SHARD} has sha256 .* but manifest.json says"),
    "poisoned answers": (_poison_answers, rf"{RL_SHARD} has sha256 .* but manifest.json says"),
    "deleted shard": (lambda v: (v / SFT_SHARD).unlink(), rf"{SFT_SHARD} is listed in manifest.json but missing"),
    "extra shard": (
        lambda v: shutil.copy(v / RL_SHARD, v / "data/rl/train-00001-of-00001.parquet"),
        r"data/rl/train-00001-of-00001.parquet is not listed in manifest.json",
    ),
    "newer format": (lambda v: _set_format(v, "drim-shards/3"), r"format drim-shards/3 .* reads drim-shards/2"),
    "foreign format": (lambda v: _set_format(v, None), r"names format None, not 'drim-shards/2'"),
}


@pytest.mark.parametrize("tamper", TAMPERING)
def test_a_tampered_version_is_refused_for_either_split(synthetic, tmp_path, tamper):
    version = tmp_path / "v1"
    shutil.copytree(synthetic, version)
    change, message = TAMPERING[tamper]
    change(version)
    for split in ("sft", "rl"):  # whichever shard was touched, neither split of the version is trusted
        with pytest.raises(DataError, match=f"refusing to train on {version}: .*{message}"):
            load_split(version, split, validate=False)
    with pytest.raises(DataError, match=message):
        read_manifest(version)


@pytest.mark.parametrize("command", ["sft", "grpo", "eval"])
def test_each_command_refuses_a_tampered_version_in_one_line(synthetic, tmp_path, command):
    version = tmp_path / "v1"
    shutil.copytree(synthetic, version)
    _poison_answers(version)
    args = [command, "--data", str(version), "--model", str(tmp_path / "no-model")]
    args += ["--report", str(tmp_path / "r.json")] if command == "eval" else ["--output_dir", str(tmp_path / "o")]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    assert f"{RL_SHARD} has sha256" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "r.json").exists()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The Hub's servers stood in for on 127.0.0.1, with a fresh download cache."""
    with FakeHub(HUB_TOKEN) as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
        yield server


def test_a_hub_version_is_verified_after_download(hub, demo_version, tmp_path):
    from drim_data.release.publish import build_folder, upload

    folder = build_folder(demo_version, tmp_path / "hub", repo_id="me/ds")
    for repo in ("me/ds", "me/poisoned"):
        upload(folder, repo)
    rows = json.loads((demo_version / "manifest.json").read_text())["rows"]
    assert len(load_split("me/ds", "rl", revision="v1", validate=False)) == rows["rl"]

    (rel,) = [p for p in hub.tree("me/poisoned", "v1") if p.startswith("data/rl/")]
    table = pq.read_table(folder / rel)
    poisoned = [{**row, "answer": "poisoned"} for row in table.to_pylist()]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(poisoned, schema=table.schema), sink)
    hub.replace_file("me/poisoned", "v1", rel, sink.getvalue().to_pybytes())
    with pytest.raises(DataError, match=rf"refusing to train on .*: {rel} has sha256 .* but manifest.json says"):
        load_split("me/poisoned", "rl", revision="v1")


def test_training_holds_full_precision_weights_of_a_bf16_checkpoint(tiny_model, synthetic, tmp_path):
    import torch

    from drim_train import sft
    from drim_train.configs import DataModelArguments, DrimSFTConfig
    from drim_train.models import load_model

    half = tmp_path / "bf16"
    load_model(str(tiny_model), dtype="bfloat16").save_pretrained(half)
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_model / name).exists():
            shutil.copy(tiny_model / name, half / name)
    config = DrimSFTConfig(output_dir=str(tmp_path / "out"), max_steps=1, report_to="none")
    trainer = sft.build_trainer(DataModelArguments(data=str(synthetic), model=str(half)), config)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    kept = load_model(str(half), dtype="auto")  # the checkpoint's own dtype, when asked for
    assert {p.dtype for p in kept.parameters()} == {torch.bfloat16}


class _Loaded(Exception):
    """Raised by the spy once a training entry point has asked for its rows: nothing past loading is needed."""


@pytest.mark.parametrize("command", ["sft", "grpo"])
def test_training_reads_no_test_row_and_cannot_ask_for_one(tmp_path, monkeypatch, command):
    from drim_train import grpo, sft
    from drim_train.configs import DataModelArguments, DrimGRPOConfig, DrimSFTConfig
    from tests.train.helpers import parse_recipe

    version = write_version(tmp_path, n_sft=2, n_rl=2, n_test=3)
    test_ids = set(load_split(version, "test", held_out=True)["id"])
    with pytest.raises(DataError, match="the test split is held out from training"):
        load_split(version, "test")
    module, config = {"sft": (sft, DrimSFTConfig), "grpo": (grpo, DrimGRPOConfig)}[command]
    read = []

    def spy(*args, **kwargs):
        read.append(load_split(*args, **kwargs))
        raise _Loaded

    monkeypatch.setattr(module, "load_split", spy)
    args, config = parse_recipe(
        f"{command}-tiny.yaml", (DataModelArguments, config), data=version, model="no-model", output_dir=tmp_path
    )
    with pytest.raises(_Loaded):
        module.build_trainer(args, config)
    (rows,) = read
    assert len(rows) == 2 and not set(rows["id"]) & test_ids


def test_eval_reads_the_test_split_by_default_and_an_old_version_says_it_has_none(tmp_path):
    from trl import TrlParser

    from drim_train.configs import EvalArguments
    from drim_train.evaluate import load_rows
    from tests.train.helpers import RECIPES

    version = write_version(tmp_path / "new", n_sft=2, n_rl=2, n_test=3)
    (args,) = TrlParser((EvalArguments,)).parse_args_and_config(
        ["--config", str(RECIPES / "eval.yaml"), "--data", str(version), "--model", "no-model"]
    )
    assert args.split == "test"
    rows, _ = load_rows(str(version))
    assert [rows[i]["id"] for i in range(len(rows))] == ["q0002", "q0003", "q0004"]  # numbered after the RL rows
    rl, _ = load_rows(str(version), split="rl")
    assert [rl[i]["id"] for i in range(len(rl))] == ["q0000", "q0001"]

    old = write_version(tmp_path / "old", n_sft=2, n_rl=2)  # as drim-shards/1 wrote it: no test split at all
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["shards"] = {rel: info for rel, info in manifest["shards"].items() if "/test/" not in rel}
    del manifest["rows"]["test"]
    shutil.rmtree(old / "data" / "test")
    (old / "manifest.json").write_text(json.dumps({**manifest, "format": "drim-shards/1"}))
    assert len(load_split(old, "rl")) == 2 and len(load_rows(str(old), split="rl")[0]) == 2
    with pytest.raises(DataError, match=r"holds no test rows .* --split rl"):
        load_rows(str(old))
