"""OCR on rendered text and on the real inscription of the Berlin cathedral photo."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from drim_data.pixels import ocr
from drim_data.pixels.ocr import read_text
from schemas.tool import global_view, global_view_size

BERLIN = Path(__file__).resolve().parent.parent / "data" / "demo" / "images" / "opensfm_berlin_01.jpg"
INSCRIPTION = (1202, 1150, 2004, 1177)  # the labelled `sign` box: a gold-on-dark band of capitals ~12 px tall
WORDS = "KOMMET HER ZU MIR ALLE DIE IHR MUEHSELIG UND BELADEN SEID ICH WILL EUCH ERQUICKEN".split()


def rendered(text: str, at=(30, 20)) -> Image.Image:
    image = Image.new("RGB", (420, 90), (250, 250, 245))
    ImageDraw.Draw(image).text(at, text, fill=(20, 20, 30), font=ImageFont.load_default(size=40))
    return image


def test_reads_rendered_text_exactly_with_its_box():
    lines = read_text(rendered("HARBOUR 42"))
    assert [line.text for line in lines] == ["HARBOUR 42"]
    x1, y1, x2, y2 = lines[0].box
    assert 15 <= x1 <= 40 and 10 <= y1 <= 40 and 200 <= x2 <= 300 and 50 <= y2 <= 90
    assert lines[0].confidence > 0.9


def test_pieces_of_one_line_are_joined_and_lines_kept_apart():
    image = Image.new("RGB", (900, 200), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    draw.text((30, 20), "PIER", fill=(20, 20, 30), font=ImageFont.load_default(size=40))
    draw.text((200, 20), "NINE", fill=(20, 20, 30), font=ImageFont.load_default(size=40))
    draw.text((30, 120), "NO ENTRY", fill=(20, 20, 30), font=ImageFont.load_default(size=40))
    assert [line.text for line in read_text(image)] == ["PIER NINE", "NO ENTRY"]


def test_a_blank_image_has_no_text_and_the_engine_is_built_once():
    assert read_text(Image.new("RGB", (200, 60), "white")) == []
    read_text(rendered("DOCK 7"))
    assert ocr._engine.cache_info().currsize == 1


@pytest.fixture(scope="module")
def berlin() -> Image.Image:
    return Image.open(BERLIN).convert("RGB")


def crop_around(image: Image.Image, box, scale: float = 1.0, margin: int = 20) -> Image.Image:
    x1, y1, x2, y2 = (v * scale for v in box)
    m = margin * scale
    return image.crop((int(x1 - m), int(y1 - m), int(x2 + m), int(y2 + m)))


def similarity(lines) -> float:
    """How close the letters read are to the inscription's, spaces and word dividers ignored (0..1)."""
    letters = "".join(c for line in lines for c in line.text if c.isalpha())
    return difflib.SequenceMatcher(None, letters, "".join(WORDS)).ratio()


def test_the_inscription_is_legible_at_full_resolution_and_not_in_the_global_view(berlin):
    full = read_text(crop_around(berlin, INSCRIPTION))
    assert similarity(full) > 0.6  # 0.71: "HOMMELHERZUIMIR-AILE-DE-HR-MIFHSEUCUND-RFIADEN-SEID-JICH-WILL-FHCH-..."
    view = global_view(berlin, global_view_size(*berlin.size, 1003520))
    assert (
        similarity(read_text(crop_around(view, INSCRIPTION, view.width / berlin.width))) < 0.4
    )  # 0.23: "RANADNHMFHR"
