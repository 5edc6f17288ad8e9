"""What `watch --serve` and `watch --publish`/`--webhook` cost in frames per second, on one video.

    python benchmarks/watch_overhead.py --model runs/<name>/export/model.onnx
    python benchmarks/watch_overhead.py                      # a generated conv model (needs onnx)
    python benchmarks/watch_overhead.py --frames 20 --repeats 1 --size 64 --frame-size 96x128   # smoke run

Every configuration scores the same generated video (textured frames, every fourth with a scratch) as
fast as it can (not --realtime: no frame dropped), with --events all (every frame is an event: the worst
case for delivery) and --save anomalous, through the same `inspector.runtime.watch.watch` the CLI calls:

- ``plain``: no live view, no destination;
- ``serve``: the live view, nobody watching; ``serve+viewer``: a viewer long-polling every frame's JPEG and
  the state twice a second, as the page does;
- ``mqtt``: --publish to a local mosquitto (skipped without the binary or paho-mqtt);
- ``webhook``: --webhook to a local http.server answering 204;
- ``all``: serve+viewer, mqtt and webhook together.

Configurations alternate within each repeat; the table gives the median FPS, its change against
``plain`` and the median latency. Run it on an idle machine: the numbers are only as quiet as the box.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2

from inspector.runtime.bench import write_sample_images
from inspector.runtime.events import build_sinks
from inspector.runtime.live_view import LiveView
from inspector.runtime.scoring import Scorer
from inspector.runtime.session import load_model
from inspector.runtime.sources import open_source
from inspector.runtime.watch import watch

CONFIGS = ("plain", "serve", "serve+viewer", "mqtt", "webhook", "all")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def generated_model(folder: Path, size: int) -> Path:
    """The U-Net-shaped conv graph of runtime_throughput.py, thresholds at quantiles of its own scores."""
    sys.path.insert(0, str(Path(__file__).parent))
    from runtime_throughput import conv_model_bytes, quantile_calibration, write_with_metadata

    from inspector.preprocess import read_image

    model_bytes = conv_model_bytes(size)
    images = [read_image(p) for p in write_sample_images(folder / "calibration", 16, (size, size), seed=1)]
    calibration = quantile_calibration(model_bytes, images, size)
    return write_with_metadata(model_bytes, folder / "model.onnx", "conv-benchmark", size, calibration)


def write_frames_video(path: Path, frames: int, size: tuple[int, int]) -> Path:
    images = write_sample_images(path.parent / "frames", min(frames, 32), size)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (size[1], size[0]))
    for index in range(frames):
        writer.write(cv2.imread(str(images[index % len(images)])))
    writer.release()
    return path


class Broker:
    def __init__(self, folder: Path):
        binary = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
        )
        if binary is None:
            raise RuntimeError("no mosquitto binary")
        self.port = free_port()
        config = folder / "mosquitto.conf"
        config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
        self.process = subprocess.Popen([binary, "-c", str(config)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class Endpoint:
    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Viewer:
    """What the page does: long-poll each new frame, read the state every 0.5 s."""

    def __init__(self, base: str):
        self.base = base
        self.frames = 0
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._frames, daemon=True),
            threading.Thread(target=self._state, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _frames(self) -> None:
        seq = 0
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(f"{self.base}frame.jpg?after={seq}", timeout=5) as response:
                    response.read()
                    if response.status == 200:
                        seq = int(response.headers["X-Frame-Seq"])
                        self.frames += 1
            except OSError:
                time.sleep(0.05)

    def _state(self) -> None:
        while not self.stop.wait(0.5):
            try:
                with urllib.request.urlopen(f"{self.base}state", timeout=5) as response:
                    response.read()
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()


def run_once(
    config: str, model: Path, video: Path, out: Path, broker: Broker | None, endpoint: Endpoint
) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    publish = [f"mqtt://127.0.0.1:{broker.port}/bench"] if broker and config in ("mqtt", "all") else []
    webhooks = [endpoint.url] if config in ("webhook", "all") else []
    view = LiveView(out, "127.0.0.1", 0) if config in ("serve", "serve+viewer", "all") else None
    viewer = Viewer(view.url()) if view is not None and config != "serve" else None
    try:
        summary = watch(
            open_source(str(video)),
            Scorer(load_model(str(model))),
            out,
            headless=True,
            events="all",
            save="anomalous",
            sinks=build_sinks(publish, webhooks, cwd=out),
            live_view=view,
            drain_seconds=60.0,
        )
    finally:
        if viewer is not None:
            viewer.close()
        if view is not None:
            view.close()
    waiting = sum(summary.get("events_waiting", {}).values())
    return {
        "config": config,
        "fps": summary["fps"],
        "latency_ms": summary["latency_ms"]["median"],
        "frames": summary["frames_scored"],
        "viewer_frames": viewer.frames if viewer is not None else None,
        "events_delivered": sum(summary.get("events_delivered", {}).values()),
        "events_waiting": waiting,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="exported model.onnx (default: a generated conv model)")
    parser.add_argument("--size", type=int, default=256, help="input size of the generated model")
    parser.add_argument("--frame-size", default="480x640", help="frame HEIGHTxWIDTH of the video")
    parser.add_argument("--frames", type=int, default=300, help="frames in the video (default 300)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats; medians reported")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {CONFIGS}")
    parser.add_argument("--json", help="also write every repeat's result here")
    args = parser.parse_args()
    height, width = (int(v) for v in args.frame_size.lower().split("x"))
    configs = [name for name in args.configs.split(",") if name]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown --configs {sorted(unknown)}; choose from {CONFIGS}")

    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        model = Path(args.model) if args.model else generated_model(folder, args.size)
        video = write_frames_video(folder / "line.avi", args.frames, (height, width))
        broker = None
        if any(name in ("mqtt", "all") for name in configs):
            try:
                import paho.mqtt.client  # noqa: F401

                broker = Broker(folder)
            except (ImportError, RuntimeError) as error:
                print(f"mqtt skipped: {error}", file=sys.stderr)
                configs = [name for name in configs if name != "mqtt"]
        endpoint = Endpoint()
        runs: list[dict] = []
        try:
            for repeat in range(args.repeats):
                for config in configs:
                    result = run_once(config, model, video, folder / "out", broker, endpoint)
                    result["repeat"] = repeat
                    runs.append(result)
                    print(json.dumps(result), file=sys.stderr)
        finally:
            endpoint.close()
            if broker is not None:
                broker.close()

    base = statistics.median(r["fps"] for r in runs if r["config"] == "plain") if "plain" in configs else None
    print(
        f"\nwatch on {args.frames} frames of {width}x{height}, --events all, {args.repeats} repeats (median)\n"
    )
    print("| configuration | FPS | vs plain | latency median, ms |")
    print("|---|---|---|---|")
    for config in configs:
        mine = [r for r in runs if r["config"] == config]
        fps = statistics.median(r["fps"] for r in mine)
        latency = statistics.median(r["latency_ms"] for r in mine)
        change = f"{(fps / base - 1) * 100:+.1f} %" if base else "–"
        print(f"| {config} | {fps:.1f} | {change} | {latency:.1f} |")
    if any(r["events_waiting"] for r in runs):
        print("\nwarning: some events were still waiting at the end of a run", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
