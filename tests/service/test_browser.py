"""The demo page (`/`) and the API docs (`/docs`) in a real browser: headless Chromium driven by
Selenium, against a real server on the shipped model, with the browser's network cut off but
loopback (benchmarks.demo_page.OFFLINE_FLAGS). Skips only when no browser can start."""

from __future__ import annotations

import base64
import inspect
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.openapi.docs import get_swagger_ui_html
from server_harness import Server

from artifact.testing import write_tiny_artifact
from benchmarks.demo_page import NoBrowser, chromium, set_viewport, tag_on_page, wait_for

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "models" / "zoo" / "default"
VOC_VAL = Path(os.environ.get("ML2P_VOC_ROOT", REPO.parent / "shared/data/voc2007")) / "images/val"
AXE = Path(__file__).parent / "vendor" / "axe-core-4.14.1" / "axe.min.js"
LABELS = ["dog", "person", "horse", "a red car", "sofa", "tree", "bicycle", "chair"]
KEY = "browser-key"
TOL = 1e-5  # the page shows the API's own numbers; only the JSON round trip may differ


@pytest.fixture(scope="module")
def browser():
    try:
        driver = chromium()
    except NoBrowser as exc:
        pytest.skip(f"no browser: {exc}")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    assert (DEFAULT / "manifest.json").is_file(), \
        "models/zoo/default is not built (`make model`; `make test` builds it)"
    srv = Server(DEFAULT, tmp_path_factory.mktemp("browser"), api_key=KEY, intra_op_threads=2,
                 max_body_bytes=2_000_000)
    try:
        yield srv.wait_ready(timeout=120)
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def photo() -> Path:
    paths = sorted(VOC_VAL.glob("*.jpg"))
    assert paths, f"VOC images/val not found under {VOC_VAL} (ML2P_VOC_ROOT)"
    return paths[0]


@pytest.fixture
def page(browser, live):
    """The demo page freshly loaded, the key already given (the key test gives it itself)."""
    set_viewport(browser, 1280, 900)
    browser.get(live.url + "/")
    browser.execute_script("sessionStorage.setItem('ml2p-api-key', arguments[0]);", KEY)
    browser.get(live.url + "/")
    wait_for(browser, lambda d: d.find_element("id", "maps-note").text)
    return browser


def _api_tags(server: Server, photo: Path) -> list[dict]:
    """The API's answer for `photo` and LABELS, asked as the page asks (top 20), without maps."""
    response = httpx.post(
        f"{server.url}/v1/tag", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
        files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
        data={"labels": LABELS, "top_k": "20"})
    assert response.status_code == 200, response.text
    return response.json()["tags"]


def _in_flight(server: Server) -> float:
    """The server's `ml2p_requests_in_flight` gauge."""
    text = httpx.get(f"{server.url}/metrics").text
    return float(re.search(r"^ml2p_requests_in_flight (\S+)$", text, re.M).group(1))


def _shown(tags) -> list[dict]:  # noqa: ANN001 - Selenium elements
    return [{"label": t.get_attribute("data-label"), "rank": int(t.get_attribute("data-rank")),
             "score": float(t.get_attribute("data-score")),
             "probability": float(t.get_attribute("data-probability"))} for t in tags]


def _resources_elsewhere(driver) -> list[str]:  # noqa: ANN001
    """Every URL the page loaded (or tried to) that is not its own server's."""
    origin = driver.execute_script("return location.origin;")
    urls = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name);")
    return [u for u in urls if not (u.startswith(origin) or u.startswith("data:"))]


def _overlay_alpha(driver) -> int:  # noqa: ANN001
    """The largest alpha of the overlay canvas's pixels (0: nothing drawn)."""
    return driver.execute_script("""
        const c = document.getElementById('overlay');
        if (c.hidden || !c.width) return 0;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let most = 0;
        for (let i = 3; i < d.length; i += 4) most = Math.max(most, d[i]);
        return most;""")


def test_the_browser_is_cut_off_from_the_network(browser) -> None:
    from selenium.common.exceptions import WebDriverException

    # FastAPI's own Swagger UI script on its CDN: what /docs loaded before, and what no page of
    # this service may need. The browser's flags, not this machine's network, must refuse it.
    cdn = inspect.signature(get_swagger_ui_html).parameters["swagger_js_url"].default
    assert cdn.startswith("https://")
    with pytest.raises(WebDriverException, match="ERR_PROXY_CONNECTION_FAILED"):
        browser.get(cdn)


def test_the_page_asks_for_the_key_then_lists_the_vocabularies(browser, live) -> None:
    browser.get(live.url + "/")
    browser.execute_script("sessionStorage.clear();")
    browser.get(live.url + "/")  # the page itself needs no key
    form = wait_for(browser, lambda d: d.find_element("id", "key-form").is_displayed()
                    and d.find_element("id", "key-form"))
    assert browser.find_element("id", "error").get_attribute("data-status") == "401"
    assert browser.switch_to.active_element.get_attribute("id") == "key"
    assert _serious_axe_violations(browser) == []
    browser.find_element("id", "key").send_keys(KEY)
    form.find_element("css selector", "button").click()
    wait_for(browser, lambda d: len(d.find_elements("css selector", "#vocabulary option")) > 1)
    names = [o.get_attribute("value") for o in
             browser.find_elements("css selector", "#vocabulary option")][1:]
    answer = httpx.get(f"{live.url}/v1/vocabularies", headers={"Authorization": f"Bearer {KEY}"})
    assert names == answer.json()["vocabularies"]
    # and what the model offers: maps, up to the server's limit (ML2P_EXPLAIN_MAX_MAPS, 20)
    wait_for(browser, lambda d: d.find_element("id", "maps-note").text)
    assert browser.find_element("id", "maps-note").text == "At most 20; 0 for none."
    assert browser.find_element("id", "maps").get_attribute("max") == "20"
    assert browser.find_element("id", "model").text.startswith("Model: ml2p-lite0 ")
    assert not browser.find_element("id", "error").is_displayed()
    assert _resources_elsewhere(browser) == []


def test_ranked_tags_are_the_apis_answer(page, live, photo) -> None:
    shown = _shown(tag_on_page(page, photo, LABELS))
    expected = _api_tags(live, photo)
    assert [t["label"] for t in shown] == [t["label"] for t in expected]
    for got, want in zip(shown, expected, strict=True):
        assert got["rank"] == want["rank"]
        assert got["score"] == pytest.approx(want["score"], abs=TOL)
        assert got["probability"] == pytest.approx(want["probability"], abs=TOL)
    # the bars and percentages a person reads are those probabilities
    first = page.find_element("css selector", "#tags .tag .prob").text
    assert first == f"{100 * expected[0]['probability']:.1f} %"
    cost = page.find_element("id", "cost").text
    assert "total (ms)" in cost and "GFLOPs total" in cost
    assert _resources_elsewhere(page) == []


def test_a_dropped_photo_is_tagged_like_a_picked_one(page, photo) -> None:
    picked = _shown(tag_on_page(page, photo, LABELS))
    page.get(page.current_url)
    wait_for(page, lambda d: d.find_element("id", "maps-note").text)
    page.find_element("id", "labels").clear()
    page.find_element("id", "labels").send_keys(", ".join(LABELS))
    # what a drag from the file manager delivers: a drop event whose DataTransfer holds the file
    page.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], arguments[1], {type: 'image/jpeg'}));
        document.getElementById('drop').dispatchEvent(
            new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
        """, base64.b64encode(photo.read_bytes()).decode(), photo.name)
    assert page.find_element("id", "photo").is_displayed()
    page.find_element("id", "submit").click()
    wait_for(page, lambda d: d.find_elements("css selector", "#tags .tag")
             or d.find_element("id", "error").is_displayed())
    dropped = _shown(page.find_elements("css selector", "#tags .tag"))
    assert dropped == picked


def test_the_threshold_slider_hides_the_less_probable_tags(page, photo) -> None:
    shown = _shown(tag_on_page(page, photo, LABELS))
    slider = page.find_element("id", "threshold")
    cut = sorted(t["probability"] for t in shown)[len(shown) // 2]
    page.execute_script("arguments[0].value = arguments[1];"
                        "arguments[0].dispatchEvent(new Event('input'));", slider, cut)
    visible = [t.get_attribute("data-label") for t in
               page.find_elements("css selector", "#tags .tag") if t.is_displayed()]
    assert visible == [t["label"] for t in shown if t["probability"] >= round(cut, 2)]
    assert 0 < len(visible) < len(shown)


def test_hovering_or_focusing_a_tag_overlays_its_map(page, live, photo) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    tags = tag_on_page(page, photo, LABELS)
    assert tags, page.find_element("id", "error").text
    overlay = page.find_element("id", "overlay")
    assert not overlay.is_displayed()
    ActionChains(page).move_to_element(tags[1]).perform()
    wait_for(page, lambda d: overlay.is_displayed())
    assert overlay.get_attribute("data-label") == tags[1].get_attribute("data-label")
    assert _overlay_alpha(page) > 0
    assert "strongest at row" in page.find_element("id", "map-caption").text
    # the keyboard: focus shows the focused tag's map
    page.execute_script("arguments[0].focus();", tags[0])
    wait_for(page, lambda d: overlay.get_attribute("data-label")
             == tags[0].get_attribute("data-label"))


def test_keyboard_alone_reaches_every_control_and_tags(page, photo) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    first = tag_on_page(page, photo, LABELS)[0].get_attribute("data-label")
    # from the header's link, the page's first focusable element, onwards
    page.execute_script("document.querySelector('header a').focus();")
    order = []
    while first not in order and len(order) < 12:
        ActionChains(page).send_keys(Keys.TAB).perform()
        element = page.switch_to.active_element
        order.append(element.get_attribute("id") or element.get_attribute("data-label"))
    controls = ["file", "labels", "vocabulary", "top-k", "maps", "submit", "threshold", first]
    assert [c for c in order if c in controls] == controls, order
    assert page.find_element("id", "overlay").get_attribute("data-label") == first
    # Enter on the submit button, reached by Shift+Tab, tags the image again
    before = page.find_element("id", "tags").get_attribute("data-request")
    for _ in range(len(controls)):
        if page.switch_to.active_element.get_attribute("id") == "submit":
            break
        ActionChains(page).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
    assert page.switch_to.active_element.get_attribute("id") == "submit"
    ActionChains(page).send_keys(Keys.ENTER).perform()
    wait_for(page, lambda d: d.find_element("id", "tags").get_attribute("data-request")
             not in (before, None, ""))


def test_tagging_without_an_image_says_what_is_missing(page) -> None:
    page.find_element("id", "submit").click()
    assert page.find_element("id", "error").text == "Choose an image first."
    assert page.switch_to.active_element.get_attribute("id") == "file"


@pytest.mark.parametrize(("name", "content", "status", "says"), [
    ("notes.txt", b"this is not a picture\n", "400",
     "The server could not read this file as an image."),
    # over the server's body limit (2 MB here): refused from the headers, before the upload
    ("huge.jpg", b"\xff" * 3_000_000, "413", "Too large for this server."),
], ids=["not-an-image", "too-large"])
def test_an_api_error_gets_a_clear_message(page, tmp_path, name, content, status,
                                           says) -> None:
    upload = tmp_path / name
    upload.write_bytes(content)
    assert tag_on_page(page, upload, LABELS) == []
    error = page.find_element("id", "error")
    assert error.is_displayed()
    assert error.get_attribute("role") == "alert"
    assert error.get_attribute("data-status") == status
    assert error.text.startswith(says), error.text


def test_a_busy_server_gets_a_clear_message(browser, photo, tmp_path_factory) -> None:
    work = tmp_path_factory.mktemp("busy")
    # one request admitted at a time, each image batch held 3 s: a request in flight from
    # here leaves the page's request a 429
    srv = Server(write_tiny_artifact(work / "artifact"), work, max_concurrent_requests=1,
                 inference_delay_ms=3000, retry_after_s=2)
    try:
        browser.get(srv.wait_ready().url + "/")
        with ThreadPoolExecutor(1) as pool:
            holding = pool.submit(_api_tags, srv, photo)
            wait_for(browser, lambda _: _in_flight(srv) >= 1)
            assert tag_on_page(browser, photo, LABELS) == []
            assert holding.result()  # the held request itself was answered
        error = browser.find_element("id", "error")
        assert error.get_attribute("data-status") == "429"
        assert error.text.startswith("The server is busy.") and "Try again in 2 s." in error.text
    finally:
        srv.stop()


def test_a_model_without_maps_still_tags_and_says_so(browser, photo, tmp_path_factory) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    work = tmp_path_factory.mktemp("no-maps")
    srv = Server(write_tiny_artifact(work / "artifact", explain=False), work)
    try:
        browser.get(srv.wait_ready().url + "/")
        wait_for(browser, lambda d: d.find_element("id", "maps-note").text)
        tags = tag_on_page(browser, photo, LABELS)
        assert [t["label"] for t in _shown(tags)] == [
            t["label"] for t in _api_tags(srv, photo)]
        # the page read /v1/models first, so it asked for no map (no 422 to show)
        assert not browser.find_element("id", "error").is_displayed()
        assert not browser.find_element("id", "maps").is_enabled()
        note = browser.find_element("id", "maps-note").text
        assert note.startswith("No maps from this model:") and "without relevance maps" in note
        ActionChains(browser).move_to_element(tags[0]).perform()
        assert not browser.find_element("id", "overlay").is_displayed()
        assert browser.find_element("id", "map-caption").text.endswith("this model has none.")
    finally:
        srv.stop()


def _serious_axe_violations(driver) -> list[dict]:  # noqa: ANN001
    """axe-core's serious and critical violations on the page as it stands."""
    driver.execute_script(AXE.read_text())
    result = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        axe.run(document).then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact,
            nodes: v.nodes.map(n => n.target.join(' '))}))), e => done(String(e)));""")
    assert isinstance(result, list), result  # not an error string
    return [v for v in result if v["impact"] in ("serious", "critical")]


def test_axe_finds_no_serious_or_critical_violations(page, photo) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    tags = tag_on_page(page, photo, LABELS)
    ActionChains(page).move_to_element(tags[0]).perform()
    assert page.find_element("id", "overlay").is_displayed()
    assert _serious_axe_violations(page) == []
    # and with an error shown: no labels at all
    tag_on_page(page, photo, [])
    assert page.find_element("id", "error").get_attribute("data-status") == "422"
    assert "(field: labels" in page.find_element("id", "error").text
    assert _serious_axe_violations(page) == []


def test_no_horizontal_scroll_on_a_phone(page, photo) -> None:
    set_viewport(page, 375, 667)
    try:
        tag_on_page(page, photo, LABELS + ["a very long label that a person might type to see "
                                           "whether the page wraps it"])
        width = page.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth];")
        assert width[0] <= width[1], width
    finally:
        set_viewport(page, 1280, 900)


def test_docs_render_the_operations_offline(browser, live) -> None:
    html = httpx.get(f"{live.url}/docs").text + httpx.get(f"{live.url}/redoc").text
    assert re.findall(r"""(?:src|href)=["']?(?:https?:)?//""", html) == []
    browser.get(live.url + "/docs")
    wait_for(browser, lambda d: d.find_elements("css selector", ".opblock-summary-path"))
    paths = {e.get_attribute("data-path") or e.text for e in
             browser.find_elements("css selector", ".opblock-summary-path")}
    assert {"/v1/tag", "/v1/vocabularies", "/v1/models"} <= paths, paths
    assert _resources_elsewhere(browser) == []
    browser.get(live.url + "/redoc")
    wait_for(browser, lambda d: "/v1/tag" in d.find_element("tag name", "body").text)
