"""`inspect` writes report.html: one self-contained page, readable offline, listing every flagged image."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from urllib.parse import unquote, urlparse

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from runtime_images import part, write_png
from runtime_models import build_deviation_model

from inspector.cli import cli
from inspector.runtime.html_report import THUMBNAIL_SIDE, score_histogram_svg

VOID = {"meta", "img", "br", "hr", "input", "link", "col", "area", "base", "source", "wbr"}
URL_ATTRIBUTES = {"href", "src", "srcset", "action", "data", "poster", "xlink:href"}


class Page(HTMLParser):
    """Checks that every element is closed in order and gathers the links, images, cells and SVG shapes."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.images: list[dict[str, str]] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.section = ""
        self.flagged_cells: list[str] = []
        self._in_h2 = self._in_flagged_name = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append(tag)
        self.urls += [value for name, value in attrs if name in URL_ATTRIBUTES and value]
        if "style" in attributes and "url(" in attributes["style"]:
            self.errors.append(f"style with url() on <{tag}>")
        if tag == "img":
            self.images.append(attributes)
        self._in_h2 = tag == "h2"
        self._in_flagged_name = tag == "span" and attributes.get("class") == "anomalous"
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.open.pop()

    def handle_endtag(self, tag):
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.open[-1] if self.open else 'nothing'}")
            return
        self.open.pop()
        self._in_h2 = self._in_flagged_name = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_h2:
            self.section = data.strip()
        elif self.section == "Flagged images" and self._in_flagged_name:
            self.flagged_cells.append(data)

    @classmethod
    def of(cls, text: str) -> Page:
        page = cls()
        page.feed(text)
        page.close()
        return page


@pytest.fixture
def inspected(tmp_path):
    """A folder with sub-folders: 4 normal parts, 3 with a defect (one in each place), 1 unreadable file."""
    photos = tmp_path / "photos"
    (photos / "line1").mkdir(parents=True)
    (photos / "line2 & <b>").mkdir()
    write_png(photos / "top.png", part(48, 64))
    write_png(photos / "top_defect.png", part(48, 64, spot=(5, 5, 12, 12)))
    for index in range(3):
        write_png(photos / "line1" / f"ok{index}.png", part(40, 40))
    write_png(photos / "line1" / "scratch.png", part(40, 40, spot=(20, 20, 10, 10)))
    write_png(photos / "line2 & <b>" / "dent #1.png", part(40, 40, spot=(2, 2, 8, 8)))
    (photos / "line1" / "broken.png").write_bytes(b"not an image")
    model = build_deviation_model(tmp_path / "model.onnx")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["inspect", str(photos), "-r", "--model", str(model), "--out", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "report.jsonl").read_text().splitlines()]
    return out, records, result


def test_the_report_parses_lists_every_flagged_image_and_references_nothing_outside(inspected):
    out, records, result = inspected
    text = (out / "report.html").read_text(encoding="utf-8")
    page = Page.of(text)

    assert not page.errors and not page.open, (page.errors, page.open)
    flagged = sorted(r["path"] for r in records if r["label"] == "anomalous")
    assert flagged == ["line1/scratch.png", "line2 & <b>/dent #1.png", "top_defect.png"]
    assert sorted(page.flagged_cells) == flagged  # every flagged image, and no other, in the flagged table
    # Nothing from the network, no script: data: URIs (thumbnails) and links inside the output folder only.
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    without_embedded = re.sub(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", "", text)
    assert not re.search(r"[a-z]+://|//[a-z]|url\(|@import", without_embedded, re.IGNORECASE)
    links = [url for url in page.urls if not url.startswith("data:image/jpeg;base64,")]
    for url in links:
        parsed = urlparse(url)
        assert not parsed.scheme and not parsed.netloc and not url.startswith("/"), url
        target = (out / unquote(url)).resolve()
        assert target.is_file() and target.is_relative_to(out.resolve()), url
    assert sorted(unquote(url) for url in links) == sorted(
        r["overlay"] for r in records if r["label"] == "anomalous"
    )
    # One embedded thumbnail per flagged image, each a decodable JPEG no larger than the thumbnail side.
    assert len(page.images) == 3
    for image in page.images:
        data = base64.b64decode(image["src"].split(",", 1)[1])
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert decoded is not None and max(decoded.shape[:2]) <= THUMBNAIL_SIDE
    assert "report.html" in result.output


def test_the_report_counts_each_folder_shows_the_histogram_and_the_slowest_images(inspected):
    out, records, _ = inspected
    text = (out / "report.html").read_text(encoding="utf-8")
    page = Page.of(text)
    words = " ".join(" ".join(page.text).split())
    # Per folder: images, anomalous, normal, unreadable, share.
    assert ". 2 1 1 0 50.0%" in words
    assert "line1 5 1 3 1 25.0%" in words
    assert "line2 & <b> 1 1 0 0 100.0%" in words  # escaped in the file, shown as written
    assert "line2 &amp; &lt;b&gt;" in text
    assert "Unreadable files" in words and "line1/broken.png" in words
    assert "svg" in page.tags and "threshold 0.5" in words
    summary = json.loads((out / "summary.json").read_text())
    slowest = summary["slowest"]
    assert slowest and all(item["path"] in words for item in slowest)


def test_the_histogram_puts_each_score_in_its_bar_and_the_threshold_line_where_it_belongs():
    svg = score_histogram_svg([0.05, 0.06, 0.07, 0.95], threshold=0.5, bins=10)
    bars = re.findall(r'<rect [^>]*fill="([^"]+)"><title>([0-9.]+) to [0-9.]+: (\d+) images', svg)
    assert bars == [("#607d8b", "0.00", "3"), ("#d32f2f", "0.90", "1")]
    page = Page.of(svg)
    assert not page.errors and not page.open
    threshold_x = re.search(r'<line x1="([0-9.]+)"[^>]*stroke-dasharray', svg).group(1)
    assert float(threshold_x) == pytest.approx(48 + 0.5 * (640 - 48 - 16))


def test_a_folder_without_flagged_images_or_overlays_still_gets_a_report(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_png(photos / "ok.png", part(20, 20))
    model = build_deviation_model(tmp_path / "model.onnx")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["inspect", str(photos), "--model", str(model), "--out", str(out), "--save", "none", "-q"]
    )
    assert result.exit_code == 0, result.output
    page = Page.of((out / "report.html").read_text(encoding="utf-8"))
    assert not page.errors and "No image was flagged." in " ".join(page.text) and not page.images


def test_a_headless_browser_opens_the_report_offline_and_shows_every_flagged_image(inspected, tmp_path):
    """A bonus check where Debian's Chromium is installed: the page as the browser built it, with the
    network made unreachable, lists the flagged images and renders to a screenshot."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium installed (apt install chromium)")
    out, records, _ = inspected
    offline = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ]
    page_url = (out / "report.html").resolve().as_uri()
    dom = subprocess.run(
        [*offline, "--dump-dom", page_url], capture_output=True, text=True, timeout=120, check=False
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    built = Page.of(dom.stdout)
    flagged = sorted(r["path"] for r in records if r["label"] == "anomalous")
    assert sorted(built.flagged_cells) == flagged and len(built.images) == len(flagged)
    shot = tmp_path / "report.png"
    subprocess.run(
        [*offline, f"--screenshot={shot}", "--window-size=1100,1400", page_url],
        capture_output=True,
        timeout=120,
        check=False,
    )
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (1400, 1100)
    assert (image < 200).any(axis=2).mean() > 0.01  # something was drawn, not a blank page
