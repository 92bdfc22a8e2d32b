"""The learnability checks of benchmarks/learnability.py, with their thresholds (minutes on CPU: slow)."""

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def test_sft_teaches_well_formed_zoom_calls(tmp_path):
    from benchmarks.learnability import SFT_HIDDEN, demo_version, sft_curve
    from drim_train.tiny_model import build_tiny_model

    wider = build_tiny_model(tmp_path / "tiny", hidden=SFT_HIDDEN)
    curve = sft_curve(demo_version(tmp_path), wider, tmp_path, steps=200, every=40, lr=3e-3)
    assert curve[0] == (0, 0.0)
    assert curve[-1][1] >= 0.9


def test_grpo_reward_rises_on_the_easy_task(tiny_model, tmp_path):
    from benchmarks.learnability import grpo_curve

    rewards = [r["reward"] for r in grpo_curve(tiny_model, tmp_path, sft_steps=30, steps=40)]
    quarter = len(rewards) // 4
    assert sum(rewards[-quarter:]) / quarter > sum(rewards[:quarter]) / quarter
