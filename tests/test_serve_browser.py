"""The page of ``calmcap serve`` in a real browser: headless Chromium driven by selenium (issue #14).

It opens the page of a real server (tiny checkpoint, an index of the embedded benchmark's clips),
uploads a clip through the file input, reads the caption, the anchor chart and the frames, runs
a search, shows a bad file's error, and takes a screenshot of the page. docs/serve_page.png (the
one docs/SERVE.md shows) is made by this test with a trained checkpoint::

    CALMCAP_SCREENSHOT_MODEL=runs/synth_tiny/model python -m pytest tests/test_serve_browser.py

which writes it to docs/ (``$CALMCAP_SCREENSHOT_DIR`` puts it elsewhere); on the tiny random
checkpoint the screenshot goes to the test's temporary folder. Skipped, saying why, only
where no browser is installed (Debian: ``apt-get install chromium chromium-driver``; pip: selenium).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="calmcap serve needs FastAPI (pip install 'calmcap[serve]')")
httpx = pytest.importorskip("httpx")

from calmcap.cli import main  # noqa: E402
from tests.serve_process import REPO, ServerProcess  # noqa: E402
from tests.test_pipeline import checkpoint_dirs, manifest_videos  # noqa: E402

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WAIT_SECONDS = 120
TOP_K = 4


def _browser() -> tuple[str, str]:
    """(browser, driver) executables, or skip saying what is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("no browser test: selenium is not installed (pip install selenium)")
    browser = next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no browser installed: apt-get install chromium chromium-driver "
                    f"(found browser={browser}, chromedriver={driver})")
    return browser, driver


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, make_model) -> str:
    # The tiny random checkpoint; docs/serve_page.png is made with a trained one, e.g.
    # CALMCAP_SCREENSHOT_MODEL=runs/synth_tiny/model (the page and the checks are the same).
    return os.environ.get("CALMCAP_SCREENSHOT_MODEL") or str(checkpoint_dirs(tmp_path_factory, make_model)["calm"])


@pytest.fixture(scope="module")
def videos(synth_small) -> list[Path]:
    return manifest_videos(synth_small, "test") + manifest_videos(synth_small, "test_ood")


@pytest.fixture(scope="module")
def server(model_dir, videos, tmp_path_factory):
    from calmcap.pipeline import build_index

    _browser()
    index = tmp_path_factory.mktemp("browser_index") / "index"
    build_index(videos, index, model_dir)
    process = ServerProcess(["--model", model_dir, "--index", str(index)])
    yield process
    assert process.terminate() == 0


@pytest.fixture(scope="module")
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = _browser()
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1000", "--hide-scrollbars"):
        options.add_argument(argument)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    yield chrome
    chrome.quit()


def _cli(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()


def _screenshot(driver, name: str, tmp_path: Path) -> Path:
    # docs/ holds the screenshot of a trained model's page; a run on the tiny random checkpoint keeps
    # its screenshot to itself (its captions are noise), unless told where to put it.
    default = REPO / "docs" if os.environ.get("CALMCAP_SCREENSHOT_MODEL") else tmp_path
    folder = Path(os.environ.get("CALMCAP_SCREENSHOT_DIR") or default)
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(2):  # the window's size changes the layout, and so the page's height
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, max(700, min(int(height) + 40, 2400)))
    driver.execute_script("window.scrollTo(0, 0)")
    path = folder / name
    assert driver.save_screenshot(str(path))
    return path


def test_the_page_captions_charts_and_searches(server, driver, videos, model_dir, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    info = httpx.get(f"{server.url}/v1/model").json()
    wait = WebDriverWait(driver, WAIT_SECONDS)
    driver.get(server.url + "/")
    wait.until(ec.text_to_be_present_in_element((By.ID, "model-line"), info["identity"]["name"]))
    assert "10 indexed videos" in driver.find_element(By.ID, "model-line").text

    # A bad file: the API's one-line reason, shown as an error.
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is a text file with a video's name\n" * 40)
    driver.find_element(By.ID, "file-input").send_keys(str(bad))
    wait.until(lambda d: "error" in d.find_element(By.ID, "caption-status").get_attribute("class"))
    status = driver.find_element(By.ID, "caption-status").text
    assert status.startswith("422: notes.mp4: not a video"), status

    # A clip: its caption (the CLI's), the frames the model saw, the chart (explain's numbers).
    video = videos[2]
    driver.find_element(By.ID, "file-input").send_keys(str(video))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart .bar-row")
               and d.find_element(By.ID, "caption-status").text == "")
    shown = driver.find_element(By.CSS_SELECTOR, "#captions li .caption-text").text
    (expected,) = json.loads(_cli(["caption", str(video), "--model", model_dir, "--json"]))
    assert shown == expected["caption"]
    assert driver.find_element(By.ID, "video-name").text == video.name
    frames = driver.find_elements(By.CSS_SELECTOR, "#frames img")
    seen = min(info["architecture"]["num_frames"], 12)  # the embedded benchmark's clips have 12 frames
    assert len(frames) == seen
    assert all(driver.execute_script("return arguments[0].naturalWidth", f) == info["architecture"]["image_size"]
               for f in frames)
    explained = json.loads(_cli(["explain", str(video), "--model", model_dir, "--json", "--caption", shown]))
    for kind, key in (("video", "video_anchors"), ("predicted", "predicted_caption_anchors"),
                      ("caption", "caption_anchors")):
        rows = driver.find_elements(By.CSS_SELECTOR, f"#chart .series.{kind} .bar-row")
        chart = [(r.get_attribute("data-label"), float(r.get_attribute("data-probability"))) for r in rows]
        assert chart == [(a["label"], pytest.approx(a["probability"], rel=1e-6)) for a in explained[key]]
    widths = [driver.execute_script("return arguments[0].getBoundingClientRect().width", bar)
              for bar in driver.find_elements(By.CSS_SELECTOR, "#chart .series.video .bar")]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1] > 0

    # A search: the API's top k, a frame each.
    query = driver.find_element(By.ID, "search-query")
    query.send_keys("a red circle moves to the left")
    top_k = driver.find_element(By.ID, "search-top-k")
    top_k.clear()
    top_k.send_keys(str(TOP_K))
    driver.find_element(By.ID, "search-button").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#search-results .hit")) == TOP_K)
    wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
                             for img in d.find_elements(By.CSS_SELECTOR, "#search-results .hit img")))
    api = httpx.get(f"{server.url}/v1/search", params={"q": "a red circle moves to the left", "top_k": TOP_K}).json()
    names = [hit.find_element(By.CSS_SELECTOR, ".name").text for hit in
             driver.find_elements(By.CSS_SELECTOR, "#search-results .hit")]
    assert names == [f"{h['rank']}. {Path(h['video']).name}" for h in api["results"]]

    path = _screenshot(driver, "serve_page.png", tmp_path)
    with Image.open(path) as image:
        assert image.size[0] >= 1400 * 0.9 and image.size[1] >= 700
