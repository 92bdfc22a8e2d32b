"""Fixtures for the trainer's tests: a tiny offline Qwen3-VL, a synthetic version, and the tiny model after SFT.

`demo_version`, a version written by the real pipeline on the demo images, comes from tests/conftest.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # the root conftest has already made the Hub offline

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.train.helpers import drill_version, parse_recipe, write_version  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from drim_train.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> Path:
    """A small synthetic version (one coloured square per image, always at the same place)."""
    return write_version(tmp_path_factory.mktemp("out"), n_sft=24, n_rl=8)


@pytest.fixture(scope="session")
def tool_caller(tiny_model, demo_version, tmp_path_factory) -> Path:
    """The tiny model after the sft-tiny recipe on a drill of the demo's prompts: it calls zoom_in on them.

    (Learning the demo's own trajectories takes the tiny model about a hundred steps; see benchmarks/learnability.py.)
    """
    from drim_train import sft
    from drim_train.configs import DataModelArguments, DrimSFTConfig

    out = tmp_path_factory.mktemp("models") / "sft"
    types = (DataModelArguments, DrimSFTConfig)
    drill = drill_version(demo_version, tmp_path_factory.mktemp("drill"))
    args, config = parse_recipe("sft-tiny.yaml", types, data=drill, model=tiny_model, output_dir=out, max_steps=60)
    sft.main(args, config)
    return out
