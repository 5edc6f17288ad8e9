"""The runtime on an edge box: inspect, watch and the Python API run with torch, training, export and onnx
unimportable."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from runtime_images import part, write_png, write_video
from runtime_models import build_deviation_model

# Runs in a fresh interpreter: any import of a blocked package fails as it would where it is not installed.
SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = ("torch", "torchvision", "onnx", "albumentations", "inspector.training", "inspector.export")

    def blocked(name):
        return any(name == root or name.startswith(root + ".") for root in BLOCKED)

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if blocked(name):
                raise ImportError(f"{name} is not installed on this edge box")
            return None

    sys.meta_path.insert(0, Blocker())
    import inspector.runtime.bench, inspector.runtime.folder, inspector.runtime.overlay
    import inspector.runtime.report, inspector.runtime.result, inspector.runtime.scoring
    import inspector.runtime.session, inspector.runtime.sources, inspector.runtime.watch
    from inspector.cli import cli
    model, photos, video, out = sys.argv[1:5]
    for args in (["inspect", photos, "--model", model, "--out", out + "/inspect", "-q"],
                 ["watch", "--model", model, "--source", video, "--headless", "--out", out + "/watch"]):
        try:
            cli.main(args=args, prog_name="inspector", standalone_mode=False)
        except SystemExit as stop:
            assert not stop.code, stop.code
    from inspector import load_model
    api = load_model(model)
    assert [r.verdict for r in api.score([photos + "/bad.png", photos + "/good.png"])] == ["anomalous", "normal"]
    assert [r.frame for r in api.stream(video) if r.anomalous] == [2]
    assert [r.path for r in api.predict(photos)] == ["bad.png", "good.png"]
    leaked = sorted(name for name in sys.modules if blocked(name))
    assert not leaked, leaked
    print("torch-free ok")
    """
)


def test_inspect_and_watch_run_where_torch_cannot_be_imported(tmp_path):
    model = build_deviation_model(tmp_path / "model.onnx")
    photos = tmp_path / "photos"
    photos.mkdir()
    write_png(photos / "good.png", part(40, 40))
    write_png(photos / "bad.png", part(40, 40, spot=(10, 10, 8, 8)))
    video = write_video(tmp_path / "clip.avi", frames=5, defect_frames=range(2, 3))

    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(model), str(photos), str(video), str(tmp_path / "out")],
        cwd=tmp_path,  # another folder: the installed package, not the checkout's folders
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "torch-free ok" in result.stdout
    summary = json.loads((tmp_path / "out" / "inspect" / "summary.json").read_text())
    assert (summary["scored"], summary["anomalous"]) == (2, 1)
    watched = json.loads((tmp_path / "out" / "watch" / "summary.json").read_text())
    assert watched["frames_scored"] == 5 and watched["anomalous"] == 1
