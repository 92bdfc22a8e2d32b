"""COCO, YOLO and Pascal VOC box annotations, keyed by image file stem.

A malformed file stops the run with an error naming the file and the entry or line: ground truth that is
silently skipped would quietly change what the dataset is about.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from drim_data.errors import DrimError
from drim_data.recipe import AnnotationSource


class AnnotationError(DrimError):
    pass


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
        files = {im["id"]: Path(im["file_name"]).stem for im in doc["images"]}
    except (KeyError, TypeError) as exc:
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
        boxes[files[ann["image_id"]]].append(Box(label, x, y, x + w, y + h, attributes=json.dumps(attributes)))
    return boxes


def complete_categories(source: AnnotationSource) -> dict[str, list[str]]:
    """Per image (keyed as `load_annotations` keys it), the classes whose every instance is boxed: the source's
    `complete` list, plus a COCO image's own `complete_categories`. Only these may be counted."""
    found = {
        key: sorted({b.label for b in boxes} & set(source.complete)) for key, boxes in load_annotations(source).items()
    }
    if source.format == "coco":
        doc = json.loads(source.path.read_text())
        for im in doc["images"]:
            listed = im.get("complete_categories") or []
            if not isinstance(listed, list) or not all(isinstance(c, str) for c in listed):
                raise AnnotationError(
                    f"{source.path}: image {im.get('id')}: complete_categories must be a list of names"
                )
            key = Path(im["file_name"]).stem
            found[key] = sorted(set(found.get(key, [])) | set(listed) | set(source.complete))
    return found


def _load_yolo(source: AnnotationSource) -> dict[str, list[Box]]:
    folder = source.path
    classes = list(source.classes)
    if not classes and (folder / "classes.txt").exists():
        classes = [line.strip() for line in (folder / "classes.txt").read_text().splitlines() if line.strip()]
    boxes: dict[str, list[Box]] = {}
    for file in sorted(folder.glob("*.txt")):
        if file.name == "classes.txt":
            continue
        found = boxes.setdefault(file.stem, [])
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
    files = [source.path] if source.path.is_file() else sorted(source.path.glob("*.xml"))
    boxes: dict[str, list[Box]] = {}
    for file in files:
        try:
            root = ET.parse(file).getroot()
        except ET.ParseError as exc:
            raise AnnotationError(f"{file}: line {exc.position[0]}: not valid XML: {exc}") from None
        found = boxes.setdefault(file.stem, [])
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
