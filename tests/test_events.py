"""Events the line can act on: `watch --publish mqtt://`, `--webhook`, `--exec`, through the on-disk queue.

The MQTT test runs a real broker (Debian's mosquitto) on 127.0.0.1, stops it mid-run and starts it again;
the webhook test a local http.server that is down for the first run; the exec test a small Python script.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from runtime_images import part, write_png, write_video
from runtime_models import build_deviation_model

from inspector.cli import cli
from inspector.errors import InspectorError
from inspector.runtime.event_queue import QUEUE_NAME, EventQueue
from inspector.runtime.events import build_sinks, without_credentials
from inspector.runtime.scoring import Scorer
from inspector.runtime.session import load_model
from inspector.runtime.sources import open_source
from inspector.runtime.watch import watch

REPO = Path(__file__).resolve().parents[1]
MOSQUITTO = shutil.which("mosquitto") or next(
    (path for path in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(path, os.X_OK)), None
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_deviation_model(tmp_path_factory.mktemp("model") / "model.onnx")


def logged_events(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "events.jsonl").read_text().splitlines()]


def first_occurrences(ids: list[str]) -> list[str]:
    """The ids in order of first arrival: what a consumer that de-duplicates by id sees."""
    seen: dict[str, None] = {}
    for event_id in ids:
        seen.setdefault(event_id, None)
    return list(seen)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def frames_folder(folder: Path, count: int, defect_every: int = 2) -> Path:
    folder.mkdir()
    for index in range(count):
        spot = (4, 4, 10, 10) if index % defect_every == 0 else None
        write_png(folder / f"f{index:03d}.png", part(32, 40, spot))
    return folder


# --- MQTT against a real broker ----------------------------------------------------------------------------


class Broker:
    """mosquitto on 127.0.0.1 at a free port, persisting its sessions in a temporary folder (so a
    subscriber with a persistent session gets what was published while it was reconnecting)."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.config = folder / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {folder}/",
            f"log_dest file {folder / 'mosquitto.log'}",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to its own user, who cannot write the folder
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert self.process.poll() is None, "mosquitto exited at start"
                time.sleep(0.05)
        raise AssertionError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # it saves its sessions on the way out
            self.process.wait(timeout=10)


class Subscriber:
    """A consumer with a persistent session (clean_session False, QoS 1), as a line's PLC gateway has."""

    def __init__(self, port: int, topic: str):
        import paho.mqtt.client as mqtt

        self.received: list[dict] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="line-gateway", clean_session=False
        )
        self.client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda _client, _data, message: self.received.append(
            json.loads(message.payload)
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.skipif(MOSQUITTO is None, reason="no mosquitto broker installed (apt-get install mosquitto)")
def test_mqtt_events_survive_a_broker_restart_in_order_and_none_lost(tmp_path, model):
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (the line extra)")
    broker = Broker(tmp_path)
    broker.start()
    subscriber = Subscriber(broker.port, "line1/inspector")
    try:
        assert subscriber.subscribed.wait(10)
        # 8 s of video played in real time, every frame logged: the broker goes down about 1 s in.
        video = write_video(tmp_path / "line.avi", frames=160, fps=20.0, defect_frames=range(0, 160, 3))
        notes: list[str] = []
        outcome: dict = {}

        def run() -> None:
            outcome["summary"] = watch(
                open_source(str(video)),
                Scorer(load_model(model)),
                tmp_path / "out",
                headless=True,
                realtime=True,
                events="all",
                save="anomalous",
                notify=notes.append,
                sinks=build_sinks([f"mqtt://127.0.0.1:{broker.port}/line1/inspector"]),
                drain_seconds=20.0,
            )

        runner = threading.Thread(target=run)
        runner.start()
        deadline = time.monotonic() + 20
        while len(subscriber.received) < 15 and time.monotonic() < deadline:
            time.sleep(0.02)
        broker.stop()
        received_before = len(subscriber.received)
        time.sleep(1.5)  # watch goes on scoring while nothing can be delivered
        broker.start()
        runner.join(60)
        assert not runner.is_alive()
        deadline = time.monotonic() + 20
        logged = logged_events(tmp_path / "out")
        while (
            len({event["id"] for event in subscriber.received}) < len(logged) and time.monotonic() < deadline
        ):
            time.sleep(0.05)
    finally:
        subscriber.close()
        broker.stop()

    summary = outcome["summary"]
    assert 15 <= received_before < len(logged) == summary["frames_scored"]
    # Depending on when the broker went, a delivery failed (and said so) or paho re-sent the message in
    # flight once it reconnected; either way delivery went on.
    if any("cannot deliver" in note for note in notes):
        assert any("delivering again" in note for note in notes), notes
    key = f"mqtt://127.0.0.1:{broker.port}/line1/inspector"
    assert summary["events_waiting"] == {key: 0} and summary["events_delivered"][key] >= len(logged)
    ids = [event["id"] for event in subscriber.received]
    assert first_occurrences(ids) == [event["id"] for event in logged]  # all of them, in order
    by_id = {event["id"]: event for event in logged}
    assert all(event == by_id[event["id"]] for event in subscriber.received)  # duplicates are the same event
    sample = next(event for event in logged if event["label"] == "anomalous")
    for field in ("id", "time", "frame", "label", "score", "raw_score", "regions", "overlay", "threshold"):
        assert field in sample
    assert sample["regions"] and (tmp_path / "out" / sample["overlay"]).is_file()


# --- webhook: a local http.server, down for the first run ----------------------------------------------------


class Endpoint:
    def __init__(self, port: int):
        self.bodies: list[dict] = []
        self.keys: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers["Content-Length"])
                assert self.headers["Content-Type"] == "application/json"
                outer.bodies.append(json.loads(self.rfile.read(length)))
                outer.keys.append(self.headers["Idempotency-Key"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_events_wait_on_disk_while_the_endpoint_is_down_and_arrive_first_next_run(tmp_path, model):
    port = free_port()
    url = f"http://127.0.0.1:{port}/events"
    frames = frames_folder(tmp_path / "frames", 6)
    out = tmp_path / "out"
    common = ["watch", "--model", str(model), "--headless", "--events", "all", "--out", str(out)]

    down = CliRunner().invoke(cli, [*common, "--source", str(frames), "--webhook", url])

    assert down.exit_code == 0, down.output
    assert f"{url}: 0 events delivered, 6 wait in" in down.output
    assert "cannot deliver" in down.stderr
    queue = EventQueue(out / QUEUE_NAME)
    assert queue.waiting() == {url: 6}
    queue.close()

    endpoint = Endpoint(port)
    try:
        more = frames_folder(tmp_path / "more", 3)
        up = CliRunner().invoke(cli, [*common, "--source", str(more), "--webhook", url])
    finally:
        endpoint.close()

    assert up.exit_code == 0, up.output
    assert "6 events from an earlier run are delivered first" in up.stderr
    assert f"{url}: 9 events delivered" in up.output
    logged = logged_events(out)
    assert [body["id"] for body in endpoint.bodies] == [event["id"] for event in logged]  # in order, once
    assert endpoint.keys == [body["id"] for body in endpoint.bodies]
    assert [body["frame"] for body in endpoint.bodies] == [0, 1, 2, 3, 4, 5, 0, 1, 2]


def test_events_queued_before_watch_was_killed_are_delivered_first_by_the_next_run(tmp_path, model):
    port = free_port()
    url = f"http://127.0.0.1:{port}/events"
    video = write_video(tmp_path / "long.avi", frames=400, fps=40.0)
    out = tmp_path / "out"
    watch_cli = [
        sys.executable,
        "-c",
        "from inspector.cli import main; main()",
        "watch",
        "--model",
        str(model),
    ]
    common = ["--headless", "--events", "all", "--out", str(out), "--webhook", url]
    process = subprocess.Popen(
        [*watch_cli, "--source", str(video), "--realtime", *common],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    events_file = out / "events.jsonl"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        not events_file.exists() or len(events_file.read_text().splitlines()) < 8
    ):
        time.sleep(0.05)
    process.kill()  # no clean-up at all: the endpoint is down and nothing was delivered
    process.wait(10)
    logged_before = [event["id"] for event in logged_events(out)]
    queue = EventQueue(out / QUEUE_NAME)
    queued = queue.waiting()[url]
    queue.close()
    assert 8 <= len(logged_before) <= queued <= len(logged_before) + 1  # queued before being logged

    endpoint = Endpoint(port)
    try:
        more = frames_folder(tmp_path / "more", 2)
        result = CliRunner().invoke(cli, ["watch", "--model", str(model), "--source", str(more), *common])
    finally:
        endpoint.close()

    assert result.exit_code == 0, result.output
    delivered = [body["id"] for body in endpoint.bodies]
    assert len(delivered) == queued + 2
    assert delivered[: len(logged_before)] == logged_before  # the killed run's events first, in order
    assert delivered[-2:] == [event["id"] for event in logged_events(out)][-2:]


def test_a_hung_endpoint_blocks_neither_the_frames_nor_the_end_of_the_run(tmp_path, model):
    release = threading.Event()
    requests: list[dict] = []

    class Hung(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            release.wait(60)  # holds the first delivery until the test lets go
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hung)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    frames = frames_folder(tmp_path / "frames", 10)
    url = f"http://127.0.0.1:{server.server_address[1]}/events"
    outcome: dict = {}
    runner = threading.Thread(
        target=lambda: outcome.update(
            watch(
                open_source(str(frames)),
                Scorer(load_model(model)),
                tmp_path / "out",
                headless=True,
                events="all",
                sinks=build_sinks(webhooks=[url]),
                drain_seconds=0.5,
            )
        )
    )
    try:
        runner.start()
        runner.join(50)
        finished_while_held = not runner.is_alive() and not release.is_set()
    finally:
        release.set()
        runner.join(30)
        server.shutdown()
        server.server_close()

    assert finished_while_held  # watch ended while the endpoint still held its first event
    assert outcome["frames_scored"] == 10 and len(logged_events(tmp_path / "out")) == 10
    assert len(requests) == 1 and outcome["events_waiting"] == {url: 10}  # the held one is not acknowledged


# --- exec: a script that reads the event on stdin ----------------------------------------------------------


def test_exec_runs_the_command_per_event_with_json_on_stdin_and_retries_a_failure(tmp_path, model):
    script = tmp_path / "gate.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, os, sys
            from pathlib import Path
            event = json.loads(sys.stdin.read())
            failed_once = Path(sys.argv[2])
            if not failed_once.exists():  # the reject gate is busy the first time
                failed_once.write_text("x")
                sys.exit("gate busy")
            assert event["id"] == os.environ["INSPECTOR_EVENT_ID"]
            assert Path(event["overlay"]).is_file()  # run in the output folder: the relative path opens
            with open(sys.argv[1], "a") as log:
                log.write(json.dumps(event) + "\\n")
            """
        )
    )
    received = tmp_path / "received.jsonl"
    frames = frames_folder(tmp_path / "frames", 6)
    out = tmp_path / "out"
    command = f"{sys.executable} {script} {received} {tmp_path / 'failed_once'}"

    result = CliRunner().invoke(
        cli,
        [
            "watch",
            "--model",
            str(model),
            "--source",
            str(frames),
            "--headless",
            "--out",
            str(out),
            "--exec",
            command,
        ],
    )

    assert result.exit_code == 0, result.output
    assert "exit code 1: gate busy" in result.stderr, result.output
    logged = logged_events(out)
    assert [event["frame"] for event in logged] == [0, 2, 4]  # the anomalous frames (the default --events)
    assert received.exists(), result.output + result.stderr
    delivered = [json.loads(line) for line in received.read_text().splitlines()]
    assert delivered == logged
    assert f"exec {command}: 3 events delivered" in result.output


# --- the queue, options ------------------------------------------------------------------------------------


def test_queued_events_survive_the_process_being_killed(tmp_path):
    code = textwrap.dedent(
        f"""
        import os, signal
        from inspector.runtime.event_queue import EventQueue
        queue = EventQueue({str(tmp_path / QUEUE_NAME)!r})
        for index in range(50):
            queue.append('{{"id": "%d"}}' % index, ["a", "b"])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=False)
    assert process.returncode == -signal.SIGKILL, process.stderr

    queue = EventQueue(tmp_path / QUEUE_NAME)
    assert queue.waiting() == {"a": 50, "b": 50}
    oldest = queue.oldest("a", limit=3)
    assert [json.loads(body)["id"] for _, body in oldest] == ["0", "1", "2"]
    queue.acknowledge(oldest[0][0])
    assert queue.waiting() == {"a": 49, "b": 50}
    queue.close()


def test_bad_destinations_are_one_line_with_exit_code_2(tmp_path, model, monkeypatch):
    frames = frames_folder(tmp_path / "frames", 1)
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
    cases = {
        ("--publish", "mqtt://127.0.0.1:1883"): "name the topic",
        ("--publish", "mqtt://127.0.0.1:1883/line/#"): "without the wildcards",
        ("--publish", "amqp://127.0.0.1/line"): "expected mqtt://HOST[:PORT]/TOPIC",
        ("--webhook", "ftp://127.0.0.1/x"): "expected an http:// or https:// URL",
        ("--exec", "no-such-program-here --flag"): "no program 'no-such-program-here' found",
    }
    for (option, value), message in cases.items():
        result = CliRunner().invoke(cli, [*base, option, value])
        assert result.exit_code == 2, (option, value, result.output)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "paho.mqtt.client", None)  # a base install without the line extra
    with pytest.raises(InspectorError, match=r"inspector-vision\[line\]"):
        build_sinks(["mqtt://127.0.0.1/line"])


def test_credentials_of_a_stream_or_destination_never_travel_with_the_events():
    assert (
        without_credentials("rtsp://line:s3cret@camera.local:554/stream1")
        == "rtsp://camera.local:554/stream1"
    )
    assert without_credentials("rtsp://camera.local/stream1") == "rtsp://camera.local/stream1"
    assert without_credentials("line.mp4") == "line.mp4"
    (webhook,) = build_sinks(webhooks=["https://bot:token@mes.local:8443/api/inspections?line=1"])
    assert webhook.key == "https://mes.local:8443/api/inspections?line=1"
    with pytest.raises(InspectorError, match="the port is not a number"):
        build_sinks(webhooks=["http://127.0.0.1:99999/x"])
