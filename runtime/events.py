"""Events the line can act on: each logged frame of ``watch`` sent to MQTT, a webhook or a program.

``watch`` builds one event per logged frame (:func:`frame_event`: the frame's record plus a unique ``id``
and the threshold it was judged at) and hands it to an :class:`EventPublisher`, which stores it in the
on-disk :class:`~inspector.runtime.event_queue.EventQueue` and returns at once. One delivery thread per
destination sends the queued events in order and removes each only once the destination acknowledged it:

- ``mqtt://HOST[:PORT]/TOPIC`` (``mqtts://`` for TLS, ``user:password@`` accepted): published with QoS 1,
  acknowledged by the broker's PUBACK; needs ``paho-mqtt`` (``pip install 'inspector-vision[line]'``).
- a webhook ``http(s)://`` URL: one JSON POST per event, acknowledged by a 2xx answer; the event's id is
  also sent as the ``Idempotency-Key`` header.
- a command: run once per event with the event JSON on standard input, in the output folder (so the
  event's relative ``overlay`` path opens as it is), acknowledged by exit code 0.

A destination that is down or refuses an event is retried with backoff (0.5 s doubling to 10 s) while
later events wait behind it: delivery is in order and at-least-once, never lost; duplicates (after a crash,
or a broker that took an event but lost the acknowledgement) carry the same ``id``.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from inspector.errors import InspectorError
from inspector.io import display_path
from inspector.runtime.event_queue import QUEUE_NAME, EventQueue
from inspector.runtime.result import Result, now_utc

DELIVERY_TIMEOUT_S = 10.0  # one delivery (an MQTT acknowledgement, an HTTP answer) waits this long
EXEC_TIMEOUT_S = 30.0  # a command that runs longer is stopped and the event retried
FIRST_RETRY_S = 0.5
MAX_RETRY_S = 10.0
DRAIN_SECONDS = 5.0  # at the end of a run, queued events are delivered for at most this long
JOIN_SECONDS = 2.0  # then a delivery still under way gets this long to finish
MQTT_EXTRA = "pip install 'inspector-vision[line]'"


def frame_event(result: Result, threshold: float) -> dict[str, Any]:
    """The event of one scored frame: a unique ``id``, ``event: "frame"``, the frame's record
    (:meth:`Result.to_record`: time, frame index, verdict as ``label``, score, raw score, regions, overlay
    path, ...) and the normalised ``threshold`` the verdict was made at. A stream URL's user and password
    are left out of ``source``: events travel to brokers and servers."""
    record = result.to_record()
    if "source" in record:
        record["source"] = without_credentials(record["source"])
    return {"id": uuid.uuid4().hex, "event": "frame", **record, "threshold": round(threshold, 6)}


def without_credentials(location: str) -> str:
    """``rtsp://user:secret@camera/stream`` as ``rtsp://camera/stream``; anything else unchanged."""
    if "://" not in location:
        return location
    try:
        parts = urlsplit(location)
        if parts.username is None and parts.password is None:
            return location
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return location
    return parts._replace(netloc=netloc).geturl()


def control_event(kind: str, **fields: Any) -> dict[str, Any]:
    """A change made while ``watch`` runs (``threshold``, ``pause``, ``resume``), as logged in events.jsonl."""
    return {"id": uuid.uuid4().hex, "event": kind, "time": now_utc(), **fields}


class DeliveryError(Exception):
    """A destination did not take an event; the event stays queued and is retried."""


class Sink:
    """A destination. ``key`` names it in the queue and in messages (without credentials)."""

    key: str = ""

    def start(self) -> None:
        """Begin connecting (without waiting for it)."""

    def deliver(self, body: str, event_id: str) -> None:
        """Send one event; return once the destination acknowledged it, else raise :class:`DeliveryError`."""
        raise NotImplementedError

    def wait_until_ready(self, stop: threading.Event, seconds: float) -> None:
        """After a failed delivery: wait ``seconds`` before the retry (less when the sink knows it is back)."""
        stop.wait(seconds)

    def close(self) -> None:
        """Disconnect."""


class MqttSink(Sink):
    """Publishes to one topic of an MQTT broker with QoS 1 (paho-mqtt); reconnects in the background."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise InspectorError(
                f"--publish {url!r}: expected mqtt://HOST[:PORT]/TOPIC (or mqtts:// for TLS)"
            )
        topic = unquote(parts.path.lstrip("/"))
        if not topic or "+" in topic or "#" in url:
            raise InspectorError(
                f"--publish {url!r}: name the topic to publish to after the host, without the wildcards "
                "+ and # (mqtt://broker:1883/line1/inspector)"
            )
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            raise InspectorError(f"--publish {url!r}: the port is not a number from 1 to 65535") from None
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise InspectorError(f"--publish needs the MQTT client paho-mqtt: {MQTT_EXTRA}") from None
        self.host, self.port, self.topic = parts.hostname, port, topic
        self.key = f"{parts.scheme}://{self.host}:{port}/{topic}"
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"inspector-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv311,
        )
        if parts.username:
            self._client.username_pw_set(unquote(parts.username), unquote(parts.password or ""))
        if parts.scheme == "mqtts":
            self._client.tls_set()
        self._client.reconnect_delay_set(min_delay=1, max_delay=int(MAX_RETRY_S))
        self._connected = threading.Event()
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = lambda *args: self._connected.clear()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not reason_code.is_failure:
            self._connected.set()

    def start(self) -> None:
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()  # its thread connects, and reconnects whenever the broker drops

    def deliver(self, body: str, event_id: str) -> None:
        if not self._client.is_connected():
            raise DeliveryError("not connected to the broker")
        info = self._client.publish(self.topic, body, qos=1)
        try:
            info.wait_for_publish(timeout=DELIVERY_TIMEOUT_S)
        except (RuntimeError, ValueError) as error:
            raise DeliveryError(str(error)) from None
        if not info.is_published():
            raise DeliveryError(f"the broker did not acknowledge within {DELIVERY_TIMEOUT_S:g} s")

    def wait_until_ready(self, stop: threading.Event, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            if self._connected.wait(0.1) and self._client.is_connected():
                return  # retry as soon as the broker is back

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class WebhookSink(Sink):
    """POSTs each event as JSON to a URL (the standard library's urllib); a 2xx answer acknowledges it."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InspectorError(f"--webhook {url!r}: expected an http:// or https:// URL")
        try:
            parts.port
        except ValueError:
            raise InspectorError(f"--webhook {url!r}: the port is not a number from 1 to 65535") from None
        self.url = url
        self.key = without_credentials(url)  # no user:password in the queue or in messages

    def deliver(self, body: str, event_id: str) -> None:
        request = urllib.request.Request(
            self.url,
            data=body.encode("utf-8"),
            method="POST",
            headers={"Content-Type": "application/json", "Idempotency-Key": event_id},
        )
        try:
            with urllib.request.urlopen(request, timeout=DELIVERY_TIMEOUT_S) as response:
                response.read()
        except urllib.error.HTTPError as error:
            raise DeliveryError(f"HTTP {error.code} {error.reason}") from None
        except urllib.error.URLError as error:
            raise DeliveryError(str(error.reason)) from None
        except (OSError, http.client.HTTPException) as error:
            raise DeliveryError(str(error) or type(error).__name__) from None


class ExecSink(Sink):
    """Runs a command per event with the event JSON on standard input; exit code 0 acknowledges it.

    The command is split like a shell would (``shlex``) but run without one; it runs in the output folder
    and gets the event's id in ``INSPECTOR_EVENT_ID``.
    """

    def __init__(self, command: str, cwd: Path):
        try:
            self.argv = shlex.split(command)
        except ValueError as error:
            raise InspectorError(f"--exec {command!r}: {error}") from None
        if not self.argv:
            raise InspectorError("--exec: give the command to run for each event")
        if shutil.which(self.argv[0]) is None:
            raise InspectorError(
                f"--exec {command!r}: no program {self.argv[0]!r} found (give its full path)"
            )
        self.cwd = cwd
        self.key = f"exec {command}"

    def deliver(self, body: str, event_id: str) -> None:
        try:
            completed = subprocess.run(
                self.argv,
                input=(body + "\n").encode("utf-8"),
                cwd=self.cwd,
                capture_output=True,
                timeout=EXEC_TIMEOUT_S,
                env={**os.environ, "INSPECTOR_EVENT_ID": event_id},
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DeliveryError(f"did not finish within {EXEC_TIMEOUT_S:g} s") from None
        except OSError as error:
            raise DeliveryError(str(error)) from None
        if completed.returncode != 0:
            said = completed.stderr.decode("utf-8", "replace").strip().splitlines()
            raise DeliveryError(f"exit code {completed.returncode}" + (f": {said[-1]}" if said else ""))


def build_sinks(
    publish: list[str] | tuple[str, ...] = (),
    webhooks: list[str] | tuple[str, ...] = (),
    commands: list[str] | tuple[str, ...] = (),
    cwd: str | Path = ".",
) -> list[Sink]:
    """The destinations of ``--publish``, ``--webhook`` and ``--exec``; :class:`InspectorError` for a bad one."""
    sinks: list[Sink] = [MqttSink(url) for url in publish]
    sinks += [WebhookSink(url) for url in webhooks]
    sinks += [ExecSink(command, Path(cwd)) for command in commands]
    keys = [sink.key for sink in sinks]
    if len(set(keys)) != len(keys):
        raise InspectorError("the same --publish, --webhook or --exec destination is given twice")
    return sinks


class EventPublisher:
    """Queues events on disk and delivers them on one thread per destination; :meth:`publish` never waits
    for the network."""

    def __init__(self, sinks: list[Sink], out_dir: Path, notify: Callable[[str], None] | None = None):
        self.sinks = sinks
        self.notify = notify or (lambda message: None)
        self.queue_path = Path(out_dir) / QUEUE_NAME
        self.queue = EventQueue(self.queue_path)
        self.delivered = {sink.key: 0 for sink in sinks}
        self._failing = {sink.key: False for sink in sinks}
        self._failures = {sink.key: 0 for sink in sinks}  # failed deliveries in a row
        self._wake = {sink.key: threading.Event() for sink in sinks}
        self._stop = threading.Event()
        # Counted here rather than in the file: a queue that grew for hours is not counted every 2 s.
        self._waiting = {sink.key: 0 for sink in sinks}
        self._count_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._deliver_loop, args=(sink,), name=f"events {sink.key}", daemon=True)
            for sink in sinks
        ]

    def start(self) -> EventPublisher:
        keys = set(self.delivered)
        for key, count in self.queue.waiting().items():
            if key in keys:
                self._waiting[key] = count
                self.notify(f"{key}: {count} events from an earlier run are delivered first")
            else:
                self.notify(
                    f"{count} events for {key} wait in {display_path(self.queue_path)} until watch runs with it"
                )
        for sink in self.sinks:
            sink.start()
        for thread in self._threads:
            thread.start()
        return self

    def publish(self, event: dict[str, Any]) -> None:
        """Queue ``event`` for every destination (on disk, in one transaction) and wake the deliveries."""
        self.queue.append(json.dumps(event, ensure_ascii=False), list(self.delivered))
        with self._count_lock:
            for key in self._waiting:
                self._waiting[key] += 1
        for wake in self._wake.values():
            wake.set()

    def waiting(self) -> int:
        """Events not yet delivered to this run's destinations."""
        with self._count_lock:
            return sum(self._waiting.values())

    def close(self, drain_seconds: float = DRAIN_SECONDS) -> dict[str, Any]:
        """Deliver what is queued for up to ``drain_seconds`` (less once every destination with events
        waiting is failing), stop, and say what was delivered and what still waits on disk."""
        deadline = time.monotonic() + drain_seconds
        failures_before = dict(self._failures)
        while time.monotonic() < deadline:
            with self._count_lock:
                pending = [key for key, count in self._waiting.items() if count]
            # Done when all is delivered, or when each destination still owed events failed again since
            # the run ended, and not for the first time (it is down: its events wait for the next run).
            if all(self._failures[key] > max(failures_before[key], 1) for key in pending):
                break
            time.sleep(0.05)
        self._stop.set()
        for wake in self._wake.values():
            wake.set()
        # A delivery stuck in a hung server or command is not waited for: its event stays queued and is
        # sent again by the next run (at-least-once, same id).
        join_until = time.monotonic() + JOIN_SECONDS
        for thread in self._threads:
            thread.join(max(0.0, join_until - time.monotonic()))
        for sink in self.sinks:
            sink.close()
        waiting = self.queue.waiting()
        if not any(thread.is_alive() for thread in self._threads):
            self.queue.close()
        return {
            "delivered": dict(self.delivered),
            "waiting": {key: waiting.get(key, 0) for key in self.delivered},
            "queue": display_path(self.queue_path),
        }

    def _deliver_loop(self, sink: Sink) -> None:
        retry = FIRST_RETRY_S
        while not self._stop.is_set():
            try:
                batch = self.queue.oldest(sink.key)
            except sqlite3.Error as error:
                self.notify(f"{sink.key}: cannot read the event queue ({error}); retrying")
                self._stop.wait(MAX_RETRY_S)
                continue
            if not batch:
                self._wake[sink.key].wait(0.5)
                self._wake[sink.key].clear()
                continue
            for seq, body in batch:
                if self._stop.is_set():
                    return
                try:
                    sink.deliver(body, _event_id(body))
                except Exception as error:  # noqa: BLE001 - DeliveryError, or a destination's own bug: retry
                    self._failures[sink.key] += 1
                    if not self._failing[sink.key]:
                        self.notify(
                            f"{sink.key}: cannot deliver ({error}); events wait on disk and are retried"
                        )
                        self._failing[sink.key] = True
                    sink.wait_until_ready(self._stop, retry)
                    retry = min(retry * 2.0, MAX_RETRY_S)
                    break
                try:
                    self.queue.acknowledge(seq)
                except sqlite3.Error as error:  # delivered but still queued: sent again later (same id)
                    self.notify(f"{sink.key}: cannot update the event queue ({error}); retrying")
                    self._stop.wait(MAX_RETRY_S)
                    break
                with self._count_lock:
                    self._waiting[sink.key] -= 1
                self.delivered[sink.key] += 1
                self._failures[sink.key] = 0
                if self._failing[sink.key]:
                    self._failing[sink.key] = False
                    self.notify(f"{sink.key}: delivering again")
                retry = FIRST_RETRY_S


def _event_id(body: str) -> str:
    try:
        return str(json.loads(body).get("id", ""))
    except (ValueError, AttributeError):
        return ""
