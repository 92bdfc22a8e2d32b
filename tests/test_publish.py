"""Publishing: the Hub folder loads with `datasets` and carries a full card; the upload goes through the real
`huggingface_hub` client to a stand-in for the Hub's servers (tests/fake_hub.py), tags v<N>, survives a network
failure with a retry that sends only what is missing, and never writes the token anywhere."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import huggingface_hub.utils._http
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import load_dataset
from huggingface_hub import constants
from PIL import Image
from typer.testing import CliRunner

from drim_data.cli import app
from drim_data.errors import DrimError
from drim_data.release.publish import build_folder, upload
from tests.fake_hub import FakeHub
from tests.test_versions import SOURCES, derive_version

runner = CliRunner()
TOKEN = "hf_fakeTokenThatMustNeverBeWritten0123456789"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The Hub's servers stood in for on 127.0.0.1; the client is configured as HF_ENDPOINT would configure it."""
    with FakeHub(TOKEN) as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the Xet transfer protocol is not stood in for
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


@pytest.fixture
def v1_with_sources(demo_version, tmp_path):
    """The demo version as a recipe with sources would have exported it."""
    changes = {"version": 1, "parent": None, "sources": SOURCES, "license": "cc-by-sa-4.0"}
    return derive_version(demo_version, tmp_path / "out" / "v1", edit=False, changes=changes)[0]


def files_of(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_dry_run_folder_loads_and_its_card_says_what_the_data_is(v1_with_sources, tmp_path):
    folder = tmp_path / "hub"
    result = runner.invoke(
        app, ["publish", str(v1_with_sources), "--repo-id", "me/ds", "--dry-run", "--folder", str(folder)]
    )
    assert result.exit_code == 0, result.output
    assert "dry run" in result.output
    manifest = json.loads((folder / "manifest.json").read_text())
    for split in ("sft", "rl"):
        loaded = load_dataset(str(folder), split, split="train", cache_dir=str(tmp_path / "cache"))
        assert len(loaded) == manifest["rows"][split] > 0
    assert isinstance(loaded[0]["images"][0], Image.Image)

    card = (folder / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["license"] == "cc-by-sa-4.0"
    assert [c["config_name"] for c in header["configs"]] == ["sft", "rl"]
    assert header["configs"][0]["data_files"] == [{"split": "train", "path": "data/sft/*.parquet"}]
    for source in SOURCES:
        assert source["license"] in card and source["name"] in card
    assert "Planet Labs, Inc." in card
    stats = [line for line in card.splitlines() if line.startswith(("| sft |", "| rl |"))]
    assert sum(int(line.split("|")[-2]) for line in stats) == sum(manifest["rows"].values())
    assert 'load_dataset("me/ds", "sft", split="train", revision="v1")' in card
    assert json.loads(card.split("```json\n")[1].split("```")[0]) == manifest["tool"]
    assert "![" in card and Image.open(folder / "assets" / "sample.jpg").format == "JPEG"
    assert "## How it was made" in card and manifest["recipe_hash"][:16] in card


def test_publish_tags_the_version_and_the_tag_loads_exactly_it(hub, v1_with_sources, tmp_path):
    result = runner.invoke(
        app, ["publish", str(v1_with_sources), "--repo-id", "me/ds", "--folder", str(tmp_path / "hub")]
    )
    assert result.exit_code == 0, result.output
    assert "published v1" in result.output
    local = files_of(tmp_path / "hub")
    remote = {p: b.data for p, b in hub.tree("me/ds", "v1").items() if p != ".gitattributes"}
    assert remote == local

    # The real `datasets` client, in a fresh process pointed at the stand-in, reads the tag.
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}
    env |= {"HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": TOKEN}
    code = (
        "import json, sys; from datasets import load_dataset\n"
        "print(json.dumps({s: sorted(load_dataset('me/ds', s, split='train', revision='v1')['id']) for s in "
        "('sft', 'rl')}))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    ids = json.loads(loaded.stdout.strip().splitlines()[-1])
    for split in ("sft", "rl"):
        expected = load_dataset(str(v1_with_sources), split, split="train", cache_dir=str(tmp_path / "cache"))["id"]
        assert ids[split] == sorted(expected)

    again = runner.invoke(
        app, ["publish", str(v1_with_sources), "--repo-id", "me/ds", "--folder", str(tmp_path / "hub")]
    )
    assert again.exit_code == 0 and "already has v1" in again.output

    # The token reached the Hub only in request headers: no written file, uploaded file or output holds it.
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and not [p for p in written if TOKEN.encode() in p.read_bytes()]
    assert not [p for p, b in hub.tree("me/ds", "v1").items() if TOKEN.encode() in b.data]
    assert TOKEN not in result.output + again.output + loaded.stdout + loaded.stderr


def test_a_network_failure_mid_upload_is_clear_and_a_retry_sends_only_what_is_missing(
    hub, v1_with_sources, tmp_path, monkeypatch
):
    folder = build_folder(v1_with_sources, tmp_path / "hub", repo_id="me/ds")
    lfs_objects = {
        hashlib.sha256(data).hexdigest() for p, data in files_of(folder).items() if p.endswith((".parquet", ".jpg"))
    }
    monkeypatch.setattr(huggingface_hub.utils._http.time, "sleep", lambda s: None)  # skip the client's backoff waits
    hub.outage_after_puts = 1  # the link dies once the first file is up, and stays down through the client's retries
    with pytest.raises(DrimError, match="run the same command again"):
        upload(folder, "me/ds")
    assert hub.puts and len(hub.puts) == 1 and not hub.repos["me/ds"].tags
    assert set(hub.tree("me/ds", "main")) == {".gitattributes"}  # nothing half-done reached the branch

    hub.outage_after_puts = None
    first = list(hub.puts)
    result = upload(folder, "me/ds")
    assert sorted(hub.puts[1:]) == sorted(lfs_objects - set(first))  # the file already up was not sent again
    assert result.tag == "v1" and hub.repos["me/ds"].tags["v1"] == hub.repos["me/ds"].branches["main"]
    assert {p: b.data for p, b in hub.tree("me/ds", "v1").items() if p != ".gitattributes"} == files_of(folder)


def test_the_next_version_sends_only_changed_files_and_the_old_tag_keeps_the_old_files(hub, v1_with_sources, tmp_path):
    v1_folder = build_folder(v1_with_sources, tmp_path / "hub1", repo_id="me/ds")
    upload(v1_folder, "me/ds")
    v2, *_ = derive_version(v1_with_sources, tmp_path / "out" / "v2", sft_shards=2)
    v2_folder = build_folder(v2, tmp_path / "hub2", repo_id="me/ds")
    puts_before = len(hub.puts)
    result = upload(v2_folder, "me/ds")

    rl_shard = next(p for p in files_of(v2_folder) if p.startswith("data/rl/"))
    assert rl_shard in result.unchanged and "assets/sample.jpg" in result.unchanged
    assert result.deleted == ["data/sft/train-00000-of-00001.parquet"]
    assert sorted(result.uploaded) == sorted(
        ["README.md", "manifest.json", *[p for p in files_of(v2_folder) if "/sft/" in p]]
    )
    assert len(hub.puts) - puts_before == 2  # the two new sft shards; README and manifest go inline
    last_commit = {path for _, path in hub.repos["me/ds"].log[-1]["operations"]}
    assert last_commit == set(result.uploaded) | set(result.deleted)
    assert {p: b.data for p, b in hub.tree("me/ds", "v1").items() if p != ".gitattributes"} == files_of(v1_folder)
    assert {p: b.data for p, b in hub.tree("me/ds", "v2").items() if p != ".gitattributes"} == files_of(v2_folder)


def test_missing_token_refused_hub_and_unreachable_hub_are_one_clear_line(hub, v1_with_sources, tmp_path, monkeypatch):
    args = ["publish", str(v1_with_sources), "--repo-id", "me/ds", "--folder", str(tmp_path / "hub")]
    monkeypatch.delenv("HF_TOKEN")
    no_token = runner.invoke(app, args)
    assert no_token.exit_code == 2 and "HF_TOKEN" in no_token.output and "Traceback" not in no_token.output

    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "refused the token" in refused.output and "hf_wrong" not in refused.output

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    unreachable = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert unreachable.exit_code == 2 and "Traceback" not in unreachable.output
    assert "failed" in unreachable.output and "run the same command again" in unreachable.output
    assert not hub.repos


def test_an_older_version_is_not_published_over_a_newer_one(hub, v1_with_sources, tmp_path):
    v2, *_ = derive_version(v1_with_sources, tmp_path / "out" / "v2")
    upload(build_folder(v2, tmp_path / "hub2"), "me/ds")
    with pytest.raises(DrimError, match="already has v2; publishing v1 now would move main back"):
        upload(build_folder(v1_with_sources, tmp_path / "hub1"), "me/ds")
    assert set(hub.repos["me/ds"].tags) == {"v2"}


def test_an_empty_split_gets_no_config_and_the_dry_run_says_what_it_built(v1_with_sources, tmp_path):
    """A version whose rl split is empty (rl_share 0, or few items) publishes as an sft-only dataset."""
    version = tmp_path / "empty-rl" / "v1"
    shutil.copytree(v1_with_sources, version)
    manifest = json.loads((version / "manifest.json").read_text())
    (rel,) = [r for r in manifest["shards"] if "/rl/" in r]
    schema = pq.read_schema(version / rel)
    pq.write_table(schema.empty_table(), version / rel)
    manifest["shards"][rel] = {"rows": 0, "sha256": hashlib.sha256((version / rel).read_bytes()).hexdigest()}
    manifest["rows"]["rl"] = 0
    (version / "manifest.json").write_text(json.dumps(manifest))

    folder = tmp_path / "hub"
    result = runner.invoke(app, ["publish", str(version), "--repo-id", "me/ds", "--dry-run", "--folder", str(folder)])
    assert result.exit_code == 0 and "dry run" in result.output and "Traceback" not in result.output, result.output
    card = (folder / "README.md").read_text()
    assert [c["config_name"] for c in yaml.safe_load(card.split("---\n")[1])["configs"]] == ["sft"]
    assert "`rl` is empty in this version, so the card declares no `rl` config." in card
    assert (folder / rel).is_file()  # the manifest's every shard travels, so the download verifies
    sft = load_dataset(str(folder), "sft", split="train", cache_dir=str(tmp_path / "cache"))
    assert len(sft) == manifest["rows"]["sft"] > 0
