"""The upload page, driven end to end in headless Chromium: the real app, a small model trained
for real, real sample images. Skipped where Chromium or chromedriver is not installed."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from chest_ct_classifier.images.labels import LABELS

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow  # trains a small model once per session, starts a browser

CHROMIUM = os.environ.get("CHROMIUM_BINARY") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = (
    os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
)
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--force-prefers-reduced-motion",  # no smooth scrolling: clicks land where they aim
)
DESKTOP = (1280, 900)
PHONE_WIDTH, PHONE_HEIGHT = 375, 812
UPLOAD_LIMIT_BYTES = 2 * 1024 * 1024
ANSWER_TIMEOUT = 90  # seconds: a prediction (with Grad-CAM) on a busy two-core machine
PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).is_file()]
    if missing:
        pytest.skip(f"headless browser test needs Chromium and chromedriver: {missing} not found")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# ---- helpers ---------------------------------------------------------------------------------


def by_id(driver: WebDriver, element_id: str) -> WebElement:
    return driver.find_element(By.ID, element_id)


def wait_for(driver: WebDriver, condition, timeout: float = 20, message: str = ""):
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message=message)


def click(driver: WebDriver, element: WebElement) -> None:
    driver.execute_script(
        "arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", element
    )
    element.click()


def open_page(driver: WebDriver, base_url: str) -> None:
    driver.get(f"{base_url}/")
    wait_for(
        driver,
        lambda d: "Checking" not in by_id(d, "model-status").text,
        message="the page never showed the result of GET /health",
    )


def choose_file(driver: WebDriver, path: Path) -> None:
    by_id(driver, "file-input").send_keys(str(path))
    # the preview appears once the image decodes; wait so the layout stops moving
    wait_for(
        driver,
        lambda d: d.execute_script("return document.getElementById('preview-image').complete"),
    )


def classify_and_wait(driver: WebDriver) -> None:
    click(driver, by_id(driver, "classify-button"))
    wait_for(
        driver,
        lambda d: (
            not by_id(d, "spinner").is_displayed()
            and (by_id(d, "result").is_displayed() or by_id(d, "error-message").is_displayed())
        ),
        timeout=ANSWER_TIMEOUT,
        message="no result and no error after Classify",
    )


def shown_probabilities(driver: WebDriver) -> dict[str, float]:
    """The percentages the page shows, by label (one bar per class)."""
    rows = by_id(driver, "probability-bars").find_elements(By.CSS_SELECTOR, ":scope > [data-label]")
    shown = {}
    for row in rows:
        text = row.find_element(By.CLASS_NAME, "probability-value").text.strip()
        match = PERCENT.match(text)
        assert match, f"not a percentage: {text!r}"
        shown[row.get_attribute("data-label")] = float(match.group(1))
    assert len(rows) == len(shown)
    return shown


def save_screenshot(driver: WebDriver, tmp_path: Path, name: str, phone: bool = False) -> None:
    """A whole-page screenshot into tmp_path, and into $CHEST_CT_SCREENSHOT_DIR when set."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    if phone:
        emulate_phone(driver, height=height)
    else:
        driver.set_window_size(DESKTOP[0], height + 140)  # + the window frame
    targets = [tmp_path]
    if os.environ.get("CHEST_CT_SCREENSHOT_DIR"):
        targets.append(Path(os.environ["CHEST_CT_SCREENSHOT_DIR"]))
    for folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(folder / f"{name}.png"))
    if phone:
        emulate_phone(driver)
    else:
        driver.set_window_size(*DESKTOP)


def emulate_phone(driver: WebDriver, height: int = PHONE_HEIGHT) -> None:
    """A 375 px wide mobile viewport (overlay scrollbars, like a phone)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": PHONE_WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": True},
    )


def javascript_errors(driver: WebDriver) -> list[str]:
    """Uncaught exceptions and console errors, not the expected 4xx/5xx network answers."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and entry.get("source") != "network"
    ]


def without_addresses(message: str) -> str:
    """The message without object addresses (``<_io.BytesIO object at 0x7f...>``)."""
    return re.sub(r"0x[0-9a-fA-F]+", "0x?", message.strip())


def requested_urls(driver: WebDriver) -> list[str]:
    return driver.execute_script(
        "return performance.getEntriesByType('resource').map(entry => entry.name)"
    )


# ---- tests -----------------------------------------------------------------------------------


def test_upload_classify_explain_and_errors_in_a_real_browser(
    browser, live_server, trained_model_path, sample_image_path, tmp_path
):
    base = live_server(trained_model_path, max_upload_bytes=UPLOAD_LIMIT_BYTES)
    image = sample_image_path("squamous_cell_carcinoma")
    with image.open("rb") as handle:
        expected = requests.post(f"{base}/predict", files={"file": handle}, timeout=60).json()

    open_page(browser, base)
    assert "not a diagnosis" in by_id(browser, "research-notice").text.lower()
    assert "Model ready" in by_id(browser, "model-status").text
    assert not by_id(browser, "result").is_displayed()
    assert not by_id(browser, "classify-button").is_enabled()  # nothing chosen yet

    # a real image through the file picker: the page shows what the API answers
    choose_file(browser, image)
    assert by_id(browser, "preview-image").is_displayed()
    classify_and_wait(browser)
    assert not by_id(browser, "error-message").is_displayed(), by_id(browser, "error-message").text
    label = by_id(browser, "result-label")
    assert label.text == expected["display_name"]
    assert label.get_attribute("data-label") == expected["label"]
    assert by_id(browser, "result-uncertain").is_displayed() == expected["uncertain"]
    shown = shown_probabilities(browser)
    assert list(shown) == list(LABELS)  # four bars, in model output order
    assert sum(shown.values()) == pytest.approx(100, abs=0.5)
    for name, percent in shown.items():
        assert percent == pytest.approx(expected["probabilities"][name] * 100, abs=0.051)
    predicted = browser.find_elements(By.CSS_SELECTOR, "#probability-bars > .predicted")
    assert [row.get_attribute("data-label") for row in predicted] == [expected["label"]]
    assert expected["model"]["version"] in by_id(browser, "model-info").text
    # a model file served outside its project has no evaluation, and the page says so
    assert "how often it is right is unknown" in by_id(browser, "model-measured").text

    # Grad-CAM overlay: the switch asks /predict?explain=1 and shows the PNG it sends
    click(browser, by_id(browser, "heatmap-toggle"))
    wait_for(
        browser,
        lambda d: d.execute_script(
            "const img = document.getElementById('heatmap-image');"
            "return img.offsetParent !== null && img.complete && img.naturalWidth > 0;"
        ),
        timeout=ANSWER_TIMEOUT,
        message="the Grad-CAM overlay never appeared",
    )
    heatmap = by_id(browser, "heatmap-image")
    assert heatmap.get_attribute("src").startswith("data:image/png;base64,")
    size = browser.execute_script("return arguments[0].naturalWidth", heatmap)
    assert size == expected["model"]["image_size"]  # the overlay is the model's input size
    assert not by_id(browser, "preview-image").is_displayed()  # shown instead of the preview
    assert by_id(browser, "result-label").text == expected["display_name"]
    save_screenshot(browser, tmp_path, "page_desktop")
    click(browser, by_id(browser, "heatmap-toggle"))
    assert not by_id(browser, "heatmap-image").is_displayed()
    assert by_id(browser, "preview-image").is_displayed()

    # not an image: the server's own sentence, in an alert; the old result is gone
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("These are notes, not a CT scan.\n")
    with not_an_image.open("rb") as handle:
        refusal = requests.post(f"{base}/predict", files={"file": handle}, timeout=60)
    assert refusal.status_code == 400
    choose_file(browser, not_an_image)
    classify_and_wait(browser)
    error = by_id(browser, "error-message")
    assert error.is_displayed()
    assert without_addresses(error.text) == without_addresses(refusal.json()["error"])
    assert not by_id(browser, "result").is_displayed()
    save_screenshot(browser, tmp_path, "page_error")

    # drag and drop: a file dropped on the zone is taken like a chosen one
    browser.execute_script(
        "const transfer = new DataTransfer();"
        "transfer.items.add(new File(['dropped text'], 'dropped.txt', {type: 'text/plain'}));"
        "document.getElementById('drop-zone').dispatchEvent("
        "  new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));"
    )
    wait_for(browser, lambda d: by_id(d, "classify-button").is_enabled())
    assert by_id(browser, "file-input").get_attribute("value").endswith("dropped.txt")
    assert not by_id(browser, "error-message").is_displayed()  # the old error is cleared

    # over the upload limit: refused in the browser, with the limit in the message
    too_big = tmp_path / "huge.png"
    too_big.write_bytes(image.read_bytes() + bytes(UPLOAD_LIMIT_BYTES))
    by_id(browser, "file-input").send_keys(str(too_big))
    wait_for(browser, lambda d: "huge.png" in by_id(d, "error-message").text)
    assert "2 MB" in by_id(browser, "error-message").text
    assert not by_id(browser, "classify-button").is_enabled()

    # phone width: the same flow, nothing wider than the screen
    emulate_phone(browser)
    open_page(browser, base)
    choose_file(browser, image)
    classify_and_wait(browser)
    assert by_id(browser, "result-label").text == expected["display_name"]
    widths = browser.execute_script(
        "return [document.documentElement.clientWidth, document.documentElement.scrollWidth]"
    )
    assert widths == [PHONE_WIDTH, PHONE_WIDTH], f"horizontal overflow at 375 px: {widths}"
    for element_id in ("drop-zone", "classify-button", "result", "probability-bars"):
        box = by_id(browser, element_id).rect
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE_WIDTH, element_id
    save_screenshot(browser, tmp_path, "page_phone", phone=True)

    # offline: everything the page loaded came from the app itself, and no script failed
    assert all(url.startswith((base, "data:", "blob:")) for url in requested_urls(browser))
    assert javascript_errors(browser) == []


def test_page_without_a_model_says_how_to_train_one(browser, live_server, tmp_path):
    base = live_server(model_path=None)
    health = requests.get(f"{base}/health", timeout=10)
    assert health.status_code == 503 and health.json()["status"] == "no_model"

    open_page(browser, base)
    status = by_id(browser, "model-status").text
    assert health.json()["message"].split("\n")[0].strip() in status
    assert not by_id(browser, "file-input").is_enabled()
    assert by_id(browser, "drop-zone").get_attribute("aria-disabled") == "true"
    assert not by_id(browser, "classify-button").is_enabled()
    assert by_id(browser, "research-notice").is_displayed()
    save_screenshot(browser, tmp_path, "page_no_model")
    assert javascript_errors(browser) == []


def photograph(path: Path) -> Path:
    """scikit-image's camera-man photograph (grey: only the model's features can refuse it)."""
    from skimage import data

    from chest_ct_classifier.datasets.reference_images_dataset import png_bytes

    path.write_bytes(png_bytes(data.camera()))
    return path


def test_a_photograph_is_refused_and_a_ct_slice_answered(
    browser, live_server, trained_model_path, sample_image_path, tmp_path
):
    base = live_server(trained_model_path)
    picture = photograph(tmp_path / "camera.png")
    with picture.open("rb") as handle:
        expected = requests.post(f"{base}/predict", files={"file": handle}, timeout=60).json()
    assert expected["status"] == "out_of_distribution" and expected["label"] is None

    open_page(browser, base)
    choose_file(browser, picture)
    classify_and_wait(browser)
    refusal = by_id(browser, "result-refused")
    assert refusal.is_displayed()
    assert "does not look like the chest CT slices" in refusal.text
    assert "No prediction" in refusal.text
    assert by_id(browser, "result-refused-reason").text == expected["ood"]["reason"]
    assert not by_id(browser, "result-answer").is_displayed()  # no type named, no confidence
    assert not by_id(browser, "result-probabilities").is_displayed()
    click(browser, by_id(browser, "details-toggle"))  # the raw output, behind the switch
    shown = shown_probabilities(browser)
    assert by_id(browser, "result-probabilities").is_displayed()
    for name, percent in shown.items():
        assert percent == pytest.approx(expected["probabilities"][name] * 100, abs=0.051)
    assert browser.find_elements(By.CSS_SELECTOR, "#probability-bars > .predicted") == []
    save_screenshot(browser, tmp_path, "page_refused")

    # then a chest CT slice: a normal answer, and no trace of the refusal
    choose_file(browser, sample_image_path("normal"))
    classify_and_wait(browser)
    assert not by_id(browser, "result-refused").is_displayed()
    label = by_id(browser, "result-label")
    assert label.is_displayed() and label.get_attribute("data-label") in LABELS
    assert by_id(browser, "result-probabilities").is_displayed()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#probability-bars > .predicted")) == 1
    assert javascript_errors(browser) == []


def test_a_dicom_file_is_classified_and_its_windowed_slice_shown(
    browser, live_server, trained_model_path, sample_image_path, tmp_path
):
    from tests.dicom_files import ct_dicom

    base = live_server(trained_model_path)
    dicom = tmp_path / "IM0001.dcm"
    dicom.write_bytes(ct_dicom(sample_image_path("normal").read_bytes(), "jpeg2000"))
    with dicom.open("rb") as handle:
        expected = requests.post(f"{base}/predict", files={"file": handle}, timeout=60).json()

    open_page(browser, base)
    by_id(browser, "file-input").send_keys(str(dicom))  # the browser cannot preview it
    wait_for(browser, lambda d: by_id(d, "preview-unavailable").is_displayed())
    classify_and_wait(browser)
    assert not by_id(browser, "error-message").is_displayed(), by_id(browser, "error-message").text
    assert by_id(browser, "result-label").get_attribute("data-label") == expected["label"]
    wait_for(
        browser,
        lambda d: d.execute_script(
            "const img = document.getElementById('preview-image');"
            "return img.offsetParent !== null && img.complete && img.naturalWidth > 0;"
        ),
        message="the windowed DICOM slice was never shown",
    )
    preview = by_id(browser, "preview-image")
    assert preview.get_attribute("src") == f"data:image/png;base64,{expected['preview_png']}"
    assert "DICOM slice" in by_id(browser, "frame-caption").text
    assert not by_id(browser, "preview-unavailable").is_displayed()
    save_screenshot(browser, tmp_path, "page_dicom")
    assert javascript_errors(browser) == []
