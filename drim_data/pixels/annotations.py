"""COCO, YOLO and Pascal VOC box annotations, matched to images by their path under the images folder.

A malformed file stops the run with an error naming the file and the entry or line: ground truth that is
silently skipped would quietly change what the dataset is about. For the same reason an entry that matches no
image, or more than one, is recorded as a drop and applied to none.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from drim_data.errors import DrimError
from drim_data.recipe import AnnotationSource


class AnnotationError(DrimError):
    pass


# COCO's `iscrowd`: a group too dense to box singly, or an object the labeller could not call. It is never asked
# about, but any description of its class must hold whatever it hides, and no count may include its area.
CROWD = "crowd"
SINGLE_SQL = "coalesce(attributes->>'crowd', 'false') <> 'true'"  # an annotation that is one object, not a crowd


@dataclass(frozen=True)
class Box:
    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    normalised: bool = False  # YOLO boxes are fractions of the image size until ingest knows the size
    attributes: str = "{}"  # JSON: what the labeller recorded (COCO `attributes`, `confidence`), e.g. a colour

    def to_pixels(self, width: int, height: int) -> Box | None:
        """Pixel box clamped to the image, or None when nothing of it lies inside."""
        sx, sy = (width, height) if self.normalised else (1, 1)
        x1, x2 = max(0.0, self.x1 * sx), min(float(width), self.x2 * sx)
        y1, y2 = max(0.0, self.y1 * sy), min(float(height), self.y2 * sy)
        if x2 <= x1 or y2 <= y1:
            return None
        return Box(self.label, x1, y1, x2, y2, attributes=self.attributes)


def load_annotations(source: AnnotationSource) -> dict[str, list[Box]]:
    """Boxes per image, keyed by where the source says the image is, relative to the images folder: a COCO
    `file_name` as written; a YOLO or VOC file's path under its folder, without the extension."""
    if not source.path.exists():
        raise AnnotationError(f"{source.path}: annotation {source.format} path does not exist")
    loaders = {"coco": _load_coco, "yolo": _load_yolo, "voc": _load_voc}
    return loaders[source.format](source)


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AnnotationError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _load_coco(source: AnnotationSource) -> dict[str, list[Box]]:
    path = source.path
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}: line {exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations")):
        raise AnnotationError(f"{path}: a COCO file needs 'images' and 'annotations' lists")
    try:
        names = {c["id"]: str(c["name"]) for c in doc.get("categories", [])}
        files = {im["id"]: _relative(im["file_name"]) for im in doc["images"]}
    except (KeyError, TypeError, AttributeError) as exc:
        raise AnnotationError(
            f"{path}: images need 'id' and 'file_name', categories 'id' and 'name' ({exc})"
        ) from None
    boxes: dict[str, list[Box]] = {stem: [] for stem in files.values()}
    for i, ann in enumerate(doc["annotations"]):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict) or ann.get("image_id") not in files:
            raise AnnotationError(
                f"{where}: image_id {ann.get('image_id') if isinstance(ann, dict) else ann!r} "
                "is not among the file's images"
            )
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise AnnotationError(f"{where}: bbox must be [x, y, width, height]")
        x, y, w, h = (_number(v, f"{where}.bbox") for v in bbox)
        if w <= 0 or h <= 0:
            raise AnnotationError(f"{where}: bbox width and height must be positive, got {w}x{h}")
        label = names.get(ann.get("category_id"), str(ann.get("category_id")))
        attributes = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
        if isinstance(ann.get("confidence"), str):
            attributes = {**attributes, "confidence": ann["confidence"]}
        if ann.get("iscrowd"):
            attributes = {**attributes, CROWD: True}
        boxes[files[ann["image_id"]]].append(Box(label, x, y, x + w, y + h, attributes=json.dumps(attributes)))
    return boxes


def declared_complete(labels: set[str], declared: list[str]) -> set[str]:
    """Which of an image's classes a source declares boxed completely; "*" declares every class it boxes, as COCO
    does of its own categories (with crowd boxes where instances are too many to box singly)."""
    return set(labels) if "*" in declared else set(labels) & set(declared)


def complete_categories(source: AnnotationSource) -> dict[str, list[str]]:
    """Per image (keyed as `load_annotations` keys it), the classes whose every instance is boxed: the source's
    `complete` list, plus a COCO image's own `complete_categories`. Only these may be named or counted."""
    found = {
        key: sorted(declared_complete({b.label for b in boxes}, source.complete))
        for key, boxes in load_annotations(source).items()
    }
    if source.format == "coco":
        doc = json.loads(source.path.read_text())
        for im in doc["images"]:
            listed = im.get("complete_categories") or []
            if not isinstance(listed, list) or not all(isinstance(c, str) for c in listed):
                raise AnnotationError(
                    f"{source.path}: image {im.get('id')}: complete_categories must be a list of names"
                )
            key = _relative(im["file_name"])
            found[key] = sorted(set(found.get(key, [])) | set(listed) | set(source.complete) - {"*"})
    return found


def column_boxes(value: object, names: list[str] | None, where: str) -> list[Box]:
    """Boxes from a dataset's annotations column: [x, y, width, height] in pixels, as COCO has them, either as a
    list of objects {bbox, category (or label), attributes} or, as the Hub's object-detection datasets store them,
    as one object of lists {bbox: [...], category: [...]}. A class id is a name of the column's ClassLabel."""
    if value is None:
        return []
    if isinstance(value, dict):
        bboxes, labels = value.get("bbox"), value.get("category", value.get("label"))
        if not isinstance(bboxes, list) or not isinstance(labels, list) or len(bboxes) != len(labels):
            raise AnnotationError(f"{where}: expected {{bbox: [...], category: [...]}} of the same length")
        value = [{"bbox": b, "category": c} for b, c in zip(bboxes, labels, strict=True)]
    if not isinstance(value, list):
        raise AnnotationError(f"{where}: expected a list of {{bbox, category}} objects, got {type(value).__name__}")
    boxes = []
    for i, obj in enumerate(value):
        at = f"{where}[{i}]"
        bbox = obj.get("bbox") if isinstance(obj, dict) else None
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise AnnotationError(f"{at}: bbox must be [x, y, width, height]")
        x, y, w, h = (_number(v, f"{at}.bbox") for v in bbox)
        if w <= 0 or h <= 0:
            raise AnnotationError(f"{at}: bbox width and height must be positive, got {w}x{h}")
        label = obj.get("category", obj.get("label"))
        if isinstance(label, int) and not isinstance(label, bool) and names is not None:
            if not 0 <= label < len(names):
                raise AnnotationError(f"{at}: class {label} is not among the {len(names)} class names")
            label = names[label]
        if label is None or label == "":
            raise AnnotationError(f"{at}: needs a category (or label)")
        attributes = obj.get("attributes") if isinstance(obj.get("attributes"), dict) else {}
        if obj.get("iscrowd"):
            attributes = {**attributes, CROWD: True}
        boxes.append(Box(str(label), x, y, x + w, y + h, attributes=json.dumps(attributes)))
    return boxes


def class_names(feature: object) -> list[str] | None:
    """The class names of the ClassLabel an annotations column's `category` (or `label`) holds, in either form."""
    inner = getattr(feature, "feature", feature)  # a list feature wraps its element's
    if isinstance(inner, dict):
        for key in ("category", "label"):
            found = getattr(inner.get(key), "feature", inner.get(key))
            if hasattr(found, "names"):
                return list(found.names)
    return None


def _load_yolo(source: AnnotationSource) -> dict[str, list[Box]]:
    folder = source.path
    classes = list(source.classes)
    if not classes and (folder / "classes.txt").exists():
        classes = [line.strip() for line in (folder / "classes.txt").read_text().splitlines() if line.strip()]
    boxes: dict[str, list[Box]] = {}
    for file in sorted(folder.rglob("*.txt")):
        if file.name == "classes.txt":
            continue
        found = boxes.setdefault(_mirrored(file, folder), [])
        for lineno, line in enumerate(file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            where = f"{file}:{lineno}"
            if len(parts) != 5:
                raise AnnotationError(f"{where}: expected 'class cx cy w h', got {line.strip()!r}")
            try:
                cls = int(parts[0])
                cx, cy, w, h = (float(p) for p in parts[1:])
            except ValueError:
                raise AnnotationError(f"{where}: expected an integer class and four numbers, got {line!r}") from None
            if not all(math.isfinite(v) for v in (cx, cy, w, h)) or w <= 0 or h <= 0:
                raise AnnotationError(f"{where}: width and height must be positive finite fractions")
            if classes and not 0 <= cls < len(classes):
                raise AnnotationError(f"{where}: class {cls} is not in the {len(classes)} class names")
            label = classes[cls] if classes else str(cls)
            found.append(Box(label, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, normalised=True))
    return boxes


def _load_voc(source: AnnotationSource) -> dict[str, list[Box]]:
    files = [source.path] if source.path.is_file() else sorted(source.path.rglob("*.xml"))
    boxes: dict[str, list[Box]] = {}
    for file in files:
        try:
            root = ET.parse(file).getroot()
        except ET.ParseError as exc:
            raise AnnotationError(f"{file}: line {exc.position[0]}: not valid XML: {exc}") from None
        found = boxes.setdefault(file.stem if file == source.path else _mirrored(file, source.path), [])
        for i, obj in enumerate(root.iter("object")):
            where = f"{file}: object[{i}]"
            name = obj.findtext("name")
            box = obj.find("bndbox")
            if not name or box is None:
                raise AnnotationError(f"{where}: needs <name> and <bndbox>")
            try:
                x1, y1, x2, y2 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (TypeError, ValueError):
                raise AnnotationError(f"{where}: <bndbox> needs numeric xmin, ymin, xmax, ymax") from None
            if x2 <= x1 or y2 <= y1:
                raise AnnotationError(f"{where}: empty box ({x1}, {y1}, {x2}, {y2})")
            found.append(Box(name.strip(), x1, y1, x2, y2))
    return boxes


def _relative(file_name: str) -> str:
    """A COCO `file_name` as a POSIX path: `./a/b.jpg` and `a\\b.jpg` are `a/b.jpg`."""
    return PurePosixPath(file_name.replace("\\", "/")).as_posix()


def _mirrored(file: Path, folder: Path) -> str:
    """A per-image file's path under its folder, without the extension: `labels/camA/0001.txt` is `camA/0001`."""
    return file.relative_to(folder).with_suffix("").as_posix()


def _entry(source: AnnotationSource, key: str) -> str:
    """Where an entry is written, to name it in drops."""
    if source.format == "coco":
        return f"{source.path}#{key}"
    if source.path.is_file():
        return str(source.path)
    return str(source.path / f"{key}.{'txt' if source.format == 'yolo' else 'xml'}")


@dataclass
class Matched:
    """The annotation entries matched to image paths (relative to the images folder), and those that were not."""

    boxes: dict[str, list[tuple[str, Box]]] = field(default_factory=dict)  # (entry, box)
    complete: dict[str, set[str]] = field(default_factory=dict)
    entries: dict[str, list[str]] = field(default_factory=dict)
    drops: list[tuple[str, str, str]] = field(default_factory=list)  # (entry, reason, detail)


def match_annotations(sources: list[AnnotationSource], paths: list[str]) -> Matched:
    """Each entry of each source to the one image path it names.

    A COCO `file_name` names a path with its extension, a YOLO or VOC file the path without it. An entry without a
    folder (`0001.jpg`) that names no path exactly may name an image of that name in any folder, when exactly one
    has it: `camA/0001.jpg` and `camB/0001.jpg` never get each other's boxes. An entry with nothing in it (no
    boxes, no complete classes) loses nothing when it matches no image, so only entries with content are dropped.
    """
    by_path: dict[str, list[str]] = {}
    by_stem: dict[str, list[str]] = {}
    by_name: dict[str, list[str]] = {}
    by_bare_stem: dict[str, list[str]] = {}
    for path in sorted(paths):
        pure = PurePosixPath(path)
        by_path.setdefault(path, []).append(path)
        by_stem.setdefault(pure.with_suffix("").as_posix(), []).append(path)
        by_name.setdefault(pure.name, []).append(path)
        by_bare_stem.setdefault(pure.stem, []).append(path)
    matched = Matched()
    for source in sources:
        boxes, complete = load_annotations(source), complete_categories(source)
        exact, bare = (by_path, by_name) if source.format == "coco" else (by_stem, by_bare_stem)
        for key in sorted(boxes.keys() | complete.keys()):
            entry, found, labels = _entry(source, key), boxes.get(key, []), complete.get(key, [])
            if not found and not labels:
                continue
            candidates = exact.get(key) or ([] if "/" in key else bare.get(key, []))
            if len(candidates) > 1:
                shown = ", ".join(candidates[:3]) + (f" and {len(candidates) - 3} more" if len(candidates) > 3 else "")
                matched.drops.append((entry, "ambiguous_annotation", f"{key!r} could be any of {shown}"))
                continue
            if not candidates:
                matched.drops.append((entry, "unmatched_annotation", f"no image at {key!r} under the images folder"))
                continue
            (path,) = candidates
            matched.boxes.setdefault(path, []).extend((entry, box) for box in found)
            matched.complete.setdefault(path, set()).update(labels)
            matched.entries.setdefault(path, []).append(entry)
    return matched
