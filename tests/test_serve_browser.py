"""The explorer in a real browser: headless Chromium (Debian packages ``chromium`` and ``chromium-driver``).

The built-in model over the built-in photos: open the explorer, explain a second class, switch method and
layer, open a neuron, click a photo of the feature map. A tiny model over generated photos: the trust table,
uploads through the page, and names that would be HTML. Screenshots go to ``$DEEPSCOPE_ARTIFACTS`` (default
``artifacts/`` in the repository, git-ignored); the page must log no console error.
"""

from __future__ import annotations

import time

import pytest

from serve_helpers import EVIL_FILE, EVIL_NAME, ServerThread, photo_folder, tiny_explorer
from test_report_browser import artifacts_dir, browser  # noqa: F401  (the browser fixture)

pytestmark = pytest.mark.browser

ALL_MAPS = "return document.getElementById('map-progress').textContent.startsWith('all')"


def wait_for(driver, script: str, timeout: float = 900, *args):
    """Poll ``script`` in the page until it returns something truthy (fail after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script, *args)
        if value:
            return value
        time.sleep(0.25)
    page = driver.execute_script(
        "return ['target-chip', 'map-progress', 'class-error', 'upload-error', 'status-text', 'photo-name']"
        ".map(id => id + ': ' + document.getElementById(id).textContent).join(' | ')")
    raise AssertionError(f"timed out waiting for: {script} ({page})")


def screenshot(driver, name: str) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1360, min(max(height, 900) + 140, 6000))
    driver.execute_script("window.scrollTo(0, 0)")
    assert driver.save_screenshot(str(artifacts_dir() / name))
    driver.set_window_size(1360, 1000)


def no_console_errors(driver, refused: tuple[str, ...] = ()) -> None:
    """No console error, other than Chromium's note on each request the test made the server refuse."""
    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"
              and not (entry["source"] == "network" and any(url in entry["message"] for url in refused))]
    assert severe == [], f"console errors: {severe}"


def viewer_overlay(driver) -> str | None:
    return driver.execute_script("const o = document.getElementById('viewer-overlay'); return o.hidden ? null : o.src;")


@pytest.fixture(scope="module")
def default_server():
    from deepscope.sample_images import builtin_images
    from deepscope.serve.app import create_app
    from deepscope.serve.explorer import Explorer, ServeSettings

    explorer = Explorer("default", builtin_images(), ServeSettings(feature_cache=False, optimise_steps=16))
    with ServerThread(create_app(explorer)) as server:
        yield server


def test_explore_the_default_model(browser, default_server):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    browser.get_log("browser")  # only this test's entries are checked at the end
    browser.set_window_size(1360, 1000)
    browser.get(default_server.url + "/")
    wait_for(browser, "return document.querySelectorAll('#method-strip .tile').length > 0", 300)
    assert browser.find_element(By.ID, "model-name").text == "efficientnet_lite0"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#photo-list .thumb")) == 5
    wait_for(browser, ALL_MAPS)
    assert browser.find_element(By.ID, "photo-name").text == "chelsea.png"
    predictions = browser.find_elements(By.CSS_SELECTOR, "#predictions button")
    assert len(predictions) == 5
    first_class = predictions[0].find_element(By.CSS_SELECTOR, ".name").text
    assert browser.find_element(By.ID, "target-chip").text == f"explains: {first_class} (predicted)"
    undecoded = browser.execute_script(
        "return Array.from(document.querySelectorAll('#method-strip img.overlay:not([hidden]), #viewer img'))"
        ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);")
    assert undecoded == []
    shown = browser.execute_script("return document.querySelectorAll('#method-strip img.overlay:not([hidden])').length")
    assert shown >= 11  # every method but those that do not fit this model
    gradcam_first = viewer_overlay(browser)
    assert gradcam_first and gradcam_first.startswith("data:image/png")
    screenshot(browser, "serve_photo.png")

    # a second class: every map is recomputed for it
    second = predictions[1]
    second_class = second.find_element(By.CSS_SELECTOR, ".name").text
    second_index = second.get_attribute("data-class")
    second.click()  # the list is redrawn with the second class pressed
    pressed = browser.find_elements(By.CSS_SELECTOR, '#predictions button[aria-pressed="true"]')
    assert [b.get_attribute("data-class") for b in pressed] == [second_index]
    assert browser.find_element(By.ID, "target-chip").text.startswith(f"explains: {second_class} (class ")
    wait_for(browser, ALL_MAPS)
    assert viewer_overlay(browser) != gradcam_first

    # another method, then another layer for the CAMs
    browser.find_element(By.CSS_SELECTOR, '#method-switch button[data-method="layercam"]').click()
    assert browser.find_element(By.ID, "showing-name").text == "layercam"
    before_layer = wait_for(browser, "const o = document.getElementById('viewer-overlay'); return o.hidden ? null : o.src;")
    Select(browser.find_element(By.ID, "layer-select")).select_by_value("blocks.4")
    wait_for(browser, ALL_MAPS)
    after_layer = viewer_overlay(browser)
    assert after_layer and after_layer != before_layer
    assert "layer blocks.4" in browser.find_element(By.ID, "showing-settings").text
    browser.find_element(By.CSS_SELECTOR, '#method-switch button[data-method="gradient"]').click()
    assert viewer_overlay(browser) != after_layer
    browser.find_element(By.CSS_SELECTOR, '#method-switch button[data-method="layercam"]').click()
    # the opacity slider changes the maps' opacity
    opacity = "return getComputedStyle(document.getElementById('viewer-overlay')).opacity;"
    assert float(browser.execute_script(opacity)) == pytest.approx(0.7)
    browser.execute_script("const s = document.getElementById('opacity'); s.value = 0.4; s.dispatchEvent(new Event('input'));")
    assert float(browser.execute_script(opacity)) == pytest.approx(0.4)
    browser.execute_script("const s = document.getElementById('opacity'); s.value = 0.7; s.dispatchEvent(new Event('input'));")
    # a typed class name
    browser.find_element(By.ID, "class-input").send_keys("tabby cat" + Keys.ENTER)
    wait_for(browser, "return document.getElementById('target-chip').textContent.includes('tabby')", 60)
    wait_for(browser, ALL_MAPS)
    browser.find_element(By.ID, "class-input").clear()
    browser.find_element(By.ID, "class-input").send_keys("unicorn" + Keys.ENTER)
    wait_for(browser, "return !document.getElementById('class-error').hidden", 60)
    assert "unknown class 'unicorn'" in browser.find_element(By.ID, "class-error").text
    screenshot(browser, "serve_second_class_layer.png")

    # a neuron: its top crops with guided backprop, and its optimised image
    browser.find_element(By.ID, "tab-neurons").click()
    Select(browser.find_element(By.ID, "neuron-layer")).select_by_value("blocks.5")
    channel = browser.find_element(By.ID, "neuron-channel")
    channel.clear()
    channel.send_keys("7")
    browser.find_element(By.ID, "neuron-show").click()
    wait_for(browser, "return document.querySelectorAll('#neuron-crops .crop').length === 5")
    assert "blocks.5, channel 7" in browser.find_element(By.ID, "neuron-title").text
    wait_for(browser, "const i = document.getElementById('optimised-image'); return !i.hidden && i.naturalWidth > 0")
    assert "16 steps" in browser.find_element(By.ID, "optimised-caption").text
    screenshot(browser, "serve_neuron.png")
    browser.find_elements(By.CSS_SELECTOR, "#neuron-crops .crop")[0].click()  # opens its photo
    assert browser.find_element(By.ID, "view-photos").is_displayed()

    # the feature space: click a photo of the map for its neighbours
    browser.find_element(By.ID, "tab-features").click()
    wait_for(browser, "return document.querySelectorAll('#scatter .pt').length === 5")
    point = browser.find_elements(By.CSS_SELECTOR, "#scatter .pt")[2]
    photo = point.get_attribute("data-photo")
    point.click()
    wait_for(browser, "return !document.getElementById('neighbours-body').hidden")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#nn-features .nn")) == 4
    assert len(browser.find_elements(By.CSS_SELECTOR, "#nn-pixels .nn")) == 4
    chosen = browser.find_element(By.CSS_SELECTOR, f'#scatter .pt[data-photo="{photo}"]')
    assert "chosen" in chosen.get_attribute("class")
    screenshot(browser, "serve_features.png")
    places = ("return Array.from(document.querySelectorAll('#scatter .pt'))"
              ".map(g => [g.getAttribute('data-photo'), g.transform.baseVal.consolidate().matrix.e])")
    before = dict(browser.execute_script(places))
    browser.find_element(By.ID, "zoom-in").click()  # around the chosen photo, which stays where it is
    after = dict(browser.execute_script(places))
    assert after[photo] == pytest.approx(before[photo], abs=0.2)
    assert any(abs(after[p] - before[p]) > 5 for p in before if p != photo)
    no_console_errors(browser, refused=("/api/classes/resolve?name=unicorn",))


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    from deepscope.serve.app import create_app

    explorer = tiny_explorer(photo_folder(tmp_path_factory.mktemp("tiny") / "photos"))
    with ServerThread(create_app(explorer)) as server:
        yield server


def test_trust_table_uploads_and_names_as_text(browser, tiny_server, tmp_path):  # noqa: F811
    from PIL import Image
    from selenium.webdriver.common.by import By

    browser.get_log("browser")
    browser.set_window_size(1360, 1000)
    browser.get(tiny_server.url + "/")
    wait_for(browser, ALL_MAPS, 300)
    # the photo named like HTML and the class named like HTML are text, nothing was injected
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#photo-list .thumb span")]
    assert EVIL_FILE in names
    browser.find_elements(By.CSS_SELECTOR, "#photo-list .thumb")[0].click()
    assert browser.find_element(By.ID, "photo-name").text == EVIL_FILE
    wait_for(browser, ALL_MAPS)
    assert browser.execute_script("return document.querySelectorAll('img[src=\"x\"], svg[onload]').length") == 0
    options = browser.execute_script("return Array.from(document.querySelectorAll('#class-names option')).map(o => o.value)")
    assert EVIL_NAME in options
    browser.find_element(By.ID, "class-input").send_keys("9")
    browser.find_element(By.CSS_SELECTOR, "#class-form button").click()  # the button, this time
    wait_for(browser, "return document.getElementById('target-chip').textContent.includes('class 9')", 60)
    assert browser.find_element(By.ID, "target-chip").text == f"explains: {EVIL_NAME} (class 9)"
    assert not browser.title.startswith("pwned")

    # uploads through the page: a photo is added and shown; a text file is refused with the server's reason
    Image.new("RGB", (64, 48), (200, 40, 40)).save(tmp_path / "red <img src=y onerror=alert(3)>.png")
    (tmp_path / "notes.png").write_text("not an image")
    upload = browser.find_element(By.ID, "file")
    upload.send_keys(str(tmp_path / "notes.png"))
    wait_for(browser, "return !document.getElementById('upload-error').hidden", 60)
    assert "not an image file" in browser.find_element(By.ID, "upload-error").text
    upload.send_keys(str(tmp_path / "red <img src=y onerror=alert(3)>.png"))
    wait_for(browser, "return document.getElementById('photo-name').textContent === 'red <img src=y onerror=alert(3)>.png'", 60)
    assert browser.find_element(By.ID, "upload-error").is_displayed() is False
    wait_for(browser, ALL_MAPS)

    # the trust table, filled in row by row in the background
    browser.find_element(By.ID, "tab-trust").click()
    from deepscope.catalogue import method_names

    count = len(method_names())  # one row per method of the catalogue
    wait_for(browser, f"return document.querySelectorAll('#trust-body tr.pending').length === {count}", 60)
    browser.find_element(By.ID, "trust-start").click()
    wait_for(browser, "return document.getElementById('trust-state').textContent.startsWith('done')", 600)
    rows = browser.find_elements(By.CSS_SELECTOR, "#trust-body tr")
    assert len(rows) == count and not browser.find_elements(By.CSS_SELECTOR, "#trust-body tr.pending")
    assert rows[-1].find_elements(By.TAG_NAME, "td")[0].text == "center"
    screenshot(browser, "serve_trust_tiny.png")
    no_console_errors(browser, refused=("/api/photos - ",))
