"""Published benchmarks: miniature copies in their published schemas, built offline, and lmms-eval's scoring on
fixed predictions (the expected numbers are worked out by hand from lmms-eval's rules, cited per case)."""

import base64
import io
import json

import pytest
from datasets import Dataset, Features, Image, Sequence, Value
from PIL import Image as PILImage
from typer.testing import CliRunner

from drim_train.benchmarks import judge, load_benchmark, report
from drim_train.cli import app
from drim_train.evaluate import load_rows, sample
from drim_train.rewards import RedundancyPenalty
from drim_train.rollout import Rollout
from drim_train.zoom_env import ZoomEnv

CHOICES = {"A": "red", "B": "blue", "C": "green", "D": "white"}


def _jpeg(size=(64, 48), colour=(200, 20, 20)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _b64(size=(64, 48)) -> str:
    return base64.b64encode(_jpeg(size)).decode()


def _readme(configs: str) -> str:
    return f"---\nconfigs:\n{configs}---\n"


VSTAR_TEXT = "What is the color of the cup?\n(A) red\n(B) blue\n(C) green\n(D) white\n" + (
    "Answer with the option's letter from the given choices directly."
)


@pytest.fixture
def vstar_folder(tmp_path):
    """craigwu/vstar_bench: a folder per category, an image and its annotation JSON, and test_questions.jsonl."""
    root = tmp_path / "vstar_bench"
    questions = []
    for i, (category, text, label) in enumerate(
        [
            ("direct_attributes", VSTAR_TEXT, "B"),
            (
                "relative_position",
                "Is the cup on the left or right side of the dog?\n(A) left\n(B) right\n"
                "Answer with the option's letter from the given choices directly.",
                "A",
            ),  # fmt: skip
        ]
    ):
        (root / category).mkdir(parents=True)
        (root / category / f"sa_{i}.jpg").write_bytes(_jpeg((120, 90)))
        annotation = {"target_object": ["cup"], "bbox": [[10, 10, 20, 20]], "question": "?", "options": ["x", "y"]}
        (root / category / f"sa_{i}.json").write_text(json.dumps(annotation))
        questions.append(
            {"image": f"{category}/sa_{i}.jpg", "text": text, "category": category, "question_id": i, "label": label}
        )
    (root / "test_questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return root


@pytest.fixture
def vstar_hub(tmp_path):
    """lmms-lab/vstar-bench's files: data/test-*.parquet (image, text, label, question_id, category)."""
    root = tmp_path / "vstar-bench"
    features = Features(
        {
            "image": Image(),
            "text": Value("string"),
            "label": Value("string"),
            "question_id": Value("int64"),
            "category": Value("string"),
        }  # fmt: skip
    )
    rows = {
        "image": [{"bytes": _jpeg(), "path": None}],
        "text": [VSTAR_TEXT],
        "label": ["B"],
        "question_id": [0],
        "category": ["direct_attributes"],
    }
    (root / "data").mkdir(parents=True)
    Dataset.from_dict(rows, features=features).to_parquet(root / "data" / "test-00000-of-00001.parquet")
    (root / "README.md").write_text(
        _readme("- config_name: default\n  data_files:\n  - split: test\n    path: data/test-*\n")
    )
    return root


HR_COLUMNS = ["index", "question", "answer", "category", "cycle_category", "A", "B", "C", "D", "image"]


def _hr_rows(n_cycles=4):
    """Two questions, each asked once per rotation of its options (`cycle_category`)."""
    rows = []
    for q, category in enumerate(["single", "cross"]):
        for c in range(n_cycles):
            letters = "ABCD"
            rotated = {letters[(j + c) % 4]: CHOICES[letters[j]] for j in range(4)}
            rows.append(
                {
                    "index": q * 100 + c,
                    "question": f"Question {q}?",
                    "answer": letters[c % 4],
                    "category": category,
                    "cycle_category": f"cycle{c}",
                    **dict(sorted(rotated.items())),
                    "image": _b64((80, 60)),
                }  # fmt: skip
            )
    return rows


@pytest.fixture
def hrbench_tsv(tmp_path):
    """hr_bench_4k.tsv as VLMEvalKit publishes it: base64 JPEGs in the `image` column."""
    path = tmp_path / "hr_bench_4k.tsv"
    lines = ["\t".join(HR_COLUMNS)]
    lines += ["\t".join(str(row[c]) for c in HR_COLUMNS) for row in _hr_rows()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def hrbench_hub(tmp_path):
    """DreamMr/HR-Bench's files: config hrbench_version_split with splits hrbench_4k and hrbench_8k."""
    root = tmp_path / "HR-Bench"
    root.mkdir()
    for version, cycles in [("4k", 4), ("8k", 2)]:
        Dataset.from_list(_hr_rows(cycles)).to_parquet(root / f"hr_bench_{version}.parquet")
    configs = "- config_name: hrbench_version_split\n  data_files:\n"
    configs += (
        "  - split: hrbench_4k\n    path: hr_bench_4k.parquet\n  - split: hrbench_8k\n    path: hr_bench_8k.parquet\n"
    )
    (root / "README.md").write_text(_readme(configs))
    return root


@pytest.fixture
def mme_hub(tmp_path):
    """yifanzhang114/MME-RealWorld-lite-lmms-eval's files: data/train-*.parquet, base64 images in `bytes`."""
    root = tmp_path / "MME-RealWorld-lite-lmms-eval"
    features = Features(
        {
            "bytes": Value("string"),
            "path": Value("string"),
            "index": Value("int64"),
            "question": Value("string"),
            "multi-choice options": Sequence(Value("string")),
            "answer": Value("string"),
            "category": Value("string"),
            "l2-category": Value("string"),
        }  # fmt: skip
    )
    rows = [
        {"bytes": _b64((90, 70)), "path": "m/1.jpg", "index": 1, "question": "What colour is the car?",
         "multi-choice options": ["(A) red", "(B) blue", "(C) green", "(D) white", "(E) The image does not feature"],
         "answer": "B", "category": "Perception/Monitoring", "l2-category": "vehicle/attribute/color"},
        {"bytes": _b64(), "path": "m/2.jpg", "index": 2, "question": "Will the car turn?",
         "multi-choice options": ["（A） yes", "（B） no"], "answer": "A", "category": "Reasoning/Autonomous_Driving",
         "l2-category": "intention"},
    ]  # fmt: skip
    (root / "data").mkdir(parents=True)
    Dataset.from_list(rows, features=features).to_parquet(root / "data" / "train-00000-of-00001.parquet")
    (root / "README.md").write_text(
        _readme("- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n")
    )
    return root


def _user_text(row) -> str:
    return row["prompt"][1]["content"][1]["text"]


def test_vstar_folder_and_hub_files_give_the_same_rows(vstar_folder, vstar_hub):
    folder = load_benchmark(str(vstar_folder))
    hub = load_benchmark(str(vstar_hub), benchmark="vstar")
    assert len(folder) == 2 and len(hub) == 1
    for row in (folder[0], hub[0]):
        assert row["benchmark"] == "vstar" and row["question_type"] == "direct_attributes" and row["id"] == "0"
        assert row["answer"] == "B" and row["options"] == ["red", "blue", "green", "white"]
        assert _user_text(row) == "What is the color of the cup?\nA. red\nB. blue\nC. green\nD. white\n" + (
            "Answer with the option's letter."
        )
    assert folder[0]["original_image"].size == (120, 90) and hub[0]["original_image"].size == (64, 48)
    assert folder[1]["options"] == ["left", "right"] and folder[1]["answer"] == "A"
    assert len(load_rows(str(vstar_folder / "test_questions.jsonl"))[0]) == 2  # the jsonl alone, images beside it


def test_hrbench_tsv_and_hub_files(hrbench_tsv, hrbench_hub):
    rows = load_benchmark(str(hrbench_tsv))
    assert len(rows) == 8
    row = rows[1]  # question 0, rotated once: B red, C blue, D green, A white
    assert row["benchmark"] == "hrbench" and row["id"] == "1" and row["answer"] == "B"
    assert row["meta"] == {"category": "single", "cycle_category": "cycle1",
                           "choices": {"A": "white", "B": "red", "C": "blue", "D": "green"}}  # fmt: skip
    assert row["options"] == ["white", "red", "blue", "green"] and row["original_image"].size == (80, 60)
    assert len(load_benchmark(str(hrbench_hub), benchmark="hrbench_4k")) == 8
    assert len(load_benchmark(str(hrbench_hub), benchmark="hrbench_8k")) == 4
    assert len(load_benchmark(str(hrbench_hub / "hr_bench_8k.parquet"))) == 4
    with pytest.raises(ValueError, match="--benchmark"):  # 4K and 8K side by side: which one is meant
        load_benchmark(str(hrbench_hub))


def test_mme_realworld_hub_files(mme_hub):
    rows = load_benchmark(str(mme_hub), benchmark="mme_realworld_lite", limit=2)
    first, second = rows[0], rows[1]
    assert first["benchmark"] == "mme_realworld" and first["id"] == "1" and first["answer"] == "B"
    assert first["options"][:2] == ["red", "blue"] and len(first["options"]) == 5
    assert first["meta"] == {"category": "Perception/Monitoring", "l2-category": "vehicle/attribute/color"}
    assert second["options"] == ["yes", "no"] and first["original_image"].size == (90, 70)
    assert len(load_benchmark(str(mme_hub / "data"))) == 2  # the parquet folder, schema read from its columns


def test_unknown_tables_are_refused(tmp_path):
    Dataset.from_dict({"x": [1]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="none of the published schemas"):
        load_benchmark(str(tmp_path / "t.parquet"))


def _scored(kind, cases):
    """Samples as evaluate() writes them: (answer, meta, prediction) judged, with the pass they belong to."""
    return [
        {"benchmark": kind, "meta": meta, "pass": p, **judge(kind, prediction, answer, meta)}
        for answer, meta, prediction, p in cases
    ]


def test_vstar_scoring_follows_lmms_eval():
    da, rp = {"category": "direct_attributes"}, {"category": "relative_position"}
    cases = [
        ("B", da, "B", 0),  # a letter
        ("C", da, "The answer is C", 0),  # "answer is" pattern
        ("A", da, "blue", 0),  # starts with a letter A-D: read as B (lmms-eval's first pattern), wrong
        ("D", rp, "(D) white", 0),  # "(D)"
        ("A", rp, None, 0),  # cut while zooming: no reply
    ]
    samples = _scored("vstar", cases)
    assert [s["extracted"] for s in samples] == ["B", "C", "B", "D", None]
    result = report(samples)
    assert result["score"] == pytest.approx(3 / 5) and result["k"] == 1
    assert result["by_category"] == {
        "direct_attributes": {"n": 3, "score": pytest.approx(2 / 3)},
        "relative_position": {"n": 2, "score": 0.5},
    }
    # Avg@2: a second pass with every reply right scores 1.0; the mean of the passes is reported
    second = _scored("vstar", [(a, m, a, 1) for a, m, _, _ in cases])
    both = report(samples + second)
    assert both["k"] == 2 and both["score_per_pass"] == [pytest.approx(0.6), 1.0]
    assert both["score"] == pytest.approx(0.8)
    assert both["by_category"]["direct_attributes"] == {"n": 3, "score": pytest.approx((2 / 3 + 1) / 2)}


def test_hrbench_cycle_averaging_follows_lmms_eval():
    def meta(category, cycle):
        return {"category": category, "cycle_category": cycle, "choices": CHOICES}

    cases = [
        ("A", meta("single", "c0"), "A", 0),
        ("B", meta("single", "c1"), "The answer is (B).", 0),
        ("C", meta("single", "c2"), "A or B", 0),  # two letters, no option text: lmms-eval's GPT judge; here 0
        ("D", meta("single", "c3"), "white, clearly", 0),  # the option's text
        ("B", meta("cross", "c0"), "B. blue", 0),
        ("C", meta("cross", "c1"), "green", 0),
        ("A", meta("cross", "c2"), "Cannot determine the answer", 0),  # a refusal reads as Z
        ("A", meta("cross", "c3"), "B", 0),  # one rotation answered wrongly
        ("D", meta("single", "c0"), "D", 0),  # a third question, in the first rotation only
    ]
    samples = _scored("hrbench", cases)
    assert [s["extracted"] for s in samples] == ["A", "B", None, "D", "B", "C", "Z", "B", "D"]
    result = report(samples)
    # per rotation: c0 3/3, c1 2/2, c2 0/2, c3 1/2; averaged over rotations, not over the 9 rows (6/9)
    assert result["score"] == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert result["by_category"] == {
        "cross": {"n": 4, "score": pytest.approx((1 + 1 + 0 + 0) / 4)},
        "single": {"n": 5, "score": pytest.approx((1 + 1 + 0 + 1) / 4)},
    }
    assert result["unmatched"] == pytest.approx(1 / 9)


def test_mme_realworld_scoring_follows_lmms_eval():
    def meta(category, l2):
        return {"category": category, "l2-category": l2}

    cases = [
        ("B", meta("Perception/Monitoring", "vehicle/attribute/color"), "B", 0),
        ("C", meta("Perception/Monitoring", "vehicle/counting"), "The best answer is (C)", 0),
        ("A", meta("Perception/Remote Sensing", "position"), "", 0),  # an empty reply reads as A in lmms-eval
        ("D", meta("Reasoning/Autonomous_Driving", "intention"), "Based on the image, D", 0),  # first capital: B
        ("E", meta("Reasoning/Autonomous_Driving", "intention"), "e", 0),  # lower case: matched against "(e)"
        ("A", meta("Reasoning/Monitoring", "person/attribute/gender"),
         "there is no way to tell from this picture what it is really", 0),  # over 10 words, no capital: ""
    ]  # fmt: skip
    samples = _scored("mme_realworld", cases)
    assert [s["extracted"] for s in samples] == ["B", "C", "A", "B", "E", ""]
    result = report(samples)
    assert result["score"] == pytest.approx(4 / 6)
    by = {k: v["score"] for k, v in result["by_category"].items()}
    assert by["Perception"] == 1.0 and by["Reasoning"] == pytest.approx(1 / 3)
    assert by["Perception/Monitoring"] == 1.0 and by["Perception/Remote Sensing"] == 1.0
    assert by["Perception/Monitoring/vehicle/attribute"] == 1.0  # attribute categories merge: vehicle/attribute
    assert by["Reasoning/Autonomous_Driving"] == 0.5 and by["Reasoning/Autonomous_Driving/intention"] == 0.5
    assert by["Reasoning/Monitoring/person/attribute"] == 0.0
    assert result["unmatched"] == pytest.approx(1 / 6)


def test_the_reply_is_the_final_answer_or_the_last_text(hrbench_tsv):
    row = load_benchmark(str(hrbench_tsv))[1]  # answer B, which is "red" in this rotation
    env = ZoomEnv()
    env.reset(original_image=row["original_image"])
    penalty = RedundancyPenalty(1.0, 0.5)
    tagged = [{"role": "assistant", "reasoning_content": "t", "content": "<answer>red</answer>"}]
    bare = [{"role": "assistant", "content": "<think>t</think>It is B."}]
    cut = [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "zoom_in"}}]}]
    results = [sample(Rollout(c, env, 5), row, penalty) for c in (tagged, bare, cut)]
    assert [s["prediction"] for s in results] == ["red", "It is B.", None]
    assert [s["correct"] for s in results] == [True, True, False]


def test_eval_command_on_a_miniature_hrbench(tiny_model, hrbench_tsv, tmp_path):
    out = tmp_path / "report.json"
    command = f"eval --data {hrbench_tsv} --model {tiny_model} --report {out} --max_turns 1 --max_new_tokens 8"
    result = CliRunner().invoke(app, [*command.split(), "--samples", "2", "--temperature", "1.0", "--batch_size", "8"])
    assert result.exit_code == 0, result.output
    report_ = json.loads(out.read_text())
    bench = report_["benchmark"]
    assert bench["name"] == "hrbench" and bench["k"] == 2 and len(bench["score_per_pass"]) == 2
    assert set(bench["by_category"]) == {"single", "cross"} and bench["by_category"]["single"]["n"] == 4
    assert report_["n"] == 16 and report_["protocol"]["samples"] == 2
    assert {"mean", "invalid_rate"} <= set(report_["tool_calls"])
    assert "hrbench score (Avg@2)" in result.output and "  single" in result.output


def test_samples_need_a_temperature(tiny_model, hrbench_tsv, tmp_path):
    command = f"eval --data {hrbench_tsv} --model {tiny_model} --report {tmp_path / 'r.json'} --samples 3"
    result = CliRunner().invoke(app, command.split())
    assert result.exit_code != 0 and "temperature" in str(result.exception)


def test_hub_ids_load_their_config_and_split_at_the_pinned_revision(monkeypatch, hrbench_hub):
    from drim_train import benchmarks

    real, calls = benchmarks.load_dataset, []

    def from_the_copy(path, name=None, split=None, revision=None):  # the Hub repository, served from its files
        calls.append((path, name, split, revision))
        return real(str(hrbench_hub), name, split=split)

    monkeypatch.setattr(benchmarks, "load_dataset", from_the_copy)
    assert len(load_benchmark("DreamMr/HR-Bench", benchmark="hrbench_8k", revision="abc123")) == 4
    with pytest.warns(UserWarning, match="pin one with --data_revision"):
        assert len(load_benchmark("DreamMr/HR-Bench")) == 8
    assert calls == [
        ("DreamMr/HR-Bench", "hrbench_version_split", "hrbench_8k", "abc123"),
        ("DreamMr/HR-Bench", "hrbench_version_split", "hrbench_4k", None),
    ]
    assert load_benchmark("someone/else") is None
