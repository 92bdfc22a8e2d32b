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


def test_grpo_learns_to_read_what_the_zoom_shows(tmp_path):
    """benchmarks/zoom_learnability.py at lambda 0 (about 10 minutes): at chance after SFT, whose letters ignore the
    colour, and well above it after 40 GRPO steps, zooming on every held-out image."""
    from benchmarks import zoom_learnability as task
    from drim_train.tiny_model import build_tiny_model

    tiny = build_tiny_model(tmp_path / "tiny", hidden=task.HIDDEN)
    version, after_sft = task.sft_stage(tmp_path, tiny, steps=100, lr=5e-3, n_sft=48, n_rl=32, n_test=48)
    curve, after_grpo = task.grpo_run(
        version, tmp_path / "sft", tmp_path, 0.0, steps=40, batch=32, gens=4, lr=1e-3, beta=0.1, rewards=task.REWARDS
    )
    blocks = task.by_tens(curve)
    assert after_sft["accuracy"] <= 0.6
    assert after_grpo["accuracy"] >= 0.8 and after_grpo["calls"] >= 1
    assert blocks[-1]["accuracy"] >= blocks[0]["accuracy"] + 0.2 and min(b["calls"] for b in blocks) >= 0.9
