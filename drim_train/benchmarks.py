"""Published benchmarks in their own schemas, scored the way lmms-eval scores them.

Sources, each read from the Hub at `--data_revision` or from a local copy of its files:

- V* Bench: `lmms-lab/vstar-bench` (split `test`: `image`, `text` with the options inline as "(A) ...", `label`,
  `category`, `question_id`), or the V* folder (`test_questions.jsonl`, same fields, `image` a path under it).
- HR-Bench: `DreamMr/HR-Bench` (config `hrbench_version_split`, split `hrbench_4k` or `hrbench_8k`), or its
  `hr_bench_{4k,8k}.{parquet,tsv}` files: `index`, `question`, `answer`, `A`..`D`, `category` (single / cross),
  `cycle_category` (which rotation of the options the row is), `image` (base64).
- MME-RealWorld(-Lite): `yifanzhang114/MME-RealWorld-Lmms-eval` and `-lite-lmms-eval` (split `train`): `bytes`
  (base64 image), `index`, `question`, `multi-choice options` ("(A) ..."), `answer`, `category`, `l2-category`.

The prompt is drim's (the question and lettered options the model was trained on); the letter is then taken from
the final `<answer>` (or from the last turn's text when it gave none) with lmms-eval's extraction, and scores are
aggregated with lmms-eval's rules. HR-Bench's fallback to a GPT judge for replies naming no option is not run:
such replies score 0 and are counted as `unmatched`. A rollout cut while still zooming gave no reply and scores 0.
"""

from __future__ import annotations

import base64
import io
import json
import re
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, Features, Value, load_dataset
from PIL import Image

from drim_train.rewards import final_answer, split_think, text_of
from schemas.answers import LETTERS, with_options
from schemas.rows import message
from schemas.tool import SYSTEM_PROMPT, global_view


@dataclass(frozen=True)
class Source:
    kind: str  # vstar | hrbench | mme_realworld
    repo: str
    config: str | None
    split: str


SOURCES = {
    "vstar": Source("vstar", "lmms-lab/vstar-bench", None, "test"),
    "hrbench_4k": Source("hrbench", "DreamMr/HR-Bench", "hrbench_version_split", "hrbench_4k"),
    "hrbench_8k": Source("hrbench", "DreamMr/HR-Bench", "hrbench_version_split", "hrbench_8k"),
    "mme_realworld": Source("mme_realworld", "yifanzhang114/MME-RealWorld-Lmms-eval", None, "train"),
    "mme_realworld_lite": Source("mme_realworld", "yifanzhang114/MME-RealWorld-lite-lmms-eval", None, "train"),
}
_COLUMNS = {  # the columns that tell a local table's benchmark
    "vstar": {"text", "label", "category", "question_id"},
    "hrbench": {"index", "question", "answer", "A", "B", "cycle_category", "image"},
    "mme_realworld": {"bytes", "index", "question", "multi-choice options", "answer", "category", "l2-category"},
}
VSTAR_QUESTIONS = "test_questions.jsonl"


def _decode_base64(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def eval_row(fields: dict, question: str, options: list[str], image: Image.Image) -> dict:
    """An evaluation row: the answer columns plus the prompt drim trains on, its global view and the original."""
    prompt = [message("system", SYSTEM_PROMPT), message("user", with_options(question, options), images=1)]
    return {**fields, "options": options, "prompt": prompt, "images": [global_view(image)], "original_image": image}


# --- one reader per published schema: a raw record to (answer columns, question, options, image) ---

_VSTAR_OPTION = re.compile(r"\([A-D]\)\s*([^()]+?)(?=\s*\([A-D]\)|$)")  # lmms_eval/tasks/vstar_bench/utils.py
_VSTAR_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def _vstar(record: dict, root: Path | None) -> tuple[dict, str, list[str], Image.Image]:
    text = record["text"].replace(_VSTAR_INSTRUCTION, "").strip()
    options = [o.strip() for o in _VSTAR_OPTION.findall(text)]
    image = record["image"]
    image = Image.open(root / image) if isinstance(image, str) else image
    category = str(record["category"])
    fields = {"id": str(record["question_id"]), "question_type": category, "answer": record["label"].strip().upper()}
    return {**fields, "meta": {"category": category}}, text.split("(A)")[0].strip(), options, image.convert("RGB")


def _hrbench(record: dict, root: Path | None) -> tuple[dict, str, list[str], Image.Image]:
    choices = {c: str(record[c]) for c in LETTERS if record.get(c) not in (None, "")}  # hrbench_doc_to_options
    meta = {"category": str(record["category"]), "cycle_category": str(record["cycle_category"]), "choices": choices}
    fields = {"id": str(record["index"]), "question_type": meta["category"], "answer": str(record["answer"]).strip()}
    image = _decode_base64(record["image"])
    return {**fields, "meta": meta}, record["question"].strip(), list(choices.values()), image


def _mme_realworld(record: dict, root: Path | None) -> tuple[dict, str, list[str], Image.Image]:
    options = [re.sub(r"^\s*[(（][A-Z][)）]\s*", "", o) for o in record["multi-choice options"]]
    meta = {"category": str(record["category"]), "l2-category": str(record["l2-category"])}
    fields = {"id": str(record["index"]), "question_type": meta["category"], "answer": str(record["answer"]).strip()}
    return {**fields, "meta": meta}, record["question"], options, _decode_base64(record["bytes"])


_READERS: dict[str, Callable] = {"vstar": _vstar, "hrbench": _hrbench, "mme_realworld": _mme_realworld}


class BenchmarkRows(Sequence):
    """A benchmark's records (Arrow-backed, so an 8K HR-Bench never sits decoded in memory) as evaluation rows,
    each image decoded when its row is indexed."""

    def __init__(self, kind: str, table: Dataset, root: Path | None = None):
        self.kind, self.table, self.root = kind, table, root

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict:
        fields, question, options, image = _READERS[self.kind](self.table[index], self.root)
        return eval_row({**fields, "benchmark": self.kind, "checker": "choice"}, question, options, image)


def _local_table(path: Path) -> tuple[Dataset, Path]:
    if path.is_dir() and (path / VSTAR_QUESTIONS).exists():
        return load_dataset("json", data_files=str(path / VSTAR_QUESTIONS), split="train"), path
    files = sorted(path.glob("**/*.parquet")) + sorted(path.glob("**/*.tsv")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path} holds no .parquet, .tsv or {VSTAR_QUESTIONS} file")
    kinds = {f.suffix for f in files}
    if kinds == {".parquet"}:
        return load_dataset("parquet", data_files=[str(f) for f in files], split="train"), path.parent
    if kinds == {".tsv"}:  # read as text: an option "None" or "NA" is an option, not a missing value
        with files[0].open() as f:
            text = Features({column: Value("string") for column in f.readline().rstrip("\n").split("\t")})
        files = [str(f) for f in files]
        table = load_dataset("csv", data_files=files, sep="\t", keep_default_na=False, features=text, split="train")
        return table, path.parent
    if kinds == {".jsonl"}:
        return load_dataset("json", data_files=[str(f) for f in files], split="train"), path.parent
    raise ValueError(f"{path}: cannot read {sorted(kinds)} files as one benchmark")


def detect(columns: Sequence[str]) -> str | None:
    """The benchmark whose published columns a table has, or None."""
    found = [kind for kind, needed in _COLUMNS.items() if needed <= set(columns)]
    return found[0] if found else None


def hub_source(data: str, benchmark: str | None) -> Source | None:
    """The Hub source `data` names (HR-Bench is 4K unless `benchmark` says 8K), or None."""
    if benchmark is not None and benchmark not in SOURCES:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose among {sorted(SOURCES)}")
    if benchmark is not None:
        return SOURCES[benchmark] if SOURCES[benchmark].repo == data else None
    return next((s for s in SOURCES.values() if s.repo == data), None)


def _table(data: str, benchmark: str | None, revision: str | None) -> tuple[str, Dataset, Path | None] | None:
    path = Path(data)
    snapshot = benchmark is not None and (path / "README.md").exists() and not (path / VSTAR_QUESTIONS).exists()
    if path.exists() and not snapshot:
        if (path / "manifest.json").exists() or not (path.is_dir() or path.suffix in (".parquet", ".tsv", ".jsonl")):
            return None  # a drim version, or no benchmark file
        if (path / "README.md").exists() and not (path / VSTAR_QUESTIONS).exists():
            raise ValueError(
                f"{data} looks like a copy of a Hub repository: name it with --benchmark {sorted(SOURCES)}"
            )
        if path.suffix == ".jsonl" and not _COLUMNS["vstar"] <= set(json.loads(path.open().readline())):
            return None  # drim's own V*-style JSONL
        table, root = _local_table(path)
        kind = SOURCES[benchmark].kind if benchmark else detect(table.column_names)
        if kind is None:
            raise ValueError(f"{data} has none of the published schemas (columns {table.column_names})")
        return kind, table, root
    source = SOURCES[benchmark] if snapshot else hub_source(data, benchmark)
    if source is None:
        return None
    if not snapshot and revision is None:
        warnings.warn(f"{source.repo} is read at its newest revision; pin one with --data_revision", stacklevel=3)
    # the Hub repository, or a local folder holding its files (README.md with the configs, the data files)
    table = load_dataset(data, source.config, split=source.split, revision=None if snapshot else revision)
    return source.kind, table, None


def load_benchmark(
    data: str, benchmark: str | None = None, revision: str | None = None, limit: int | None = None
) -> BenchmarkRows | None:
    """The rows of a published benchmark at `data`: a Hub id, a copy of the Hub repository's files (with
    `--benchmark`), the V* folder, or a .parquet/.tsv/.jsonl file or folder of them; None when `data` is none."""
    found = _table(data, benchmark, revision)
    if found is None:
        return None
    kind, table, root = found
    if limit is not None and limit < len(table):
        table = table.select(range(limit))
    return BenchmarkRows(kind, table, root)


# --- answer extraction, as lmms-eval does it ---


def vstar_letter(response: str) -> str | None:
    """lmms_eval/tasks/vstar_bench/utils.py: extract_answer_letter."""
    response = response.strip().upper()
    patterns = [
        r"^([A-D])\s*[\.)\]]*",
        r"(?:THE\s+)?(?:ANSWER|CHOICE|OPTION)(?:\s+IS)?[\s:]+([A-D])",
        r"\(([A-D])\)",
        r"([A-D])\s*(?:\.|\)|])",
        r"(?:^|\s)([A-D])(?:\s|$)",
    ]
    for pattern in patterns:
        match = re.search(pattern, response, re.IGNORECASE)
        if match:
            return match.group(1).upper()
    letters = re.findall(r"[A-D]", response)
    if len(letters) == 1:
        return letters[0]
    return response[0] if response and response[0] in "ABCD" else None


_HR_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)


def hrbench_letter(answer: str, choices: dict[str, str]) -> str | None:
    """lmms_eval/tasks/hrbench/hrbench_evals.py: HRBenchEval.can_infer (option letter, then option text); None
    where lmms-eval would ask its GPT judge."""
    if "Failed to obtain answer via API" not in answer:
        if any(refusal in answer for refusal in _HR_REFUSALS):
            return "Z"
        spaced = answer
        for c in ".()[],:;!*#{}":
            spaced = spaced.replace(c, " ")
        splits = [x.strip() for x in spaced.split()]
        named = [c for c in choices if c in splits]
        if len(named) == 1:
            return named[0]
        if not named and "Z" in splits:
            return "Z"
    lowered = answer.lower()
    candidates = [k for k, v in choices.items() if str(v).lower() in lowered]
    return candidates[0] if len(candidates) == 1 else None


_MME_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is",
    "The correct option is",
    "Best answer:",
    "Best option:",
)


def mme_letter(s: str, choices: Sequence[str] = ("(A)", "(B)", "(C)", "(D)", "(E)")) -> str:
    """lmms_eval/tasks/mme_realworld/utils.py: extract_characters_regex (an empty reply reads as "A", as there)."""
    s = s.strip()
    for prefix in _MME_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCDE]", s):
        return ""
    match = re.search(r"[ABCDE]", s)
    if match is None:
        return next((choice[1] for choice in choices if s.lower() in choice.lower()), "")
    return match[0]


def reply(completion: list[dict]) -> str | None:
    """What the rollout answered: its final `<answer>`, else the last turn's text; None when cut while zooming."""
    answered = final_answer(completion)
    if answered is not None or not completion or completion[-1].get("role") != "assistant":
        return answered
    if completion[-1].get("tool_calls"):
        return None
    return split_think(completion[-1])[1].strip() or text_of(completion[-1].get("content")).strip()


def judge(kind: str, prediction: str | None, answer: str, meta: dict) -> dict:
    """The letter lmms-eval extracts from a reply and whether it scores."""
    if prediction is None:
        return {"extracted": None, "correct": False}
    if kind == "vstar":
        letter = vstar_letter(prediction)
        return {"extracted": letter, "correct": letter == answer.strip().upper()}
    if kind == "hrbench":
        letter = hrbench_letter(prediction.strip(), dict(meta["choices"]))
        return {"extracted": letter, "correct": letter is not None and letter.lower() == answer.lower()}
    if kind == "mme_realworld":
        letter = mme_letter(prediction)
        return {"extracted": letter, "correct": letter.lower() == answer.lower() or answer.lower() in letter.lower()}
    raise ValueError(f"unknown benchmark kind {kind!r}")


# --- aggregation, as lmms-eval does it ---


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def accuracy(samples: Sequence[dict]) -> float:
    """lmms_eval/tasks/vstar_bench/utils.py: vstar_aggregate_results, and MME-RealWorld's micro average."""
    return _mean([float(s["correct"]) for s in samples])


def cycle_average(samples: Sequence[dict]) -> float:
    """lmms_eval/tasks/hrbench/utils.py: hrbench_aggregate_results: the accuracy of each rotation of the options
    (`cycle_category`), averaged over the rotations."""
    by_cycle = defaultdict(list)
    for s in samples:
        by_cycle[s["meta"]["cycle_category"]].append(float(s["correct"]))
    return _mean([_mean(v) for v in by_cycle.values()])


def _mme_groups(meta: dict) -> tuple[str, str, str]:
    """lmms_eval/tasks/mme_realworld/utils.py: the task, subtask and task category a row is counted under."""
    task = "Perception" if "perception" in meta["category"].lower() else "Reasoning"
    category = meta["l2-category"].lower()
    if "attribute" in category:
        category = category.split("/")[0] + "/attribute"
    return task, meta["category"].split("/")[-1], category


def scores(kind: str, samples: Sequence[dict]) -> tuple[float, dict[str, tuple[int, float]]]:
    """The benchmark's score over one pass and, per category, (rows, score)."""
    groups = defaultdict(list)
    for s in samples:
        if kind == "mme_realworld":  # lmms_eval/tasks/mme_realworld/utils.py: mme_realworld_aggregate_results
            task, subtask, category = _mme_groups(s["meta"])
            for key in (task, f"{task}/{subtask}", f"{task}/{subtask}/{category}"):
                groups[key].append(s)
        else:
            groups[s["meta"]["category"]].append(s)
    score = cycle_average if kind == "hrbench" else accuracy
    return score(samples), {k: (len(v), score(v)) for k, v in sorted(groups.items())}


def report(samples: Sequence[dict]) -> dict:
    """The benchmark's score per pass and their mean (Avg@k; k = 1 is the greedy score), overall and per category;
    `unmatched` is the share of replies no option could be read from."""
    kind = samples[0]["benchmark"]
    passes = defaultdict(list)
    for s in samples:
        passes[s.get("pass", 0)].append(s)
    per_pass = [scores(kind, passes[p]) for p in sorted(passes)]
    categories = sorted({c for _, by in per_pass for c in by})
    return {
        "name": kind,
        "k": len(per_pass),
        "score": _mean([score for score, _ in per_pass]),
        "score_per_pass": [score for score, _ in per_pass],
        "by_category": {
            c: {
                "n": max(by[c][0] for _, by in per_pass if c in by),
                "score": _mean([by[c][1] for _, by in per_pass if c in by]),
            }
            for c in categories
        },
        "unmatched": _mean([float(s["extracted"] in (None, "")) for s in samples]),
    }
