"""The report in a real browser: headless Chromium (Debian packages ``chromium`` and ``chromium-driver``).

Loads a small report from a file:// URL and checks: no console errors, every <img> decodes, the method
switcher and the opacity slider change what is shown, the lightbox opens. A screenshot goes to
``$DEEPSCOPE_ARTIFACTS`` (default ``artifacts/`` in the repository, git-ignored).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("DEEPSCOPE_ARTIFACTS") or REPO / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> Path:
    """The default model over 2 built-in photos: model and saliency sections."""
    from deepscope.models.zoo import load_model
    from deepscope.report import Cache, ReportContext, ReportSettings, write_report
    from deepscope.sample_images import builtin_images

    images = builtin_images()
    images = images.subset([0, 1])
    ctx = ReportContext(load_model("default"), images, ReportSettings(per_class=1, steps=4, progress=False),
                        Cache(tmp_path_factory.mktemp("cache")))
    return write_report(ctx, tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        message = "headless Chromium missing: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1600", "--hide-scrollbars"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _visible_overlay(driver, card):
    return driver.execute_script(
        "const o = arguments[0].querySelector('.viewer .overlay'); return o.hidden ? null : o.src;", card)


def test_report_in_chromium(browser, report_file):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.get(report_file.resolve().as_uri())
    browser.execute_script("return document.fonts ? document.fonts.ready : null")
    images = browser.find_elements(By.TAG_NAME, "img")
    assert images, "the page has no <img>"
    undecoded = browser.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);")
    assert undecoded == [], f"images that did not decode: {undecoded}"
    backgrounds = browser.execute_script(
        "return Array.from(document.querySelectorAll('.ph')).map(e => getComputedStyle(e).backgroundImage);")
    assert backgrounds and all(b.startswith('url("data:image/jpeg') for b in backgrounds)

    # the method switcher puts another map over the photo
    card = browser.find_element(By.CSS_SELECTOR, ".card")
    buttons = [b for b in card.find_elements(By.CSS_SELECTOR, ".switch button")
               if "na-method" not in (b.get_attribute("class") or "")]
    assert len(buttons) >= 2, "need two applicable methods to test switching"
    before = _visible_overlay(browser, card)
    buttons[1].click()
    after = _visible_overlay(browser, card)
    assert after and after != before
    assert buttons[1].get_attribute("aria-pressed") == "true"
    assert buttons[0].get_attribute("aria-pressed") == "false"
    assert card.find_element(By.CSS_SELECTOR, ".showing-name").text == buttons[1].get_attribute("data-method")

    # the slider changes the overlay's computed opacity
    opacity = "return getComputedStyle(arguments[0].querySelector('.viewer .overlay')).opacity;"
    assert float(browser.execute_script(opacity, card)) == pytest.approx(0.7)
    slider = browser.find_element(By.ID, "opacity")
    browser.execute_script("arguments[0].value = 0.25; arguments[0].dispatchEvent(new Event('input'));", slider)
    assert float(browser.execute_script(opacity, card)) == pytest.approx(0.25)
    browser.execute_script("arguments[0].value = 0.7; arguments[0].dispatchEvent(new Event('input'));", slider)

    # a thumbnail opens the lightbox, a click closes it
    card.find_element(By.CSS_SELECTOR, ".tile[data-method] .zoomable").click()
    box = browser.find_element(By.ID, "lightbox")
    assert box.is_displayed()
    assert box.find_element(By.CSS_SELECTOR, ".lb-content .overlay").get_attribute("src").startswith("data:image/png")
    ActionChains(browser).move_to_element_with_offset(box, 0, -box.size["height"] // 2 + 5).click().perform()
    assert not box.is_displayed()
    buttons[0].click()

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(height + 140, 12000))
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(artifacts_dir() / "report.png"))
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == [], f"console errors: {severe}"
