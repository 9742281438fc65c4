"""End-to-end: the real ``mmseqrec serve`` process on 127.0.0.1, driven by headless Chromium through Selenium.

Needs the system browser (Debian: ``apt-get install chromium chromium-driver``; ``.ci/run`` installs it) and the
``browser`` extra (selenium); skipped with the reason otherwise. ``MMSEQREC_SCREENSHOT=PATH`` saves a screenshot
of the side-by-side view (docs/serve-page.png is made so) and of SASRec beside an LLM recommender re-ranking its
top-10 (PATH with ``-llm`` before the suffix).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (fastapi, uvicorn) is not installed")
pytest.importorskip("selenium", reason="selenium (the browser extra) is not installed")
CHROME = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome"))
               if p), None)
DRIVER = shutil.which("chromedriver")
if not CHROME or not DRIVER:
    pytest.skip("no headless browser: install Debian's chromium and chromium-driver (see .ci/run)",
                allow_module_level=True)

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from serve_fixtures import build_served


def _llm_run(root: Path, paths: dict) -> Path | None:
    """A tiny MLLM-MSR run (random Llama) on the served dataset, or None without the llm extras."""
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return None
    from serve_fixtures import run_cli

    from mmseqrec.llmrec.random_lm import build_random_lm

    lm = build_random_lm(root / "lm", seed=1)
    lists, out = root / "lists.parquet", root / "llm"
    assert run_cli(["llmrec", "candidates", str(paths["data"]), "--out", str(lists), "--max-users", "30"]) == 0
    assert run_cli(["llmrec", "train", "--data", str(paths["data"]), "--candidates", str(lists), "--model", str(lm),
                    "--out", str(out), "--max-train-users", "2", "--max-length", "400"]) == 0
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    paths = build_served(root)
    llm = _llm_run(root, paths)
    port = _free_port()
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("MMSEQREC_API_KEY", None)
    log = tmp_path_factory.mktemp("log") / "server.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "mmseqrec", "serve", f"SASRec={paths['sasrec']}",
                                 f"GRU4Rec={paths['gru4rec']}", *([f"LLM={llm}"] if llm else []), "--port",
                                 str(port), "--candidates-from", "SASRec", "--n-candidates", "10"],
                                stdout=fh, stderr=fh, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        else:
            pytest.fail(f"server did not answer /health: {log.read_text()[-2000:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROME
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=opts)
    try:
        yield drv
    finally:
        drv.quit()


def _cards_loaded(drv, n_panels: int):
    panels = drv.find_elements(By.CSS_SELECTOR, "#results section.panel")
    if len(panels) != n_panels:
        return False
    imgs = drv.find_elements(By.CSS_SELECTOR, "#results .card img")
    if not imgs:
        return False
    return all(drv.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i) for i in imgs)


def test_page_builds_a_history_and_shows_cards_with_images(server, browser):
    browser.get(server + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#hits li img")) > 0)  # initial title search
    box = browser.find_element(By.ID, "q")
    box.send_keys("bamboo")
    wait.until(lambda d: all("bamboo" in li.text.lower() for li in d.find_elements(By.CSS_SELECTOR, "#hits li"))
               and d.find_elements(By.CSS_SELECTOR, "#hits li"))
    hits = browser.find_elements(By.CSS_SELECTOR, "#hits li")
    hits[0].click()
    hits[1].click()
    chips = browser.find_elements(By.CSS_SELECTOR, "#history .chip")
    assert len(chips) == 2
    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: _cards_loaded(d, 1))
    cards = browser.find_elements(By.CSS_SELECTOR, "#results .card")
    assert len(cards) == 8
    chosen = {c.get_attribute("data-item") for c in chips}
    assert not chosen & {c.get_attribute("data-item") for c in cards}  # history excluded
    assert all(c.find_element(By.CSS_SELECTOR, ".title").text for c in cards)
    assert "score" in cards[0].text and "item-description" in cards[0].text.lower()


def test_page_side_by_side_for_a_test_user(server, browser):
    browser.get(server + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#users option")) > 1)
    Select(browser.find_element(By.ID, "runB")).select_by_value("GRU4Rec")
    Select(browser.find_element(By.ID, "users")).select_by_index(3)
    wait.until(lambda d: _cards_loaded(d, 2))
    panels = browser.find_elements(By.CSS_SELECTOR, "#results section.panel")
    assert [p.get_attribute("data-run") for p in panels] == ["SASRec", "GRU4Rec"]
    assert browser.find_elements(By.CSS_SELECTOR, "#pref .pref")  # the user-preference summary
    assert len(browser.find_elements(By.CSS_SELECTOR, "#history .chip")) > 0
    shot = os.environ.get("MMSEQREC_SCREENSHOT")
    if shot:
        browser.save_screenshot(shot)


def test_page_shows_a_clear_error_for_an_empty_history(server, browser):
    browser.get(server + "/")
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#runA option")) >= 2)
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#msg .error"))
    assert "empty history" in browser.find_element(By.CSS_SELECTOR, "#msg .error").text


def test_page_shows_the_llm_reranking_and_the_preference_it_used(server, browser):
    browser.get(server + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#users option")) > 1)
    if not browser.find_elements(By.CSS_SELECTOR, "#runB option[value=LLM]"):
        pytest.skip("no LLM run (the llm extra, peft + transformers, is not installed)")
    Select(browser.find_element(By.ID, "runB")).select_by_value("LLM")
    Select(browser.find_element(By.ID, "users")).select_by_index(2)
    wait.until(lambda d: _cards_loaded(d, 2))
    panel = browser.find_element(By.CSS_SELECTOR, "#results section.panel[data-run=LLM]")
    assert "LLM re-rank of run:SASRec top-10" in panel.find_element(By.CSS_SELECTOR, ".badge").text
    pref = panel.find_element(By.CSS_SELECTOR, ".run-pref").text
    assert "enrich/user-preference.parquet" in pref  # the picked user's stored summary, not a stand-in
    assert 0 < len(panel.find_elements(By.CSS_SELECTOR, ".card")) <= 8
    shot = os.environ.get("MMSEQREC_SCREENSHOT")
    if shot:  # docs/serve-page.png -> docs/serve-page-llm.png
        browser.save_screenshot(str(Path(shot).with_name(Path(shot).stem + "-llm.png")))


def test_api_docs_render_offline(server, browser):
    browser.get(server + "/docs")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
    assert "/recommend" in browser.find_element(By.CSS_SELECTOR, "#swagger-ui").text
