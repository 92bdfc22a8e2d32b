"""Evaluation: the training tool loop without training, one fixed protocol, a JSON report and a short table.

Reads a published benchmark (V*, HR-Bench 4K/8K, MME-RealWorld(-Lite): `drim_train/benchmarks.py`, scored as
lmms-eval scores it), a version folder's held-out `test` split (or its `rl` split), or a V*-style JSONL file with
one question per line: `{"image": "relative/or/absolute.jpg", "question": "...", "options": ["...", ...],
"answer": "B", "question_type": "...", "id": "..."}`; `answer` may be the letter or the option's text, `options`
may be empty for short-answer questions, and `category` is read when `question_type` is absent (as in V* Bench).
Defaults: greedy decoding, at most 5 zoom rounds, 256 new tokens per turn; `samples` k > 1 with a temperature
reports Avg@k, the mean of k sampled passes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import torch
from PIL import Image

from drim_train import benchmarks
from drim_train.configs import EvalArguments
from drim_train.data import DataError, load_split, resolve, rl_for_training, verified, zoom_spec
from drim_train.models import load_model, load_processor, model_family
from drim_train.rewards import RedundancyPenalty, answer_correct, final_answer, well_formed, well_formed_call
from drim_train.rollout import Rollout, rollout
from drim_train.zoom_env import env_factory
from schemas.answers import LETTERS
from schemas.tool import ZOOM, ZoomSpec, iou


def _mean(values: Iterable[float | bool]) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else 0.0


def _jsonl_record(record: dict, line: int) -> dict:
    """Check one JSONL record and put its answer in the row form (a letter when there are options)."""
    options = [str(o) for o in record.get("options") or []]
    answer = str(record["answer"]).strip()
    if options and answer not in LETTERS[: len(options)]:
        if answer not in options:
            raise ValueError(f"line {line}: answer {answer!r} is neither an option letter nor an option")
        answer = LETTERS[options.index(answer)]
    return {
        "id": str(record.get("id", record.get("question_id", line))),
        "question_type": str(record.get("question_type") or record.get("category") or "all"),
        "answer": answer,
        "checker": "choice" if options else "text",
        "options": options,
        "image": record["image"],
        "question": record["question"],
    }


class JsonlRows(Sequence):
    """V*-style questions as evaluation rows; each image (path relative to the file) is decoded when its row is."""

    def __init__(self, path: Path):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        self.root = path.parent
        self.records = [_jsonl_record(json.loads(line), i + 1) for i, line in enumerate(lines)]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = dict(self.records[index])
        image = Image.open(self.root / record.pop("image")).convert("RGB")
        return benchmarks.eval_row(record, record.pop("question"), record.pop("options"), image)


def load_rows(
    data: str,
    revision: str | None = None,
    limit: int | None = None,
    benchmark: str | None = None,
    split: Literal["test", "rl"] = "test",
) -> tuple[Sequence[dict], ZoomSpec]:
    """Evaluation rows (`prompt`, `images` = [global view], `original_image`, answer columns), decoded one by one
    when indexed, and the zoom spec to evaluate with; a version folder gives its `split`, by default the held-out
    test images, which no training split shows."""
    published = benchmarks.load_benchmark(data, benchmark, revision, limit)
    if published is not None:
        return published, ZOOM
    if data.endswith(".jsonl"):
        rows, spec = JsonlRows(Path(data)), ZOOM
    else:
        version = resolve(data, revision)
        manifest = verified(version)
        if split == "test" and manifest.rows["test"] == 0:
            raise DataError(
                f"{version} holds no test rows (exported with export.test_share 0, or before test splits existed): "
                "there are no held-out images to score; --split rl runs the loop on prompts GRPO trains on"
            )
        spec = zoom_spec(manifest.fields)
        rows = rl_for_training(load_split(version, split, held_out=True))
    if limit is not None and limit < len(rows):
        if isinstance(rows, JsonlRows):
            rows.records = rows.records[:limit]  # still decoded row by row
        else:
            rows = rows.select(range(limit))
    return rows, spec


def _pairwise_ious(boxes: list[list[float]]) -> list[float]:
    return [iou(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]]


def sample(r: Rollout, row: dict, penalty: RedundancyPenalty) -> dict:
    """What one rollout did, as the report lists it."""
    predicted = final_answer(r.completion)
    judged = {}
    if "benchmark" in row:  # scored as lmms-eval scores the benchmark
        prediction = benchmarks.reply(r.completion)
        judged = {"benchmark": row["benchmark"], "meta": row["meta"], "prediction": prediction}
        judged |= benchmarks.judge(row["benchmark"], prediction, row["answer"], row["meta"])
    correct = judged.get("correct", answer_correct(predicted, row["answer"], row["checker"], row.get("options")))
    boxes = r.env.boxes_norm
    return {
        "id": row["id"],
        "question_type": row["question_type"],
        "answer": row["answer"],
        "predicted": predicted,
        "correct": correct,
        "calls": r.env.calls,
        "valid_calls": len(boxes),
        "invalid_calls": r.env.invalid_calls,
        "boxes_px": [list(b) for b in r.env.boxes_px],
        "boxes_norm": boxes,
        "redundancy": 0.0 if correct else penalty.penalty(boxes),
        "max_iou": max(_pairwise_ious(boxes), default=None),
        "well_formed": well_formed(r.completion),
        "first_turn_call": bool(r.completion) and well_formed_call(r.completion[0]),
        "cut": r.cut,
        "generated_tokens": r.generated_tokens,
        **judged,
    }


def aggregate(samples: list[dict], penalty: RedundancyPenalty) -> dict:
    """Accuracy overall and per question type, tool use, redundancy and validity statistics."""
    by_type = defaultdict(list)
    for s in samples:
        by_type[s["question_type"]].append(s["correct"])
    calls = sum(s["calls"] for s in samples)
    multi = [s for s in samples if s["valid_calls"] > 1]
    ious = [v for s in samples for v in _pairwise_ious(s["boxes_norm"])]
    n = len(samples)
    return {
        "n": n,
        "accuracy": _mean(s["correct"] for s in samples),
        "by_question_type": {t: {"n": len(v), "accuracy": _mean(v)} for t, v in sorted(by_type.items())},
        "tool_calls": {
            "mean": calls / n,
            "mean_valid": _mean(s["valid_calls"] for s in samples),
            "invalid_rate": sum(s["invalid_calls"] for s in samples) / calls if calls else 0.0,
            "first_turn_call_rate": _mean(s["first_turn_call"] for s in samples),
        },
        "format_rate": _mean(s["well_formed"] for s in samples),
        "over_turn_rate": _mean(s["cut"] for s in samples),
        "redundancy": {
            "lambda": penalty.lam,
            "epsilon": penalty.eps,
            "mean_penalty": _mean(s["redundancy"] for s in samples),
            "penalised_share": _mean(s["redundancy"] < 0 for s in samples),
            "multi_zoom_share": len(multi) / n,
            "mean_pairwise_iou": _mean(ious) if ious else None,
            "mean_max_iou": _mean(s["max_iou"] for s in multi) if multi else None,
        },
        "mean_generated_tokens": _mean(s["generated_tokens"] for s in samples),
        **({"benchmark": benchmarks.report(samples)} if samples and "benchmark" in samples[0] else {}),
        "samples": samples,
    }


def summarize(rollouts: list[Rollout], rows: list[dict], penalty: RedundancyPenalty) -> dict:
    return aggregate([sample(r, row, penalty) for r, row in zip(rollouts, rows, strict=True)], penalty)


def evaluate(args: EvalArguments) -> dict:
    """Roll out every row with its own zoom environment and write the report to `args.report`."""
    torch.manual_seed(args.seed)
    if args.samples > 1 and args.temperature <= 0:
        raise ValueError("--samples k > 1 averages sampled passes: set --temperature above 0")
    rows, spec = load_rows(args.data, args.data_revision, args.limit, args.benchmark, args.split)
    if not rows:
        raise ValueError(f"{args.data} has no rows to evaluate")
    processor = load_processor(args.model, args.model_revision)
    model = load_model(args.model, args.model_revision, args.dtype)
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    penalty = RedundancyPenalty(args.redundancy_lambda, args.redundancy_epsilon)
    make_env = env_factory(model_family(args.model, args.model_revision).frame(processor), spec, args.max_turns)
    samples = []
    for start in range(0, len(rows), args.batch_size):  # rows are decoded batch by batch, never all at once
        batch = [rows[i] for i in range(start, min(start + args.batch_size, len(rows)))]
        for k in range(args.samples):
            envs = [make_env() for _ in batch]
            rollouts = rollout(model, processor, batch, envs, args.max_turns, args.max_new_tokens, args.temperature)
            samples += [{**sample(r, row, penalty), "pass": k} for r, row in zip(rollouts, batch, strict=True)]
    report = {
        "model": args.model,
        "data": args.data,
        "split": args.split,
        "protocol": {
            "max_turns": args.max_turns,
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "samples": args.samples,
            "seed": args.seed,
            "data_revision": args.data_revision,
        },
        **aggregate(samples, penalty),
    }
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    return report


def table(report: dict) -> str:
    """A short plain-text summary of a report."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    tools, red = report["tool_calls"], report["redundancy"]
    pairwise = red["mean_pairwise_iou"]
    bench = report.get("benchmark")
    scored = []
    if bench:
        at = "" if bench["k"] == 1 else f" (Avg@{bench['k']})"
        scored = [
            f"{bench['name'] + ' score' + at:<28}{pct(bench['score'])}",
            *(f"{'  ' + c:<28}{pct(v['score'])} of {v['n']}" for c, v in bench["by_category"].items()),
            f"{'  no option read':<28}{pct(bench['unmatched'])}",
        ]
    lines = [
        *scored,
        f"{'rows':<28}{report['n']}",
        f"{'accuracy':<28}{pct(report['accuracy'])}",
        *(f"{'  ' + t:<28}{pct(v['accuracy'])} of {v['n']}" for t, v in report["by_question_type"].items()),
        f"{'mean tool calls':<28}{tools['mean']:.2f} ({tools['mean_valid']:.2f} valid)",
        f"{'invalid-call rate':<28}{pct(tools['invalid_rate'])}",
        f"{'well-formed trajectories':<28}{pct(report['format_rate'])}",
        f"{'cut by the turn limit':<28}{pct(report['over_turn_rate'])}",
        f"{'redundancy penalty (mean)':<28}{red['mean_penalty']:.4f} (λ={red['lambda']:g}, ε={red['epsilon']:g})",
        f"{'penalised trajectories':<28}{pct(red['penalised_share'])}",
        f"{'mean pairwise IoU':<28}{'-' if pairwise is None else f'{pairwise:.3f}'}",
    ]
    return "\n".join(lines)
