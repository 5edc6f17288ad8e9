"""The exit codes of every ``inspector`` command, in one place (docs/architecture.md, section 5).

Torch-free and import-free, so that the CLI, its commands and scripts can all name them.
"""

from __future__ import annotations

import signal

EXIT_OK = 0
#: ``inspect --fail-on-anomaly`` found anomalous images.
EXIT_ANOMALY = 1
#: ``export``: onnxruntime and torch disagree beyond ``--tolerance`` (nothing was written).
EXIT_CHECK_FAILED = 1
#: Bad usage or input: one line on stderr, no traceback.
EXIT_USAGE = 2


def exit_code_for_signal(signal_number: int) -> int:
    """128 + the signal number, as shells report a process stopped by a signal (Ctrl-C: 130, SIGTERM: 143)."""
    return 128 + int(signal_number)


#: Stopped by Ctrl-C after saving what was finished (``--resume`` continues).
EXIT_INTERRUPTED = exit_code_for_signal(signal.SIGINT)
#: Stopped by SIGTERM after saving what was finished.
EXIT_TERMINATED = exit_code_for_signal(signal.SIGTERM)
