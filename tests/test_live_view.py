"""`watch --serve`: the live view in a real headless browser (Debian's Chromium and chromedriver, driven by
Selenium with both paths given, so nothing is downloaded), and its access rules over plain HTTP.

With INSPECTOR_SCREENSHOTS=1 the browser test saves docs/images/live_view.png for the README.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from runtime_images import part, write_png, write_video
from runtime_models import build_deviation_model

from inspector.cli import cli
from inspector.errors import InspectorError
from inspector.runtime.live_view import LiveView, parse_bind
from inspector.runtime.scoring import Scorer
from inspector.runtime.session import load_model
from inspector.runtime.sources import open_source
from inspector.runtime.watch import watch

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_deviation_model(tmp_path_factory.mktemp("model") / "model.onnx")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no Chromium and chromedriver installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    # The driver's path is given: Selenium Manager (which would download one) is never asked.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


class Run:
    """watch on a video played in real time, on a thread, with a live view; stopped by the test."""

    def __init__(self, tmp_path: Path, model: Path, frames: int = 1200):
        video = write_video(
            tmp_path / "line.avi", frames=frames, fps=20.0, size=(240, 320), defect_frames=range(0, frames, 3)
        )
        self.out = tmp_path / "out"
        self.view = LiveView(self.out, "127.0.0.1", 0, source_name="line.avi")
        self.stop = threading.Event()
        self.summary: dict = {}
        self.thread = threading.Thread(
            target=lambda: self.summary.update(
                watch(
                    open_source(str(video)),
                    Scorer(load_model(model)),
                    self.out,
                    headless=True,
                    realtime=True,
                    events="all",
                    stop=self.stop,
                    live_view=self.view,
                )
            )
        )
        self.thread.start()

    def events(self) -> list[dict]:
        return [json.loads(line) for line in (self.out / "events.jsonl").read_text().splitlines()]

    def end(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.view.close()


def wait_for(condition, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def frames_before_change(run: Run, threshold: float) -> list[dict]:
    """The frame events logged before the live view's change to ``threshold`` (once it is logged)."""

    def logged() -> list[dict] | None:
        events = run.events()
        changed = [
            i for i, e in enumerate(events) if e["event"] == "threshold" and e["threshold"] == threshold
        ]
        return [e for e in events[: changed[0]] if e["event"] == "frame"] if changed else None

    return wait_for(logged, what=f"the change to {threshold}")


def number(driver, element_id: str) -> int:
    return int(driver.find_element("id", element_id).text)


def test_the_page_shows_live_frames_and_counts_and_its_controls_change_verdicts_and_pause(
    tmp_path, model, browser
):
    from selenium.webdriver.common.keys import Keys

    run = Run(tmp_path, model)
    try:
        browser.get(run.view.url())
        frame = browser.find_element("id", "frame")
        first = int(wait_for(lambda: frame.get_attribute("data-seq"), what="a first frame"))
        wait_for(lambda: int(frame.get_attribute("data-seq")) > first + 5, what="more frames")
        # The image decodes after its src is set: wait for it rather than read it at once.
        wait_for(
            lambda: browser.execute_script("return arguments[0].naturalWidth", frame) == 320,
            what="a decoded 320-pixel frame",
        )
        wait_for(lambda: number(browser, "good") > 3 and number(browser, "anomalous") > 3, what="counts")
        assert float(browser.find_element("id", "fps").text) > 0
        assert browser.find_element("id", "latency").text != "–"
        strip = wait_for(
            lambda: browser.find_elements("css selector", "#strip .anomaly img"), what="the strip"
        )
        wait_for(
            lambda: browser.execute_script("return arguments[0].naturalWidth", strip[0]) > 0, what="thumb"
        )
        if os.environ.get("INSPECTOR_SCREENSHOTS") == "1":
            time.sleep(1.0)  # a full strip of anomalies
            (REPO / "docs" / "images").mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(REPO / "docs" / "images" / "live_view.png"))

        # Sensitivity all the way up (End on the slider): no frame scores above 1, all are normal.
        slider = browser.find_element("id", "threshold")
        slider.send_keys(Keys.END)
        wait_for(lambda: browser.find_element("id", "threshold-value").text == "1.00", what="the slider")
        before = frames_before_change(run, 1.0)
        wait_for(lambda: number(browser, "scored") > len(before) + 15, what="frames at the new threshold")
        # The page's count: the frames judged anomalous before the change, and none since.
        assert number(browser, "anomalous") == sum(event["label"] == "anomalous" for event in before)
        assert browser.find_element("id", "verdict").text.startswith("normal")

        # And all the way down: every frame (a gray part scores above 0) is anomalous.
        slider.send_keys(Keys.HOME)
        before = frames_before_change(run, 0.0)
        wait_for(lambda: number(browser, "scored") > len(before) + 15, what="frames at threshold 0")
        assert number(browser, "good") == sum(event["label"] == "normal" for event in before)
        assert browser.find_element("id", "verdict").text.startswith("anomalous")

        # Pause: nothing is scored until resumed.
        browser.find_element("id", "pause").click()
        wait_for(lambda: browser.find_element("id", "status").text == "paused", what="paused")
        time.sleep(0.3)
        held = number(browser, "scored")
        time.sleep(1.0)
        assert number(browser, "scored") == held and browser.find_element("id", "pause").text == "Resume"
        browser.find_element("id", "pause").click()
        wait_for(lambda: number(browser, "scored") > held + 5, what="scoring after resume")
    finally:
        run.end()

    events = run.events()
    changes = [event for event in events if event["event"] != "frame"]
    assert [(c["event"], c.get("threshold")) for c in changes] == [
        ("threshold", 1.0),
        ("threshold", 0.0),
        ("pause", None),
        ("resume", None),
    ]
    assert changes[0]["previous"] == 0.5 and changes[0]["by"] == "live view 127.0.0.1"
    frames = [event for event in events if event["event"] == "frame"]
    at_one = [event for event in frames if event["threshold"] == 1.0]
    at_zero = [event for event in frames if event["threshold"] == 0.0]
    assert at_one and all(event["label"] == "normal" for event in at_one)
    assert at_zero and all(event["label"] == "anomalous" for event in at_zero)
    assert {event["label"] for event in frames if event["threshold"] == 0.5} == {"normal", "anomalous"}


def test_a_non_local_bind_refuses_the_browser_without_its_token(tmp_path, browser):
    # 127.0.0.2 is a loopback address too, but not 127.0.0.1: it is treated as any other bind.
    view = LiveView(tmp_path, "127.0.0.2", 0, source_name="camera 0")
    view.start(0.5)
    try:
        assert view.token and len(view.token) >= 20
        browser.get(f"http://127.0.0.2:{view.port}/")
        assert "token required" in browser.find_element("tag name", "body").text
        browser.get(f"http://127.0.0.2:{view.port}/?token=not-{view.token}")
        assert "wrong token" in browser.find_element("tag name", "body").text
        browser.get(view.url(with_token=True))
        wait_for(lambda: browser.find_element("id", "status").text == "running", what="the page")
        assert browser.current_url == f"http://127.0.0.2:{view.port}/"  # the token left the address bar
        assert browser.find_element("id", "source").text == "camera 0"
    finally:
        view.close()


# --- access rules over plain HTTP -----------------------------------------------------------------------


def request(host: str, port: int, method: str, path: str, body: dict | None = None, headers=None):
    connection = http.client.HTTPConnection(host, port, timeout=10)
    data = None if body is None else json.dumps(body)
    sent = {"Content-Type": "application/json"} if body is not None else {}
    connection.request(method, path, body=data, headers={**sent, **(headers or {})})
    response = connection.getresponse()
    return response.status, response.read()


def test_only_images_inside_the_output_folder_are_served_and_controls_are_checked(tmp_path):
    out = tmp_path / "out"
    (out / "overlays").mkdir(parents=True)
    write_png(out / "overlays" / "frame_0000001.png", part(8, 8))
    (tmp_path / "secret.png").write_bytes((out / "overlays" / "frame_0000001.png").read_bytes())
    (out / "events.jsonl").write_text("{}\n")
    view = LiveView(out, "127.0.0.1", 0)
    view.start(0.5)
    port = view.port
    try:
        assert request("127.0.0.1", port, "GET", "/files/overlays/frame_0000001.png")[0] == 200
        for path in (
            "/files/../secret.png",
            "/files/%2e%2e/secret.png",
            "/files/overlays/../../secret.png",
            f"/files/{tmp_path / 'secret.png'}",
            "/files/events.jsonl",
            "/files/overlays/missing.png",
        ):
            assert request("127.0.0.1", port, "GET", path)[0] == 404, path
        # A name that resolves to this box but is not the loopback (DNS rebinding) is refused.
        assert request("127.0.0.1", port, "GET", "/state", headers={"Host": "evil.example:80"})[0] == 403
        # Controls: JSON only (no cross-site form posts), values checked.
        status, _ = request("127.0.0.1", port, "POST", "/control", headers={"Content-Type": "text/plain"})
        assert status == 415
        assert request("127.0.0.1", port, "POST", "/control", {"threshold": 1.5})[0] == 400
        assert request("127.0.0.1", port, "POST", "/control", {"paused": "yes"})[0] == 400
        status, body = request("127.0.0.1", port, "POST", "/control", {"threshold": 0.7})
        assert status == 200 and json.loads(body)["threshold_requested"] == 0.7
    finally:
        view.close()

    token_view = LiveView(out, "127.0.0.2", 0, token="line-one-secret")
    token_view.start(0.5)
    try:
        assert request("127.0.0.2", token_view.port, "GET", "/state")[0] == 401
        assert request("127.0.0.2", token_view.port, "POST", "/control", {"paused": True})[0] == 401
        bearer = {"Authorization": "Bearer line-one-secret"}
        assert request("127.0.0.2", token_view.port, "GET", "/state", headers=bearer)[0] == 200
    finally:
        token_view.close()


def test_serve_binds_127_0_0_1_by_default_and_prints_a_token_for_any_other_address(tmp_path, model):
    assert parse_bind("8080") == ("127.0.0.1", 8080)
    assert parse_bind("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_bind("[::1]:9000") == ("::1", 9000)
    with pytest.raises(InspectorError, match=r"expected \[HOST:\]PORT"):
        parse_bind("localhost:http")
    frames = tmp_path / "frames"
    frames.mkdir()
    write_png(frames / "a.png", part(20, 20))
    base = [
        "watch",
        "--model",
        str(model),
        "--source",
        str(frames),
        "--headless",
        "--out",
        str(tmp_path / "o"),
    ]

    served = CliRunner().invoke(cli, [*base, "--serve", "127.0.0.2:0"])

    assert served.exit_code == 0, served.output
    line = next(line for line in served.stderr.splitlines() if line.startswith("live view:"))
    assert "http://127.0.0.2:" in line and "/?token=" in line and "token is required" in line

    busy = LiveView(tmp_path, "127.0.0.1", 0)
    try:
        taken = CliRunner().invoke(cli, [*base, "--serve", str(busy.port)])
    finally:
        busy.close()
    assert taken.exit_code == 2 and "cannot listen there" in taken.stderr
