"""Recipes: flat YAML mapped one to one onto frozen dataclasses, with unknown or ill-typed keys refused by name."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
class IngestConfig:
    images: Path
    annotations: list[AnnotationSource] = field(default_factory=list)
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
    unique_radius: int = 40  # on the 0..1000 grid: no other candidate of the same label this close; 0: no check
    top_k: int = 50  # proposals per image
    proposal_min_side_px: int = 32  # proposals look for objects this wide and up, on a view where they span 8+ px
    proposal_max_side: int = 2048  # ... and on a view no wider or taller than this
    workers: int = 0  # processes decoding, proposing and measuring (one database writer); 0: one per core, if busy


@dataclass(frozen=True)
class GenerateConfig:
    question_types: list[Literal["colour", "count", "relative_position", "text"]] = field(
        default_factory=lambda: ["colour", "count", "relative_position", "text"]
    )
    per_image: int = 12  # at most this many questions of each type per image
    short_answer_share: float = 0.3  # the rest are multiple choice
    min_colour_share: float = 0.6  # a colour is asked only when this share of the object's own pixels carry it
    min_colour_side_px: int = 12  # ... and only of objects at least this wide and tall at full resolution
    # referents and relations need clear margins: this share of the image's side between the target and the next
    # instance ("the leftmost"), between two objects ("left of"), and from a count's area boundary
    position_margin: float = 0.03
    size_ratio: float = 1.5  # "the largest" is at least this many times the area of the next largest
    nearest_ratio: float = 0.6  # "the X nearest the Y" is at most this share of the next X's distance to Y
    partners_per_target: int = 4  # relative-position questions per target, each against another named object
    min_count: int = 2  # counts are asked between these numbers of instances
    max_count: int = 9
    min_text_agreement: float = 0.8  # OCR must read the labeller's text this closely (similarity 0..1)
    seed: int = 0


@dataclass(frozen=True)
class VerifyConfig:
    referent_radius: int = 40  # on the 0..1000 grid: no other candidate of the same label this close


@dataclass(frozen=True)
class TrajectoryConfig:
    reflective_share: float = 0.25  # share of single-target items whose trajectory first zooms off target
    context_scale: float = 4.0  # the coarse zoom spans this many target sizes
    crop_quality: int = 90


@dataclass(frozen=True)
class ExportConfig:
    rl_share: float = 0.5  # items go to the RL split with this probability (by a hash of their id), else to SFT
    rows_per_shard: int = 200
    global_view_quality: int = 90


@dataclass(frozen=True)
class Price:
    input: float  # per million prompt tokens
    output: float  # per million completion tokens


@dataclass(frozen=True)
class EndpointConfig:
    """An OpenAI-compatible endpoint. The key is read from the environment variable named here, never stored."""

    base_url: str
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
    json_schema: bool = True  # the server honours response_format json_schema; else a tolerant parser + repair
    batch: bool = False  # submit through the Batch API (OpenAI; half price), poll, collect, resume
    batch_poll_s: float = 30.0
    price: Price | None = None


@dataclass(frozen=True)
class TeacherVerification:
    votes: int = 3  # independent answers on the crop
    min_agreement: float = 0.67  # share of votes that must match the reference answer
    solver_samples: int = 4  # the solver answers this many times from the global view, and from the crop
    solver_max_pass: float = 0.25  # kept only if the solver's pass rate without zooming is at most this
    crop_min_pass: float = 0.5  # ... and its pass rate on the crop is at least this


@dataclass(frozen=True)
class TeacherConfig:
    """Which stages a model teacher drives; the built-in teacher does the rest offline."""

    stages: list[Literal["ground", "questions", "verification", "trajectories"]] = field(default_factory=list)
    endpoint: EndpointConfig | None = None
    solver: EndpointConfig | None = None  # answers without tools; may be the base model being trained
    verification: TeacherVerification = field(default_factory=TeacherVerification)
    tile_grid: int = 3  # grounding looks at the image in tile_grid x tile_grid overlapping tiles
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


def sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


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
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys to values")
    recipe = _build(Recipe, data, path, "")
    if recipe.teacher.stages and recipe.teacher.endpoint is None:
        raise RecipeError(f"{path}: teacher.stages {recipe.teacher.stages} need teacher.endpoint")
    return dataclasses.replace(_resolve_paths(recipe, path.parent.resolve()), source=path)


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
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RecipeError(
            f"{file}: unknown key {where + unknown[0]!r}; {where or 'the top level '}expects {', '.join(fields)}"
        )
    values = {}
    for name, f in fields.items():
        key = where + name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecipeError(f"{file}: missing required key {key!r}")
            continue
        values[name] = _convert(hints[name], data[name], file, key)
    return cls(**values)


def _convert(tp: Any, value: Any, file: Path, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
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
        if not isinstance(value, str) or not value:
            raise RecipeError(f"{file}: {key}: expected a path string, got {value!r}")
        return Path(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise RecipeError(f"{file}: {key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value
