"""The ``inspector`` command line. Commands import training/export lazily, so the runtime starts without torch."""

from __future__ import annotations

import sys

import click

from inspector import __version__
from inspector.errors import InspectorError
from inspector.exit_codes import (  # noqa: F401 - the CLI's exit codes, importable from here too
    EXIT_ANOMALY,
    EXIT_CHECK_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
)

#: What the ``train`` extra adds; a command that needs one of them on a base install says to install it.
TRAINING_EXTRA_MODULES = ("torch", "torchvision", "onnx", "albumentations", "matplotlib")
DISTRIBUTION = "inspector-vision"


class InspectorGroup(click.Group):
    """Turns :class:`InspectorError`, a file-system error (a full disk, a read-only folder, a file where a
    folder should be) and a missing training extra into one line on stderr and exit code 2, with no
    traceback. Commands are listed in the order of the pipeline (demo, train, eval, export, calibrate, info,
    inspect, watch, bench), not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except InspectorError as error:
            click.echo(f"error: {_one_line(str(error))}", err=True)
            ctx.exit(EXIT_USAGE)
        except OSError as error:
            if error.errno is None:
                raise
            from inspector.io import os_error_text

            click.echo(f"error: {os_error_text(error)}", err=True)
            ctx.exit(EXIT_USAGE)
        except ModuleNotFoundError as error:
            if (error.name or "").split(".")[0] == "onnxruntime":
                click.echo(
                    "error: no onnxruntime is installed; install exactly one build: pip install onnxruntime "
                    "(or onnxruntime-gpu, onnxruntime-openvino, onnxruntime-directml)",
                    err=True,
                )
                ctx.exit(EXIT_USAGE)
            if (error.name or "").split(".")[0] not in TRAINING_EXTRA_MODULES:
                raise
            command = ctx.invoked_subcommand or "this command"
            click.echo(
                f"error: `inspector {command}` needs the training extra ({error.name} is not installed): "
                f"pip install '{DISTRIBUTION}[train]'",
                err=True,
            )
            ctx.exit(EXIT_USAGE)


@click.group(cls=InspectorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="inspector")
def cli() -> None:
    """Train anomaly detectors on photos of good parts, export them to ONNX, and inspect images,
    folders, videos and cameras with heatmaps that show where the defect is.

    Try it with no data of your own: `inspector demo`.
    """
    quiet_opencv()


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines()) or text


def quiet_opencv() -> None:
    """Keep OpenCV's own decoder warnings off the terminal: every unreadable file is already reported
    with its reason, and a stray ``[ WARN ...]`` line would break the progress bar."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def _register_commands() -> None:
    # Each command lives in its own module under inspector/commands/.
    from inspector.commands import COMMANDS

    for command in COMMANDS:
        cli.add_command(command)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli.main(prog_name="inspector", standalone_mode=True))
