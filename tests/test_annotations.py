import json

import pytest

from drim_data.pixels.annotations import AnnotationError, Box, complete_categories, load_annotations
from drim_data.recipe import AnnotationSource
from tests.conftest import DEMO_ANNOTATIONS


def coco(tmp_path, doc) -> AnnotationSource:
    path = tmp_path / "ann.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return AnnotationSource("coco", path)


COCO = {
    "images": [{"id": 1, "file_name": "sub/a.jpg"}, {"id": 2, "file_name": "b.png"}],
    "categories": [{"id": 7, "name": "ship"}],
    "annotations": [{"image_id": 1, "category_id": 7, "bbox": [10, 20, 30, 40]}],
}


def test_voc_reads_the_real_forest_file():
    boxes = load_annotations(AnnotationSource("voc", DEMO_ANNOTATIONS))
    ((stem, trees),) = boxes.items()
    assert stem == "neon_2019_YELL_2_541000_4977000_image_crop"
    assert len(trees) == 279 and {b.label for b in trees} == {"Tree"}
    assert trees[0] == Box("Tree", 1012, 161, 1041, 196)


def test_coco_boxes_are_xywh_keyed_by_file_name(tmp_path):
    boxes = load_annotations(coco(tmp_path, COCO))
    assert boxes == {"sub/a.jpg": [Box("ship", 10, 20, 40, 60)], "b.png": []}  # an image without boxes: empty


def test_a_source_may_declare_every_class_it_boxes_complete(tmp_path):
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "complete_categories": ["tank"]}, {"id": 2, "file_name": "b.jpg"}],
        "categories": [{"id": 7, "name": "ship"}, {"id": 8, "name": "boat"}],
        "annotations": [
            {"image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]},
            {"image_id": 2, "category_id": 8, "bbox": [1, 1, 5, 5]},
        ],
    }
    every = AnnotationSource("coco", coco(tmp_path, doc).path, complete=["*"])
    assert complete_categories(every) == {"a.jpg": ["ship", "tank"], "b.jpg": ["boat"]}
    some = AnnotationSource("coco", every.path, complete=["boat"])
    assert complete_categories(some) == {"a.jpg": ["boat", "tank"], "b.jpg": ["boat"]}


def test_a_coco_crowd_box_is_marked_as_one(tmp_path):
    doc = {**COCO, "annotations": [*COCO["annotations"], {**COCO["annotations"][0], "iscrowd": 1}]}
    single, crowd = load_annotations(coco(tmp_path, doc))["sub/a.jpg"]
    assert json.loads(single.attributes) == {} and json.loads(crowd.attributes) == {"crowd": True}


def test_yolo_boxes_are_normalised_until_the_size_is_known(tmp_path):
    (tmp_path / "classes.txt").write_text("car\nship\n")
    (tmp_path / "a.txt").write_text("1 0.5 0.5 0.2 0.1\n\n")
    (tmp_path / "empty.txt").write_text("")
    boxes = load_annotations(AnnotationSource("yolo", tmp_path))
    assert boxes["empty"] == []
    (box,) = boxes["a"]
    assert box.label == "ship" and box.normalised
    px = box.to_pixels(1000, 500)
    assert (px.x1, px.y1, px.x2, px.y2) == pytest.approx((400, 225, 600, 275))


def test_boxes_outside_the_image_are_clamped_or_dropped():
    assert Box("x", -10, -5, 50, 40).to_pixels(100, 100) == Box("x", 0, 0, 50, 40)
    assert Box("x", 90, 90, 150, 120).to_pixels(100, 100) == Box("x", 90, 90, 100, 100)
    assert Box("x", 120, 10, 150, 40).to_pixels(100, 100) is None


@pytest.mark.parametrize(
    "doc, message",
    [
        ("{not json", "line 1: not valid JSON"),
        ({"images": []}, "needs 'images' and 'annotations' lists"),
        ({**COCO, "annotations": [{"image_id": 1, "bbox": [1, 2, 3]}]}, "annotations[0]: bbox must be"),
        (
            {**COCO, "annotations": [COCO["annotations"][0], {"image_id": 9, "bbox": [1, 2, 3, 4]}]},
            "annotations[1]: image_id 9 is not among",
        ),
        ({**COCO, "annotations": [{"image_id": 1, "bbox": [1, 2, 0, 4]}]}, "width and height must be positive"),
        ({**COCO, "annotations": [{"image_id": 1, "bbox": [1, "x", 3, 4]}]}, "expected a finite number"),
    ],
)
def test_malformed_coco_names_file_and_entry(tmp_path, doc, message):
    source = coco(tmp_path, doc)
    with pytest.raises(AnnotationError) as err:
        load_annotations(source)
    assert str(source.path) in str(err.value) and message in str(err.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("0 0.5 0.5 0.1\n", "a.txt:1: expected 'class cx cy w h'"),
        ("0 0.5 0.5 0.1 0.1\nx 0.5 0.5 0.1 0.1\n", "a.txt:2: expected an integer class"),
        ("5 0.5 0.5 0.1 0.1\n", "a.txt:1: class 5 is not in the 2 class names"),
        ("0 0.5 0.5 -0.1 0.1\n", "a.txt:1: width and height must be positive"),
    ],
)
def test_malformed_yolo_names_file_and_line(tmp_path, content, message):
    (tmp_path / "a.txt").write_text(content)
    with pytest.raises(AnnotationError, match=message):
        load_annotations(AnnotationSource("yolo", tmp_path, classes=["car", "ship"]))


@pytest.mark.parametrize(
    "xml, message",
    [
        ("<annotation><object><name>t</name>", "line 1: not valid XML"),
        ("<annotation><object><name>t</name></object></annotation>", "object[0]: needs <name> and <bndbox>"),
        (
            "<annotation><object><name>t</name><bndbox><xmin>a</xmin></bndbox></object></annotation>",
            "object[0]: <bndbox> needs numeric",
        ),
        (
            "<annotation><object><name>t</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>5</xmax><ymax>9</ymax>"
            "</bndbox></object></annotation>",
            "object[0]: empty box",
        ),
    ],
)
def test_malformed_voc_names_file_and_object(tmp_path, xml, message):
    (tmp_path / "img.xml").write_text(xml)
    with pytest.raises(AnnotationError) as err:
        load_annotations(AnnotationSource("voc", tmp_path))
    assert "img.xml" in str(err.value) and message in str(err.value)


def test_missing_annotation_path_is_an_error(tmp_path):
    with pytest.raises(AnnotationError, match="does not exist"):
        load_annotations(AnnotationSource("coco", tmp_path / "nope.json"))
