"""The package as a user installs it: one `inspector` namespace, presets inside, one-line errors without torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        cwd=out,
    )
    (path,) = out.glob("inspector_vision-*.whl")
    return path


def test_wheel_installs_one_top_level_package_with_presets(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"inspector"}
    for expected in (
        "inspector/configs/rdna_cpu.yaml",
        "inspector/training/trainer.py",
        "inspector/export/pipeline.py",
        "inspector/runtime/folder.py",
        "inspector/runtime/live_view.html",  # the page of watch --serve (package data)
        "inspector/py.typed",
        "inspector/__main__.py",
    ):
        assert expected in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


def test_presets_are_found_by_name_from_another_folder(tmp_path):
    script = "from inspector.config import load_config; c = load_config('draem_cpu'); print(c.detector)"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "draem"


def test_unknown_preset_names_the_known_ones(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "inspector", "train", "--config", "rdna_fast", "--max-steps", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "rdna_cpu" in result.stderr


# Runs the CLI with the training extra made unimportable, as on an edge box's base install.
NO_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "onnx", "albumentations"):
                raise ModuleNotFoundError(f"No module named '{name}'", name=name)
    sys.meta_path.insert(0, Blocker())
    from inspector.cli import main
    sys.argv = ["inspector", *sys.argv[1:]]
    main()
    """
)


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--max-steps", "1"],
        ["demo", "--max-steps", "1"],
        ["eval", "RUN"],
        ["export", "RUN"],
    ],
)
def test_training_commands_on_the_base_install_say_what_to_install(tmp_path, args):
    if args[-1] == "RUN":
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        (run_dir / "config.yaml").write_text("detector: rdna\n")
        args = [*args[:-1], str(run_dir)]
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "inspector-vision[train]" in lines[0]
