"""The browser UI of ``tinysam-edge serve`` in real headless Chromium: upload, click, and the drawn mask is the API's mask."""

import io
import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")
from PIL import Image
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import PARITY, require
from serve_helpers import Client, Server

#: Set to a path (e.g. docs/serve_ui.png) to keep the page's screenshot there.
SCREENSHOT_ENV = "TINYSAM_EDGE_UI_SCREENSHOT"


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/setup_test_env.sh installs them where apt-get runs as root)")
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def canvas_pixels(element) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB")).astype(np.int16)


def wait_for_state(driver, state: str, timeout: float = 240) -> None:
    WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in (state, "error"))
    body = driver.find_element(By.TAG_NAME, "body")
    assert body.get_attribute("data-state") == state, driver.find_element(By.ID, "status").text


def test_click_draws_the_mask_the_api_returns(parity_model_dir, browser, tmp_path):
    from pycocotools import mask as mask_utils

    image_path = require(PARITY / "image.png")
    server = Server(parity_model_dir, tmp_path / "server.log").start()
    try:
        browser.get(f"http://127.0.0.1:{server.port}/")
        browser.find_element(By.ID, "file").send_keys(str(image_path))
        wait_for_state(browser, "ready")
        canvas = browser.find_element(By.ID, "view")
        before = canvas_pixels(canvas)
        h, w = before.shape[:2]
        assert (w, h) == Image.open(image_path).size, "the canvas is scaled; the test needs it 1:1"
        x, y = 420, 240
        ActionChains(browser).move_to_element_with_offset(canvas, x - w // 2, y - h // 2).click().perform()
        wait_for_state(browser, "mask")
        after = canvas_pixels(canvas)
        prompt = json.loads(browser.find_element(By.TAG_NAME, "body").get_attribute("data-prompt"))
        assert np.abs(np.array(prompt["points"][0]) - [x, y]).max() <= 2

        image_id = browser.find_element(By.TAG_NAME, "body").get_attribute("data-image-id")
        reply = Client(server.port).post_json(f"/v1/images/{image_id}/predict", prompt)
        api_mask = mask_utils.decode(reply.json()["masks"][0]["segmentation"]).astype(bool)
        drawn = np.abs(after - before).sum(axis=2) > 24
        yy, xx = np.mgrid[:h, :w]
        away = (xx - x) ** 2 + (yy - y) ** 2 > 8**2  # the click marker is drawn there
        iou = (drawn & api_mask & away).sum() / ((drawn | api_mask) & away).sum()
        assert 0.02 < api_mask.mean() < 0.9 and iou > 0.97, f"IoU {iou:.4f} between the drawn and the API mask"
        if os.environ.get(SCREENSHOT_ENV):
            browser.save_screenshot(os.environ[SCREENSHOT_ENV])
    finally:
        server.stop()
