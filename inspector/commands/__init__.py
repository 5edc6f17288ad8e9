"""One module per CLI command; COMMANDS lists them for ``inspector.cli``."""

import click

from inspector.commands.bench import bench_command
from inspector.commands.calibrate import calibrate_command
from inspector.commands.demo import demo_command
from inspector.commands.evaluate import eval_command
from inspector.commands.export import export_command
from inspector.commands.info import info_command
from inspector.commands.inspect import inspect_command
from inspector.commands.train import train_command
from inspector.commands.watch import watch_command

COMMANDS: list[click.Command] = [
    demo_command,
    train_command,
    eval_command,
    export_command,
    calibrate_command,
    info_command,
    inspect_command,
    watch_command,
    bench_command,
]
