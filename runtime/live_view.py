"""`watch --serve`: a live view of the run in a browser, served from the box by the standard library.

One page (``live_view.html``, package data) polls a few routes of a ``ThreadingHTTPServer``:

- ``GET /frame.jpg?after=N``: the newest overlay as JPEG, once there is one newer than frame N (a long
  poll: it waits up to two seconds, then answers 204). Encoded once per frame, however many viewers.
- ``GET /state``: FPS, latency, counts of good and anomalous frames, the threshold, paused or not, and the
  latest anomalies (``GET /anomaly/ID.jpg`` is one's thumbnail, ``GET /files/overlays/...`` its overlay).
- ``POST /control`` with JSON ``{"threshold": 0.6}`` or ``{"paused": true}``: the watch loop applies it
  before its next frame and logs it in ``events.jsonl``.

Bound to 127.0.0.1 unless asked otherwise; any other address needs an access token (given, or generated
and printed), taken once from ``?token=`` and then kept in a same-site cookie, or sent as ``Authorization:
Bearer``. Requests to a local bind must name it in their ``Host`` (no DNS rebinding), a control must come
as JSON (no cross-site form posts), and only images inside the run's output folder are ever served.
The standard library is enough for these five routes at a viewer's pace, so ``--serve`` adds no dependency.
"""

from __future__ import annotations

import hmac
import json
import secrets
import socket
import threading
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import cv2
import numpy as np

from inspector.errors import InspectorError
from inspector.runtime.events import control_event, without_credentials
from inspector.runtime.result import Result
from inspector.runtime.scoring import Scorer, check_threshold

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
STRIP_SIZE = 8  # latest anomalies kept for the page
THUMB_WIDTH = 320
LONG_POLL_S = 2.0
JPEG_QUALITY = 80
COOKIE = "inspector_token"
SERVED_SUFFIXES = (".jpg", ".jpeg", ".png")


def parse_bind(spec: str) -> tuple[str, int]:
    """``--serve [HOST:]PORT`` as (host, port); HOST defaults to 127.0.0.1, ``[::1]:8080`` for IPv6."""
    text = spec.strip()
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]") or LOCAL_HOSTS[0]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InspectorError(f"--serve {spec!r}: expected [HOST:]PORT, such as 8080 or 0.0.0.0:8080")
    return host, int(port_text)


def is_local(host: str) -> bool:
    """True for the loopback names a token is not needed on (127.0.0.1, localhost, ::1)."""
    return host in LOCAL_HOSTS


class LiveView:
    """The state the page shows, shared between the watch loop (which calls :meth:`show` and
    :meth:`take_changes`) and the server's threads. Binds its port at construction, so a port in use is an
    error before the run starts."""

    def __init__(
        self, out_dir: str | Path, host: str = LOCAL_HOSTS[0], port: int = 0, token: str | None = None,
        source_name: str = "",
    ):  # fmt: skip
        self.out_dir = Path(out_dir).resolve()
        self.host = host
        self.token = token or (None if is_local(host) else secrets.token_urlsafe(18))
        self.source_name = without_credentials(source_name)
        self.paused = False
        self.threshold = 0.5
        self._lock = threading.Condition()
        self._frame: np.ndarray | None = None
        self._frame_seq = 0
        self._jpeg: tuple[int, bytes] = (0, b"")
        self._encode_lock = threading.Lock()
        self._snapshot: dict[str, Any] = {}
        self._last: dict[str, Any] | None = None
        self._strip: deque[dict[str, Any]] = deque(maxlen=STRIP_SIZE)
        self._thumbs: dict[int, bytes] = {}
        self._strip_seq = 0
        self._requests: list[tuple[str, Any, str]] = []
        self._closed = False
        try:
            server_class = _IPv6Server if ":" in host else _Server
            self._server = server_class((host, port), _Handler)
        except OSError as error:
            raise InspectorError(
                f"--serve {host}:{port}: cannot listen there ({error.strerror or error}); choose another port"
            ) from None
        self._server.view = self
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="live view", daemon=True)

    def url(self, with_token: bool = False) -> str:
        """The page's address; with ``with_token``, including the token when one is needed."""
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        shown = f"[{host}]" if ":" in host else host
        address = f"http://{shown}:{self.port}/"
        return address + (f"?token={self.token}" if with_token and self.token else "")

    # --- the watch loop's side ---------------------------------------------------------------------

    def start(self, threshold: float) -> None:
        """Begin serving; ``threshold`` is the run's normalised image threshold."""
        self.threshold = threshold
        self._thread.start()

    def show(self, overlay: np.ndarray, result: Result, snapshot: dict[str, Any]) -> None:
        """The newest frame: its overlay (BGR, not modified afterwards), verdict and the run's counts."""
        last = {
            "frame": result.frame,
            "label": result.verdict,
            "score": None if result.score is None else round(result.score, 4),
            "time": result.time,
        }
        thumb = None
        if result.anomalous:
            height, width = overlay.shape[:2]
            scale = min(1.0, THUMB_WIDTH / width)
            small = cv2.resize(overlay, (max(1, round(width * scale)), max(1, round(height * scale))))
            thumb = small
        with self._lock:
            self._frame = overlay
            self._frame_seq += 1
            self._snapshot = snapshot
            self._last = last
            if thumb is not None:
                self._strip_seq += 1
                self._strip.appendleft({**last, "id": self._strip_seq, "overlay": result.overlay})
                self._thumbs[self._strip_seq] = thumb
                kept = {item["id"] for item in self._strip}
                self._thumbs = {key: value for key, value in self._thumbs.items() if key in kept}
            self._lock.notify_all()

    def take_changes(self, scorer: Scorer) -> list[dict[str, Any]]:
        """Apply what viewers asked for since the last call; returns the events to log."""
        with self._lock:
            requests, self._requests = self._requests, []
        changes = []
        for kind, value, client in requests:
            if kind == "threshold" and value != scorer.image_threshold:
                previous, scorer.image_threshold = scorer.image_threshold, value
                self.threshold = value
                changes.append(
                    control_event("threshold", previous=previous, threshold=value, by=f"live view {client}")
                )
            elif kind == "paused" and value != self.paused:
                self.paused = value
                changes.append(control_event("pause" if value else "resume", by=f"live view {client}"))
        return changes

    def close(self) -> None:
        """Stop serving (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._lock.notify_all()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    # --- the server's side -----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        with self._lock:
            pending = [value for kind, value, _ in self._requests if kind == "threshold"]
            return {
                "source": self.source_name,
                "frame_seq": self._frame_seq,
                "paused": self.paused,
                "threshold": self.threshold,
                "threshold_requested": pending[-1] if pending else None,
                "last": self._last,
                **self._snapshot,
                "anomalies": [dict(item) for item in self._strip],
            }

    def request(self, kind: str, value: Any, client: str) -> None:
        with self._lock:
            self._requests.append((kind, value, client))

    def frame_jpeg(self, after: int, wait: float) -> tuple[int, bytes, dict[str, Any]] | None:
        """The newest frame as (number, JPEG, its verdict) once it is newer than ``after``; None after
        ``wait`` seconds."""
        with self._lock:
            self._lock.wait_for(lambda: self._frame_seq > after or self._closed, wait)
            if self._frame is None or self._frame_seq <= after:
                return None
            seq, frame, last = self._frame_seq, self._frame, self._last or {}
        with self._encode_lock:
            if self._jpeg[0] != seq:
                self._jpeg = (seq, _encode(frame))
            return seq, self._jpeg[1], last

    def thumbnail(self, strip_id: int) -> bytes | None:
        with self._lock:
            thumb = self._thumbs.get(strip_id)
        return None if thumb is None else _encode(thumb)

    def output_file(self, relative: str) -> Path | None:
        """An image inside the output folder, or None (outside it, not an image, not a file)."""
        if "\x00" in relative:
            return None
        candidate = (self.out_dir / relative).resolve()
        if not candidate.is_relative_to(self.out_dir) or candidate.suffix.lower() not in SERVED_SUFFIXES:
            return None
        return candidate if candidate.is_file() else None

    def allowed(self, token: str | None) -> bool:
        return self.token is None or (token is not None and hmac.compare_digest(token, self.token))


def _encode(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return data.tobytes() if ok else b""


def page_html() -> str:
    """The live view's page (package data next to this module)."""
    return resources.files("inspector.runtime").joinpath("live_view.html").read_text(encoding="utf-8")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    view: LiveView


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "inspector-live"
    sys_version = ""

    # --- routing ---------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        view = self.server.view
        if not self._host_ok():
            return self._text(HTTPStatus.FORBIDDEN, "this address is not the one the live view listens on")
        if url.path == "/" and "token" in query and view.token is not None:
            if not view.allowed(query["token"][0]):
                return self._text(HTTPStatus.UNAUTHORIZED, "wrong token: open the URL that watch printed")
            self.send_response(HTTPStatus.SEE_OTHER)  # keep the token out of the address bar and history
            self.send_header("Location", "/")
            self.send_header("Set-Cookie", f"{COOKIE}={view.token}; HttpOnly; SameSite=Strict; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if not view.allowed(self._token()):
            return self._text(HTTPStatus.UNAUTHORIZED, "token required: open the URL that watch printed")
        if url.path == "/":
            return self._send(HTTPStatus.OK, page_html().encode("utf-8"), "text/html; charset=utf-8")
        if url.path == "/state":
            return self._json(view.state())
        if url.path == "/frame.jpg":
            after = _int(query.get("after", ["0"])[0])
            found = view.frame_jpeg(after, LONG_POLL_S)
            if found is None:
                return self._send(HTTPStatus.NO_CONTENT, b"", "text/plain")
            seq, jpeg, last = found
            headers = {"X-Frame-Seq": str(seq), "X-Frame-Index": str(last.get("frame")),
                       "X-Frame-Label": str(last.get("label")), "X-Frame-Score": str(last.get("score"))}  # fmt: skip
            return self._send(HTTPStatus.OK, jpeg, "image/jpeg", headers)
        if url.path.startswith("/anomaly/") and url.path.endswith(".jpg"):
            thumb = view.thumbnail(_int(url.path[len("/anomaly/") : -len(".jpg")]))
            if thumb is None:
                return self._text(HTTPStatus.NOT_FOUND, "no such anomaly (only the latest are kept)")
            return self._send(HTTPStatus.OK, thumb, "image/jpeg")
        if url.path.startswith("/files/"):
            found_file = view.output_file(unquote(url.path[len("/files/") :]))
            if found_file is None:
                return self._text(
                    HTTPStatus.NOT_FOUND, "only images inside the run's output folder are served"
                )
            kind = "image/png" if found_file.suffix.lower() == ".png" else "image/jpeg"
            return self._send(HTTPStatus.OK, found_file.read_bytes(), kind)
        return self._text(HTTPStatus.NOT_FOUND, "not found")

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        view = self.server.view
        if not self._host_ok():
            return self._text(HTTPStatus.FORBIDDEN, "this address is not the one the live view listens on")
        if not view.allowed(self._token()):
            return self._text(HTTPStatus.UNAUTHORIZED, "token required: open the URL that watch printed")
        if urlsplit(self.path).path != "/control":
            return self._text(HTTPStatus.NOT_FOUND, "not found")
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            return self._text(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the control as application/json")
        try:
            length = min(int(self.headers.get("Content-Length") or 0), 4096)
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict) or not body.keys() & {"threshold", "paused"}:
                raise ValueError("give threshold (0 to 1) or paused (true/false)")
            client = self.client_address[0]
            if "threshold" in body:
                value = body["threshold"]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError("threshold must be a number from 0 to 1")
                view.request("threshold", check_threshold(float(value), "threshold"), client)
            if "paused" in body:
                if not isinstance(body["paused"], bool):
                    raise ValueError("paused must be true or false")
                view.request("paused", body["paused"], client)
        except (ValueError, InspectorError) as error:
            return self._text(HTTPStatus.BAD_REQUEST, str(error))
        return self._json(view.state())

    # --- helpers ---------------------------------------------------------------------------------------

    def _token(self) -> str | None:
        authorization = self.headers.get("Authorization") or ""
        if authorization.startswith("Bearer "):
            return authorization[len("Bearer ") :].strip()
        for part in (self.headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                return value
        return None

    def _host_ok(self) -> bool:
        """On a local bind, only requests addressed to the loopback (a rebound DNS name is refused)."""
        view = self.server.view
        if not is_local(view.host):
            return True
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        return host in LOCAL_HOSTS

    def _send(
        self, status: HTTPStatus, body: bytes, kind: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body and self.command != "HEAD":
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the viewer went away

    def _json(self, value: Any) -> None:
        self._send(HTTPStatus.OK, json.dumps(value).encode("utf-8"), "application/json")

    def _text(self, status: HTTPStatus, message: str) -> None:
        self._send(status, (message + "\n").encode("utf-8"), "text/plain; charset=utf-8")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass  # the run's own output stays readable


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def describe(view: LiveView) -> str:
    """One line for the user: where the live view is, and the token's role."""
    where = view.url(with_token=True)
    if view.token is None:
        return f"live view: {where}"
    return f"live view: {where} (the token is required on {view.host}: share this address only with viewers)"
