"""The review page: written from a version (and its recipe's database, for verdicts and drops), then opened from
disk in a real headless Chromium: no console errors, the expected items, working filters and pages."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from drim_data.cli import app
from drim_data.db import connect
from drim_data.errors import DrimError
from drim_data.release.audit import FLAGS as AUDIT_FLAGS
from drim_data.release.view import build_view, write_page
from tests.conftest import DEMO_IMAGES, demo_settings, write_recipe
from tests.test_audit import FLAGS, flawed_version
from tests.test_versions import derive_version

runner = CliRunner()
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1600",
]


def read_items(folder: Path) -> dict:
    text = (folder / "items.js").read_text()
    return json.loads(text.removeprefix("window.DRIM_VIEW = ").removesuffix(";\n"))


@pytest.fixture
def demo_recipe(demo_version, tmp_path):
    """A recipe over a copy of the demo's database, so the page can show its verdicts and drops."""
    shutil.copy(demo_version.parents[2] / "state.duckdb", tmp_path / "state.duckdb")
    return write_recipe(tmp_path, DEMO_IMAGES, **demo_settings())


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven through Debian's chromedriver; CI installs both (.ci/run), elsewhere they may lack."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if not (chromium and driver and webdriver):
        message = "needs selenium, chromium and chromedriver (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    profile = tempfile.mkdtemp(prefix="drim-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(options=options, service=Service(driver))
    yield session
    session.quit()
    shutil.rmtree(profile, ignore_errors=True)


def shown(browser) -> list:
    return browser.find_elements("css selector", "article.item")


def choose(browser, name: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", f"f-{name}")).select_by_value(value)


def console_errors(browser) -> list:
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_page_data_without_the_recipe(demo_version, tmp_path):
    result = build_view(demo_version, tmp_path / "view")
    data = read_items(tmp_path / "view")
    manifest = json.loads((demo_version / "manifest.json").read_text())
    assert result.kept == len(data["items"]) == sum(manifest["rows"].values()) and result.dropped == 0
    for item in data["items"]:
        assert (tmp_path / "view" / item["image"]).is_file()
        assert set(item["flags"]) <= set(AUDIT_FLAGS)
        if item["split"] == "sft":
            crops = [t["crop"] for t in item["turns"] if t["crop"]]
            assert len(crops) == len(item["zooms"]) >= 1
            assert all(Image.open(tmp_path / "view" / c).format == "JPEG" for c in crops)
            assert [t["role"] for t in item["turns"]][0] == "user" and item["turns"][-1]["role"] == "assistant"
        else:
            assert item["targets"] and all(0 <= v <= 1 for box in item["targets"] for v in box)


def test_the_page_in_headless_chromium(demo_version, demo_recipe, tmp_path, browser):
    out = tmp_path / "view"
    first_id = pq.read_table(sorted(demo_version.glob("data/rl/*.parquet"))[0], columns=["id"])["id"][0].as_py()
    con = duckdb.connect(str(tmp_path / "state.duckdb"))
    votes = [("vote", 0, "A", True), ("vote", 1, "A", True), ("vote", 2, "B", False), ("validator", 0, "yes", True)]
    con.executemany("INSERT INTO votes VALUES (?, ?, ?, ?, ?)", [(first_id, *v) for v in votes])
    repeat = con.execute("SELECT * FROM questions ORDER BY question_id LIMIT 1").fetchone()  # a dropped repeat
    con.execute("INSERT INTO questions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", ["repeat" + repeat[0], *repeat[1:]])
    con.execute("INSERT INTO verdicts VALUES (?, false, 'duplicate', 10.0, NULL)", ["repeat" + repeat[0]])
    con.execute("INSERT INTO drops VALUES ('verify', ?, 'duplicate', '')", ["repeat" + repeat[0]])
    con.close()
    result = runner.invoke(
        app, ["view", str(demo_version), "--recipe", str(demo_recipe), "--out", str(out), "--page-size", "5"]
    )
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(tmp_path / "state.duckdb"), read_only=True)
    questions = con.execute("SELECT count(*) FROM questions").fetchone()[0]
    drop_reasons = dict(
        con.execute(
            "SELECT reason, count(*) FROM (SELECT DISTINCT item_id, reason FROM drops WHERE stage IN "
            "('verify', 'trajectories')) GROUP BY reason"
        ).fetchall()
    )
    con.close()
    manifest = json.loads((demo_version / "manifest.json").read_text())
    kept = sum(manifest["rows"].values())
    assert questions > kept  # every question of the demo database is either in v1 or dropped with a reason

    browser.get((out / "index.html").as_uri())
    assert console_errors(browser) == []
    count = browser.find_element("id", "count")
    assert count.text == f"{questions} of {questions} items" and len(shown(browser)) == 5
    first = shown(browser)[0]
    assert first.get_attribute("data-id") == first_id
    cast = [v.text for v in first.find_elements("css selector", ".vote-role")]
    assert cast == ["VOTE A \u2713 A \u2713 B \u2717 2/3 correct", "VALIDATOR yes \u2713 1/1 correct"]

    choose(browser, "status", "kept")
    assert count.text == f"{kept} of {questions} items" and len(shown(browser)) == 5
    first_page = [a.get_attribute("data-id") for a in shown(browser)]
    browser.find_element("id", "next").click()
    assert not set(first_page) & {a.get_attribute("data-id") for a in shown(browser)}

    choose(browser, "split", "sft")
    assert count.text == f"{manifest['rows']['sft']} of {questions} items"
    card = shown(browser)[0]
    assert card.find_elements("css selector", ".figure svg rect.target")  # target boxes come from the database
    assert card.find_elements("css selector", ".figure svg rect.zoom")
    assert card.find_elements("css selector", ".turns img") and card.find_elements("css selector", ".verdict td")

    choose(browser, "split", "(all)")
    choose(browser, "status", "dropped")
    reason, n = sorted(drop_reasons.items())[0]
    choose(browser, "reason", reason)
    assert count.text == f"{n} of {questions} items"
    assert all(f"dropped: {reason}" in a.text for a in shown(browser))

    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # lazy images load once in view
    broken = "return [...document.images].filter(i => i.complete && i.naturalWidth === 0).length"
    assert browser.execute_script(broken) == 0 and console_errors(browser) == []

    artifacts = Path(os.environ.get("DRIM_TEST_ARTIFACTS") or tmp_path / "artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    choose(browser, "status", "(all)")
    choose(browser, "reason", "(all)")
    screenshot = artifacts / "review-page.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(screenshot).size[0] > 0


def test_ten_thousand_items_render_one_page_at_a_time(tmp_path, browser):
    folder = tmp_path / "big"
    (folder / "img").mkdir(parents=True)
    Image.new("RGB", (64, 48), (90, 120, 90)).save(folder / "img" / "one.jpg")
    types = ("colour", "count", "compare_brightness")
    items = [
        {
            "id": f"item{i:05d}",
            "status": "kept" if i % 10 else "dropped",
            "split": "sft" if i % 2 else "rl",
            "type": types[i % 3],
            "difficulty": "hard",
            "question": f"Question {i}?",
            "options": ["a", "b"],
            "answer": "A",
            "checker": "choice",
            "pattern": None,
            "image": "img/one.jpg",
            "targets": [[0.1, 0.1, 0.2, 0.2]],
            "zooms": [],
            "turns": [],
            "verdict": None,
            "votes": [],
            "reason": None if i % 10 else "visible_without_zoom",
        }
        for i in range(10_000)
    ]
    meta = {"dataset": "big", "version": 1, "parent": None, "rows": {"sft": 5000, "rl": 5000}, "page_size": 25}
    browser.get(write_page(folder, items, {**meta, "with_drops": True}).as_uri())
    assert console_errors(browser) == []
    assert browser.find_element("id", "count").text == "10000 of 10000 items" and len(shown(browser)) == 25
    assert browser.find_element("id", "page").text == "page 1 of 400"
    choose(browser, "type", "count")
    assert browser.find_element("id", "count").text == "3333 of 10000 items"
    assert [a.get_attribute("data-id") for a in shown(browser)] == [f"item{i:05d}" for i in range(1, 75, 3)]


def test_the_page_shows_each_rows_audit_flags_and_filters_by_them(tmp_path, browser):
    out = tmp_path / "view"
    result = build_view(flawed_version(tmp_path), out, page_size=25)
    assert result.kept == 9
    assert {item["id"]: item["flags"] for item in read_items(out)["items"]} == FLAGS

    browser.get((out / "index.html").as_uri())
    assert console_errors(browser) == []
    count = browser.find_element("id", "count")
    options = [o.get_attribute("value") for o in browser.find_elements("css selector", "#f-flag option")]
    assert options == ["(all)", "(any)", "(none)", *sorted({f for flags in FLAGS.values() for f in flags})]
    badges = {
        a.get_attribute("data-id"): [b.text for b in a.find_elements("css selector", ".badges .flag")]
        for a in shown(browser)
    }
    assert badges == FLAGS
    for flag, ids in [
        ("coordinates", ["r3", "s2"]),
        ("near_identical_zooms", ["s2", "s3"]),
        ("low_detail_gain", ["s2"]),
        ("(any)", ["r3", "r4", "s2", "s3"]),
        ("(none)", ["r1", "r2", "s1", "s4", "s5"]),
    ]:
        choose(browser, "flag", flag)
        assert count.text == f"{len(ids)} of 9 items"
        assert [a.get_attribute("data-id") for a in shown(browser)] == ids
    choose(browser, "split", "sft")  # filters combine
    assert [a.get_attribute("data-id") for a in shown(browser)] == ["s1", "s4", "s5"]
    assert console_errors(browser) == []


def test_drops_come_only_from_the_database_that_made_the_version(demo_version, demo_recipe, tmp_path):
    other, *_ = derive_version(demo_version, tmp_path / "v2")
    con = connect(tmp_path / "state.duckdb")
    try:
        with pytest.raises(DrimError, match="not exported from this recipe's database"):
            build_view(other, tmp_path / "view", con)
    finally:
        con.close()
