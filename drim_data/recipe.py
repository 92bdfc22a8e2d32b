"""Recipes: flat YAML mapped one to one onto frozen dataclasses; unknown, repeated, ill-typed or out-of-range keys
are refused by name, with the file. Every numeric setting's range is declared once, in `RANGES`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import yaml

from drim_data.errors import DrimError
from schemas.tool import GLOBAL_VIEW_PIXELS


class RecipeError(DrimError):
    """A recipe that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class AnnotationSource:
    format: Literal["coco", "yolo", "voc"]
    path: Path  # COCO: one JSON file; YOLO / VOC: a folder of per-image files
    classes: list[str] = field(default_factory=list)  # YOLO class names by index (else classes.txt in the folder)
    # classes whose every visible instance is boxed (counting questions need that); COCO files may also say so per
    # image with `complete_categories`
    complete: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetSource:
    """A dataset with an image column, read through `datasets`: each row is one image."""

    path: str  # a Hub dataset id (org/name), a local Parquet file or folder, or a folder written by save_to_disk
    revision: str | None = None  # Hub ids: the commit, tag or branch read (a commit keeps the images fixed)
    split: str = "train"
    image_column: str = "image"  # a datasets Image feature (or bytes); stored rows are read with decode=False
    id_column: str | None = None  # a column naming rows uniquely (a file name, an id); else rows go by number
    # per-row boxes in pixels, [x, y, width, height] as COCO has them: a list of {bbox, category (or label),
    # attributes} or the Hub's object-detection form {bbox: [...], category: [...]}; class ids name a ClassLabel
    annotations_column: str | None = None
    complete: list[str] = field(default_factory=list)  # classes whose every visible instance each row boxes


@dataclass(frozen=True)
class IngestConfig:
    # exactly one input: a folder of images, a local path or any fsspec URL (s3://, gs://, hf://, file://...) ...
    images: str | None = None
    dataset: DatasetSource | None = None  # ... or a dataset with an image column
    embed: bool = False  # also store each image's bytes in the database (self-contained); else only its reference
    annotations: list[AnnotationSource] = field(default_factory=list)  # matched by path under `images`, or row id
    max_pixels: int = 200_000_000  # larger images are refused as decompression bombs
    extensions: list[str] = field(default_factory=lambda: [".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"])


@dataclass(frozen=True)
class ViewConfig:
    """The model's global view, declared once: mine, verify, generate and export all read it."""

    max_pixels: int = GLOBAL_VIEW_PIXELS  # the whole image is downscaled to this many pixels
    min_resolvable_px: float = 24.0  # a target whose shorter side is at least this in that view needs no zoom; 0: keep


@dataclass(frozen=True)
class MineConfig:
    # where candidates come from; a proposal overlapping an annotation box is a duplicate of it
    sources: list[Literal["annotations", "proposals"]] = field(default_factory=lambda: ["annotations", "proposals"])
    proposals_on_annotated: bool = False  # also propose on images that have annotation boxes
    min_area_frac: float = 0.00002
    max_area_frac: float = 0.01  # the point is small objects
    min_side_px: int = 8
    border_px: int = 8  # boxes touching the image edge are likely cut off
    unique_radius: int = 40  # on the 0..1000 grid, for mine, ground and verify: see candidates.confusable; 0: no check
    top_k: int = 50  # proposals per image
    proposal_min_side_px: int = 8  # proposals look for objects this wide and up, on a view where they span 3+ px
    proposal_max_side: int = 2048  # ... and on a view no wider or taller than this
    workers: int = 0  # processes decoding, proposing and measuring (one database writer); 0: one per core, if busy


QuestionType = Literal["colour", "count", "relative_position", "compare_size", "text", "recognition"]


@dataclass(frozen=True)
class GenerateConfig:
    question_types: list[QuestionType] = field(default_factory=lambda: list(get_args(QuestionType)))
    per_image: int = 12  # at most this many questions of each type per image
    short_answer_share: float = 0.3  # the rest are multiple choice
    min_colour_share: float = 0.6  # a colour is asked only when this share of the object's own pixels carry it
    min_colour_side_px: int = 12  # ... and only of objects at least this wide and tall at full resolution
    # ... and only of objects whose labeller recorded a colour (attributes.colour): a window or a carved panel has
    # no colour anyone would name, a hull or a bag has
    colour_labelled_only: bool = True
    # referents and relations need clear margins: this share of the image's side between the target and the next
    # instance ("the leftmost"), between two objects ("left of"), and from a count's area boundary; 0.02 of a
    # 1M-pixel view is about 20 px, a gap the eye sees without measuring
    position_margin: float = 0.02
    size_ratio: float = 1.5  # "the largest" is at least this many times the area of the next largest
    length_ratio: float = 1.5  # "longer" is at least this many times the other's length: a box drawn by hand on a
    # blurred 15 px hull is good to a pixel or two at each end
    # classes told apart only by size ([[ship, boat]]): a description of one must also pick its target out from
    # instances of the others whose length is within `length_ratio` of the target's, which a viewer could take for it
    look_alike: list[list[str]] = field(default_factory=list)
    nearest_ratio: float = 0.6  # "the X nearest the Y" is at most this share of the next X's distance to Y
    partners_per_target: int = 4  # relative-position questions per target, each against another named object
    min_count: int = 2  # counts are asked between these numbers of instances
    max_count: int = 9
    # OCR must read the labeller's text this closely (similarity 0..1): it drops and swaps letters of small text
    min_text_agreement: float = 0.7
    max_text_words: int = 4  # a longer text is asked about by its first and last words, which an answer can match
    seed: int = 0


@dataclass(frozen=True)
class VerifyConfig:
    """Verify's own settings; the uniqueness of a referent is `mine.unique_radius`, shared by mine, ground and
    verify."""


@dataclass(frozen=True)
class TrajectoryConfig:
    reflective_share: float = 0.3  # share of SFT items that first look at a same-class distractor, where one is seen
    single_zoom_share: float = 0.3  # share of single-target items answered after one zoom with enough detail
    context_scale: float = 6.0  # the closest zoom spans this many target sizes (less when the target must show larger)
    coarse_gain: float = 2.0  # the first of two zooms shows this many times the global view's detail (or less)
    # the last zoom shows the target's shorter side at least this large, in output pixels (for a question of where
    # two objects stand or which is longer, as large as a zoom that holds the object whole can)
    min_target_px: int = 48
    min_instance_px: int = 12  # ... and each instance a count question counts at least this large
    crop_quality: int = 90


@dataclass(frozen=True)
class ExportConfig:
    # images held out in the `test` split with this probability, by a hash of the image alone (whatever `split_by`
    # says), so an image's split never moves as others are added; 0 for recipes over a handful of images
    test_share: float = 0.1
    rl_share: float = 0.5  # the other items go to RL with this probability, else to SFT
    # image: every item of an image lands in one split (no image in two), by the image's hash; item: this share of
    # each image's items, taken in turn, for a handful of images that would otherwise leave a split with one or two
    # of them (an item's split then moves when its image gains or loses kept items)
    split_by: Literal["image", "item"] = "image"
    rows_per_shard: int = 200
    global_view_quality: int = 90


@dataclass(frozen=True)
class Price:
    input: float  # per million prompt tokens
    output: float  # per million completion tokens


# How an endpoint's model writes a box, over the image as it was sent (after the `image_max_pixels` downscale):
# grid1000 [x1, y1, x2, y2] on 0..1000 (Qwen3-VL), pixels [x1, y1, x2, y2] in its pixels (Qwen2.5-VL: sent at
# sides a multiple of 28, see `EndpointConfig.image_multiple`),
# unit [x1, y1, x2, y2] on 0..1, yx1000 [y1, x1, y2, x2] on 0..1000 (Gemini)
BoxConvention = Literal["grid1000", "pixels", "unit", "yx1000"]
PIXEL_GRID = 28  # Qwen2.5-VL's resize grid: a 14 px patch, merged 2x2


@dataclass(frozen=True)
class EndpointConfig:
    """An OpenAI-compatible endpoint. The key is read from the environment variable named here, never stored."""

    base_url: str | list[str]  # several: replicas of one model (e.g. vLLM servers); each request to the least loaded
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.7
    max_tokens: int = 1024
    timeout_s: float = 120.0
    max_in_flight: int = 16
    requests_per_minute: int = 0  # 0: no limit
    tokens_per_minute: int = 0  # 0: no limit; counted from an estimate before sending
    max_attempts: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    image_max_pixels: int = 1024 * 1024  # images are downscaled to this budget before they are sent
    boxes: BoxConvention = "grid1000"  # the coordinates its boxes come in (ground, trajectories' zooms)
    json_schema: bool = True  # the server honours response_format json_schema; else a tolerant parser + repair
    batch: bool = False  # submit through the Batch API (OpenAI; half price), poll, collect, resume
    batch_poll_s: float = 30.0
    price: Price | None = None

    @property
    def image_multiple(self) -> int:
        """What a sent image's sides are a multiple of. A model that writes boxes in pixels (Qwen2.5-VL) first resizes
        what it gets to sides a multiple of 28 px and writes its pixels over that: an image sent at such a size is
        seen as sent, so its pixels are the sent image's."""
        return PIXEL_GRID if self.boxes == "pixels" else 1

    @property
    def urls(self) -> list[str]:
        """`base_url` as a list: one URL, or every replica's."""
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)


def url_problem(url: object) -> str | None:
    """Why `url` cannot be an endpoint's base URL, or None."""
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
        good = parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        good = False
    return None if good else f"{url!r} is not an http:// or https:// URL with a host, e.g. https://api.openai.com/v1"


@dataclass(frozen=True)
class TeacherVerification:
    votes: int = 3  # independent answers on the crop
    min_agreement: float = 0.67  # share of votes that must match the reference answer
    solver_samples: int = 4  # the solver answers this many times from the global view, and from the crop
    solver_max_pass: float = 0.25  # kept only if the solver's pass rate without zooming is at most this
    crop_min_pass: float = 0.5  # ... and its pass rate on the crop is at least this
    # ask the checks one after another, each only until it is decided, and stop at the first that fails: the same
    # verdicts as asking everything at once, for fewer calls (false: all at once, one round trip per item)
    cascade: bool = True


@dataclass(frozen=True)
class TeacherConfig:
    """Which stages a model teacher drives; the built-in teacher does the rest offline."""

    stages: list[Literal["ground", "name", "questions", "verification", "trajectories"]] = field(default_factory=list)
    endpoint: EndpointConfig | None = None
    solver: EndpointConfig | None = None  # answers without tools; may be the base model being trained
    verification: TeacherVerification = field(default_factory=TeacherVerification)
    tile_grid: int = 3  # grounding looks at the image in tile_grid x tile_grid overlapping tiles
    names_per_image: int = 12  # name shows the teacher this many unlabelled proposals per image, best scored first
    questions_per_image: int = 6
    max_turns: int = 5


@dataclass(frozen=True)
class Source:
    name: str  # where the images come from, as the dataset card credits it
    license: str  # the images' licence, e.g. CC-BY-SA-4.0; crops of them stay under it
    url: str = ""
    attribution: str = ""  # credit line the licence asks for, if any


@dataclass(frozen=True)
class Recipe:
    dataset: str
    ingest: IngestConfig
    db: Path
    output_dir: Path
    license: str = "other"  # the dataset card's licence id (Hugging Face form, e.g. cc-by-sa-4.0)
    sources: list[Source] = field(default_factory=list)  # recorded in each version and stated in its card
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    view: ViewConfig = field(default_factory=ViewConfig)
    mine: MineConfig = field(default_factory=MineConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    trajectories: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    source: Path | None = field(default=None, compare=False)  # the YAML file, for messages

    def fingerprint(self) -> str:
        """A hash of every setting (not of comments or key order): what 'the recipe changed' means."""
        return sha256_json(to_plain(self))


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: at least `ge` or more than `gt`, and at most `le`."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None

    def problem(self, value: float) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        if self.ge is not None and value < self.ge:
            return f"must be at least {self.ge:g}"
        if self.gt is not None and value <= self.gt:
            return f"must be more than {self.gt:g}"
        if self.le is not None and value > self.le:
            return f"must be at most {self.le:g}"
        return None


COUNT = Range(ge=1)  # counts and sizes: zero or fewer would make an empty dataset or divide by zero
OFF_OR_MORE = Range(ge=0)  # 0 switches the setting off (or means "pick for me")
SHARE = Range(ge=0, le=1)
POSITIVE = Range(gt=0)
QUALITY = Range(ge=1, le=100)  # JPEG quality

# The one place every numeric setting gets its range (tests check that none is missing).
RANGES: dict[type, dict[str, Range]] = {
    IngestConfig: {"max_pixels": COUNT},
    ViewConfig: {"max_pixels": COUNT, "min_resolvable_px": OFF_OR_MORE},
    MineConfig: {
        "min_area_frac": SHARE,
        "max_area_frac": Range(gt=0, le=1),
        "min_side_px": OFF_OR_MORE,
        "border_px": OFF_OR_MORE,
        "unique_radius": OFF_OR_MORE,
        "top_k": COUNT,
        "proposal_min_side_px": COUNT,
        "proposal_max_side": Range(ge=16),  # the proposer needs a few blobs' width to work with
        "workers": OFF_OR_MORE,
    },
    GenerateConfig: {
        "per_image": COUNT,
        "short_answer_share": SHARE,
        "min_colour_share": SHARE,
        "min_colour_side_px": OFF_OR_MORE,
        "position_margin": SHARE,
        "size_ratio": Range(ge=1),
        "length_ratio": Range(ge=1),
        "nearest_ratio": Range(gt=0, le=1),
        "partners_per_target": OFF_OR_MORE,
        "min_count": COUNT,
        "max_count": COUNT,
        "min_text_agreement": SHARE,
        "max_text_words": COUNT,
        "seed": Range(),
    },
    VerifyConfig: {},
    TrajectoryConfig: {
        "reflective_share": SHARE,
        "single_zoom_share": SHARE,
        "context_scale": Range(ge=1),
        "coarse_gain": Range(ge=1),
        "min_target_px": COUNT,
        "min_instance_px": COUNT,
        "crop_quality": QUALITY,
    },
    ExportConfig: {"test_share": SHARE, "rl_share": SHARE, "rows_per_shard": COUNT, "global_view_quality": QUALITY},
    Price: {"input": OFF_OR_MORE, "output": OFF_OR_MORE},
    EndpointConfig: {
        "temperature": Range(ge=0, le=2),
        "max_tokens": COUNT,
        "timeout_s": POSITIVE,
        "max_in_flight": COUNT,
        "requests_per_minute": OFF_OR_MORE,
        "tokens_per_minute": OFF_OR_MORE,
        "max_attempts": COUNT,
        "backoff_base_s": OFF_OR_MORE,
        "backoff_max_s": OFF_OR_MORE,
        "image_max_pixels": Range(ge=28 * 28),  # one vision patch
        "batch_poll_s": POSITIVE,
    },
    TeacherVerification: {
        "votes": COUNT,
        "min_agreement": SHARE,
        "solver_samples": COUNT,
        "solver_max_pass": SHARE,
        "crop_min_pass": SHARE,
    },
    TeacherConfig: {"tile_grid": COUNT, "names_per_image": COUNT, "questions_per_image": COUNT, "max_turns": COUNT},
}
# Settings that moved, so an old recipe is told where to.
MOVED = {"verify.referent_radius": "mine.unique_radius (one radius for mine, ground and verify)"}
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # `dataset` is a folder inside output_dir, and a Hub name
EXTENSION = re.compile(r"\.[a-z0-9]+")
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # an fsspec URL: s3://, gs://, hf://, file://, memory://...
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # `name` or `org/name`


def sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def hash_share(key: Any) -> float:
    """A number in [0, 1) from a hash of `key`: a choice that depends on the item alone, whatever else runs."""
    return int(sha256_json(key)[:8], 16) / 16**8


def even_spread(keys: Iterable[str], share: float, salt: Any, kinds: Mapping[str, str] | None = None) -> set[str]:
    """`share` of `keys`, taken in turn in the order of their hashes from an offset that depends on `salt`: the
    share holds to within one key however few there are, where a hash threshold on each key alone would leave 2 of
    8 where 4 were asked for. With `kinds`, keys are taken kind by kind, so each kind's share holds too."""
    kinds = kinds or {}
    ordered = sorted(keys, key=lambda k: (kinds.get(k, ""), hash_share([salt, k])))
    offset = hash_share(salt)
    return {k for r, k in enumerate(ordered) if math.floor((r + 1) * share + offset) > math.floor(r * share + offset)}


def to_plain(obj: Any) -> Any:
    """Dataclass -> JSON-able dict, without the `source` path."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name != "source"}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe; relative paths in it are relative to the recipe file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_RecipeLoader)
    except _DuplicateKey as exc:
        raise RecipeError(f"{path}: line {exc.line}: key {exc.key!r} is given twice") from None
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:  # a bad date is a ValueError
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys to values")
    recipe = _build(Recipe, data, path, "")
    if recipe.teacher.stages and recipe.teacher.endpoint is None:
        raise RecipeError(f"{path}: teacher.stages {recipe.teacher.stages} need teacher.endpoint")
    for role in ("endpoint", "solver"):
        _check_urls(getattr(recipe.teacher, role), path, f"teacher.{role}.base_url")
    if not PLAIN_NAME.fullmatch(recipe.dataset):
        raise RecipeError(
            f"{path}: dataset: {recipe.dataset!r} must be a plain folder name (letters, digits, '.', '_', '-'; "
            "no '/' or '..'): it names the folder inside output_dir and the Hub dataset"
        )
    if recipe.mine.min_area_frac > recipe.mine.max_area_frac:
        raise RecipeError(f"{path}: mine.min_area_frac must be at most mine.max_area_frac: no region could pass")
    ingest = dataclasses.replace(recipe.ingest, extensions=_extensions(recipe.ingest.extensions, path))
    ingest = _resolve_inputs(ingest, path, path.parent.resolve())
    recipe = dataclasses.replace(recipe, ingest=ingest)
    return dataclasses.replace(_resolve_paths(recipe, path.parent.resolve()), source=path)


def _resolve_inputs(ingest: IngestConfig, file: Path, base: Path) -> IngestConfig:
    """Exactly one input; a local folder or dataset path made absolute against the recipe's folder. A URL stays as
    written, and so does a dataset path that names nothing here and reads as a Hub id (`name` or `org/name`)."""
    if (ingest.images is None) == (ingest.dataset is None):
        raise RecipeError(f"{file}: ingest needs exactly one of images (a folder or URL) and dataset")
    if ingest.images is not None:
        if not ingest.images or "\0" in ingest.images:
            raise RecipeError(f"{file}: ingest.images: expected a folder or URL, got {ingest.images!r}")
        if URL.match(ingest.images):
            if "@" in ingest.images.split("://", 1)[1].split("/", 1)[0]:  # user:secret@host would be stored as is
                raise RecipeError(
                    f"{file}: ingest.images: give the store's credentials in its environment variables or config, "
                    "not in the URL (it is recorded with every image)"
                )
            return ingest
        return dataclasses.replace(ingest, images=str(_local(ingest.images, base, file, "ingest.images")))
    source = ingest.dataset
    if not source.path or "\0" in source.path:
        raise RecipeError(f"{file}: ingest.dataset.path: expected a dataset id or path, got {source.path!r}")
    local = _local(source.path, base, file, "ingest.dataset.path")
    if local.exists() or not HUB_ID.fullmatch(source.path) or source.path.endswith(".parquet"):
        source = dataclasses.replace(source, path=str(local))
    return dataclasses.replace(ingest, dataset=source)


def _local(text: str, base: Path, file: Path, key: str) -> Path:
    try:
        return (base / Path(text).expanduser()).resolve()
    except (RuntimeError, OSError) as exc:  # `~nobody`, a symlink loop
        raise RecipeError(f"{file}: {key}: {text!r} is not a usable path: {exc}") from None


def _check_urls(endpoint: EndpointConfig | None, file: Path, key: str) -> None:
    """One URL, or a list of distinct replicas' URLs, each http(s) with a host."""
    if endpoint is None:
        return
    urls = endpoint.urls
    if not urls:
        raise RecipeError(f"{file}: {key}: the list of replicas is empty")
    for i, url in enumerate(urls):
        problem = url_problem(url)
        where = key if isinstance(endpoint.base_url, str) else f"{key}[{i}]"
        if problem:
            raise RecipeError(f"{file}: {where}: {problem}")
        if url in urls[:i]:
            raise RecipeError(f"{file}: {where}: {url!r} is listed twice")


def _extensions(extensions: list[str], file: Path) -> list[str]:
    """File name endings as ingest compares them: lower case, with the dot ("JPG" is ".jpg")."""
    if not extensions:
        raise RecipeError(f"{file}: ingest.extensions is empty: no image would be read")
    normalised = ["." + e.strip().lower().removeprefix(".") for e in extensions]
    for i, e in enumerate(normalised):
        if not EXTENSION.fullmatch(e):
            raise RecipeError(f"{file}: ingest.extensions[{i}]: {extensions[i]!r} is not a file extension like .jpg")
    return normalised


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int):
        self.key, self.line = key, line


class _RecipeLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error instead of the last one winning."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden key by key
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base loader names it
                break
            if duplicate:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep)


def _resolve_paths(obj: Any, base: Path) -> Any:
    if dataclasses.is_dataclass(obj):
        changes = {f.name: _resolve_paths(getattr(obj, f.name), base) for f in dataclasses.fields(obj)}
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, list):
        return [_resolve_paths(v, base) for v in obj]
    if isinstance(obj, Path):
        return obj if obj.is_absolute() else (base / obj).resolve()
    return obj


def _build(cls: type, data: Any, file: Path, where: str) -> Any:
    if not isinstance(data, dict):
        raise RecipeError(f"{file}: {where.rstrip('.') or 'recipe'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        moved = MOVED.get(where + unknown[0])
        raise RecipeError(
            f"{file}: unknown key {where + unknown[0]!r}; "
            + (f"it is now {moved}" if moved else f"{where or 'the top level '}expects {', '.join(fields)}")
        )
    ranges = RANGES.get(cls, {})
    values = {}
    for name, f in fields.items():
        key = where + name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecipeError(f"{file}: missing required key {key!r}")
            continue
        values[name] = _convert(hints[name], data[name], file, key)
        if name in ranges and isinstance(values[name], int | float):
            problem = ranges[name].problem(values[name])
            if problem:
                raise RecipeError(f"{file}: {key}: {values[name]!r} {problem}")
    return cls(**values)


def _convert(tp: Any, value: Any, file: Path, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if isinstance(value, list):  # `str | list[str]`: a list takes the list form
            inner = [a for a in inner if typing.get_origin(a) is list] or inner
        return _convert(inner[0], value, file, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, file, key + ".")
    if origin is Literal:
        if value not in args:
            raise RecipeError(f"{file}: {key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{file}: {key}: expected a list, got {type(value).__name__}")
        return [_convert(args[0], v, file, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Path:
        if not isinstance(value, str) or not value or "\0" in value:
            raise RecipeError(f"{file}: {key}: expected a path string, got {value!r}")
        return Path(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63:
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise RecipeError(f"{file}: {key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    if tp is int and abs(value) >= 2**63:
        raise RecipeError(f"{file}: {key}: {value} does not fit in 64 bits")
    return value
