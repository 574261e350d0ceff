"""The demo page in headless Chromium: the browser the tests drive, and the README's screenshot.

    ml2p bench screenshot --model models/zoo/default --out docs/demo.png

photographs the page in use: a scikit-image sample photo (never a VOC photo: those may not be
copied into the repository) tagged by a real server, the top tag's relevance map overlaid.
`chromium()` is the one way this project starts a browser (Debian's `chromium` and
`chromium-driver`, driven by Selenium), with the network cut off but loopback.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
from pathlib import Path

from benchmarks import command_main

# Every host name fails to resolve and every other connection goes to a dead proxy, so a page
# that needs anything beyond this machine's loopback shows it; loopback itself is exempt from
# Chromium's proxy (its implicit bypass rules) and 127.0.0.1 needs no resolver.
OFFLINE_FLAGS = ("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                 "--proxy-server=http://127.0.0.1:9")
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
SCREENSHOT_LABELS = ["cat", "dog", "person", "sofa", "tree", "a red car", "whiskers", "grass"]


class NoBrowser(RuntimeError):
    """No Chromium or chromedriver here, or the browser would not start (the message says)."""


def chromium(width: int = 1280, height: int = 900, offline: bool = True):  # noqa: ANN201
    """A headless Chromium under Selenium (a `selenium.webdriver.Chrome`). Raises NoBrowser
    when it cannot start; never downloads a browser or a driver."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        raise NoBrowser(f"selenium is not installed ({exc}): pip install -e '.[dev]'") from None
    binary = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        raise NoBrowser("no chromium / chromedriver on PATH (Debian: apt-get install chromium "
                        "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={width},{height}", "--hide-scrollbars",
                 *(OFFLINE_FLAGS if offline else ())):
        options.add_argument(flag)
    try:
        # an explicit driver path: Selenium Manager would otherwise try to fetch one
        return webdriver.Chrome(options=options, service=Service(driver_path))
    except WebDriverException as exc:
        raise NoBrowser(f"chromium did not start: {exc.msg}") from None


def set_viewport(driver, width: int, height: int) -> None:  # noqa: ANN001 - a Selenium driver
    """The page's layout viewport, exactly (the window's outer size includes no chrome in
    headless mode, but the device metrics override says so outright)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


def wait_for(driver, condition, timeout: float = 30):  # noqa: ANN001, ANN201
    """`condition(driver)` once truthy (Selenium's WebDriverWait)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def tag_on_page(driver, photo: Path, labels: list[str]) -> list:  # noqa: ANN001
    """Choose `photo`, type `labels`, press the page's Tag button; the tag buttons shown."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "file").send_keys(str(Path(photo).resolve()))
    box = driver.find_element(By.ID, "labels")
    box.clear()
    box.send_keys("\n".join(labels))
    before = driver.execute_script("return document.getElementById('tags').dataset.request;")
    driver.find_element(By.ID, "submit").click()
    wait_for(driver, lambda d: d.execute_script(
        "return document.getElementById('tags').dataset.request;") != before
        or d.find_element(By.ID, "error").is_displayed())
    return driver.find_elements(By.CSS_SELECTOR, "#tags .tag")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="models/zoo/default", help="artifact dir")
    parser.add_argument("--out", type=Path, default=Path("docs/demo.png"))
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=940)


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image
    from skimage import data

    from benchmarks import serve_bench, serve_compare

    with tempfile.TemporaryDirectory(prefix="ml2p-screenshot-") as tmp:
        # Chelsea the cat, scikit-image's sample photo (CC0; NOTICE)
        photo = Path(tmp) / "chelsea.jpg"
        Image.fromarray(np.asarray(data.chelsea())).save(photo, quality=92)
        proc, url, _ = serve_bench._start_server(Path(args.model), Path(tmp))
        driver = chromium(args.width, args.height)
        try:
            set_viewport(driver, args.width, args.height)
            driver.get(url + "/")
            tags = tag_on_page(driver, photo, SCREENSHOT_LABELS)
            if not tags:
                raise SystemExit("the page showed no tags: "
                                 + driver.find_element("id", "error").text)
            # focus shows the map as hovering does, without scrolling the page's top away
            driver.execute_script("arguments[0].focus({preventScroll: true});"
                                  "window.scrollTo(0, 0);", tags[0])
            wait_for(driver, lambda d: d.find_element("id", "overlay").is_displayed())
            png = driver.get_screenshot_as_png()
        finally:
            driver.quit()
            serve_compare._stop(proc)
    # a 256-colour palette keeps the committed file small (the page is mostly flat colour)
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(256)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} kB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main("screenshot", __doc__, _add_arguments, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
