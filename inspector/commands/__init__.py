"""One module per CLI command; COMMANDS lists them for ``inspector.cli``."""

import click

COMMANDS: list[click.Command] = []

# Add one import and one COMMANDS entry per command module below (train, eval, export, info, inspect,
# watch, bench, demo).

from inspector.commands.export import export_command

COMMANDS.append(export_command)

from inspector.commands.info import info_command

COMMANDS.append(info_command)

from inspector.commands.inspect import inspect_command
from inspector.commands.watch import watch_command
from inspector.commands.bench import bench_command

COMMANDS.extend([inspect_command, watch_command, bench_command])

from inspector.commands.train import train_command
from inspector.commands.evaluate import eval_command

COMMANDS.extend([train_command, eval_command])

from inspector.commands.demo import demo_command

COMMANDS.append(demo_command)
