import json

from typer.testing import CliRunner

from drim_train.cli import app
from drim_train.models import load_model
from tests.train.helpers import RECIPES

runner = CliRunner()


def _weights(path):
    return {n: p.detach().clone() for n, p in load_model(str(path)).named_parameters()}


def test_tiny_model_command(tmp_path):
    result = runner.invoke(app, ["tiny-model", str(tmp_path / "tiny")])
    assert result.exit_code == 0, result.output
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "tiny").iterdir()
    }


def _run(command: str):
    """Invoke the CLI with a command line (the temporary paths hold no spaces)."""
    result = runner.invoke(app, command.split())
    assert result.exit_code == 0, result.output
    return result


def test_sft_then_grpo_then_eval_on_the_demo_version(tiny_model, tool_caller, demo_version, tmp_path):
    common = f"--data {demo_version} --disable_tqdm true"
    _run(
        f"sft {RECIPES / 'sft-tiny.yaml'} {common} --model {tiny_model} --output-dir {tmp_path / 'sft'} --max_steps 2"
    )
    before, after = _weights(tiny_model), _weights(tmp_path / "sft")
    assert any(not (before[n] == after[n]).all() for n in before)

    _run(
        f"grpo {RECIPES / 'grpo-tiny.yaml'} {common} --model {tool_caller} --output-dir {tmp_path / 'grpo'} "
        "--max_steps 1 --redundancy_lambda 0.5"
    )
    assert (tmp_path / "grpo" / "model.safetensors").exists()

    report = tmp_path / "report.json"
    evaluation = _run(
        f"eval {RECIPES / 'eval.yaml'} --data {demo_version} --model {tmp_path / 'grpo'} --report {report} "
        "--max_turns 1 --max_new_tokens 40 --limit 4 --split rl"  # the demo holds no test images out
    )
    assert json.loads(report.read_text())["n"] == 4
    assert "accuracy" in evaluation.output and "mean tool calls" in evaluation.output


def test_training_help_lists_trl_and_drim_flags():
    result = runner.invoke(app, ["grpo", "--help"])
    assert result.exit_code == 0
    assert "--redundancy_lambda" in result.output and "--learning_rate" in result.output


def test_unknown_recipe_keys_are_refused(tmp_path, synthetic, tiny_model):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("max_steps: 1\nredundancy_lamda: 2\n")
    result = runner.invoke(app, ["grpo", str(recipe), "--data", str(synthetic), "--model", str(tiny_model)])
    assert result.exit_code != 0
    assert "redundancy_lamda" in str(result.exception) + result.output


def test_sft_resumes_at_the_saved_step(tiny_model, synthetic, tmp_path):
    out = tmp_path / "sft"
    common = (
        f"sft {RECIPES / 'sft-tiny.yaml'} --data {synthetic} --model {tiny_model} --output-dir {out} "
        "--save_strategy steps --save_steps 1 --disable_tqdm true "
    )
    _run(common + "--max_steps 2 --logging_steps 1")
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    # logging only every 3rd step now: a fresh run would log step 3 alone, a resumed one carries steps 1 and 2 on
    _run(common + f"--max_steps 3 --logging_steps 3 --resume_from_checkpoint {out / 'checkpoint-2'}")
    resumed = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert resumed["global_step"] == 3
    assert [h["step"] for h in resumed["log_history"] if "loss" in h] == [1, 2, 3]


def test_the_package_runs_as_a_module():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "drim_train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "sft" in result.stdout and "grpo" in result.stdout


def test_resume_names_a_checkpoint_or_the_newest():
    from types import SimpleNamespace

    from drim_train.configs import resume_point

    said = {
        v: resume_point(SimpleNamespace(resume_from_checkpoint=v)) for v in (None, "false", "true", "last", "ck/3")
    }
    assert said == {None: None, "false": None, "true": True, "last": True, "ck/3": "ck/3"}


def test_lora_sft_then_grpo_train_adapters_and_save_plain_checkpoints(tiny_model, tool_caller, demo_version, tmp_path):
    from drim_train import sft
    from drim_train.configs import DataModelArguments, DrimSFTConfig
    from tests.train.helpers import parse_recipe

    lora = "--use_peft true --lora_r 4 --lora_alpha 8"
    args, config = parse_recipe(
        "sft-tiny.yaml", (DataModelArguments, DrimSFTConfig), data=demo_version, model=tiny_model, output_dir=tmp_path
    )
    args.use_peft, args.lora_r = True, 4
    trainer = sft.build_trainer(args, config)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # only the adapters learn
    assert any("language_model" in n and "q_proj" in n for n in trainable)
    assert not any("visual" in n for n in trainable)  # the vision tower's fused qkv is no target

    common = f"--data {demo_version} --disable_tqdm true {lora}"
    _run(
        f"sft {RECIPES / 'sft-tiny.yaml'} {common} --model {tiny_model} --output-dir {tmp_path / 'sft'} --max_steps 2"
    )
    before, after = _weights(tiny_model), _weights(tmp_path / "sft")  # a plain checkpoint: adapters merged in
    assert set(before) == set(after) and any(not (before[n] == after[n]).all() for n in before)
    changed = {n for n in before if not (before[n] == after[n]).all()}
    assert changed and all("language_model" in n and "proj" in n for n in changed)
    _run(
        f"grpo {RECIPES / 'grpo-tiny.yaml'} {common} --model {tool_caller} --output-dir {tmp_path / 'grpo'} "
        "--max_steps 1"
    )
    assert set(_weights(tmp_path / "grpo")) == set(before)
