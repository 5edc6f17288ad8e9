"""Training on several processes: 2 CPU processes with gloo under torchrun (and `inspector train --devices`),
real detectors for a few steps on tiny generated data; the sharded sampler; bad torchrun variables and
backends. See training/distributed.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from inspector.cli import cli
from inspector.config import load_config
from inspector.errors import InspectorError
from inspector.training.checkpoint import checkpoint_path, load_checkpoint
from inspector.training.data.synthetic import generate_dataset
from inspector.training.distributed import World, choose_backend, joined, rank_seed, world_from_environment
from inspector.training.trainer import _EpochSampler, train

torch.set_num_threads(1)  # a shared 2-core machine: more threads only contend

TINY = {
    "rdna": {"reconstruction_width": 4, "segmentation_width": 4, "discriminator_width": 4},
    "alocc": {"base_width": 4, "max_width": 8},
}
#: Each process records the weights it ends with and the images it was given, then runs the real CLI.
DRIVER = """
import os, sys
from pathlib import Path

import torch

from inspector.training import trainer

record = Path(os.environ["RECORD_DIR"])
seen = []
sampler_iter = trainer._EpochSampler.__iter__
train_loop = trainer._train_loop


def iterate_and_record(self):
    items = list(sampler_iter(self))
    seen.append([index for _, index in items])
    return iter(items)


def train_and_record(run, progress):
    stopped_by = train_loop(run, progress)
    state = {name: tensor.detach().cpu().clone() for name, tensor in run.detector.state_dict().items()}
    random_draw = torch.rand(4)  # the process's own stream: the noise and latent codes it drew
    torch.save(
        {"state": state, "step": run.step, "seen": seen, "random_draw": random_draw},
        record / f"rank{run.world.rank}.pt",
    )
    return stopped_by


trainer._EpochSampler.__iter__ = iterate_and_record
trainer._train_loop = train_and_record
from inspector.cli import main

sys.argv = ["inspector", *sys.argv[1:]]
main()
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A tiny built-in dataset: 10 training images of 32 px, a few test images."""
    root = tmp_path_factory.mktemp("data")
    generate_dataset(
        root / "surfaces",
        categories=["fabric"],
        image_size=32,
        train_count=10,
        test_good=2,
        test_defect_per_kind=1,
    )
    return root / "surfaces"


def write_config(folder: Path, dataset: Path, detector: str, **changes) -> Path:
    values = {
        "name": "tiny",
        "detector": detector,
        "detector_options": dict(TINY[detector]),
        "input_size": [32, 32],
        "data": {"format": "synthetic", "root": str(dataset), "category": "fabric", "workers": 0},
        "epochs": 4,
        "max_steps": 3,
        "batch_size": 4,
        "lr": 0.001,
        "device": "cpu",
        "out": str(folder / "runs"),
        "val_every_steps": 2,
        **changes,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def child_environment(**extra: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE")}
    environment.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return environment


def torchrun(script: Path, *arguments: str, record: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(script),
    ]
    return subprocess.run(
        [*command, *arguments],
        env=child_environment(RECORD_DIR=str(record)),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("detector", ["rdna", "alocc"])
def test_two_gloo_processes_train_one_model_into_one_run_that_resumes_in_one_process(
    tmp_path, dataset, detector
):
    # alocc also under a time limit: its learning rates then follow rank 0's clock on both processes.
    config = write_config(tmp_path, dataset, detector, time_limit_minutes=30 if detector == "alocc" else None)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER, encoding="utf-8")
    record = tmp_path / "record"
    record.mkdir()
    evaluate = [] if detector == "rdna" else ["--no-eval"]  # rank 0 evaluates once; enough to show it
    result = torchrun(script, "train", "--config", str(config), "--no-progress", *evaluate, record=record)
    assert result.returncode == 0, result.stdout + result.stderr

    ranks = [torch.load(record / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] == 3
    # One model: every weight and buffer equal on both processes, and trained (not the initial weights).
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for name, tensor in ranks[0]["state"].items():
        assert torch.equal(tensor, ranks[1]["state"][name]), name
    # Each process saw its own half of every batch: the epoch's images split without overlap.
    first_epoch = [rank["seen"][0] for rank in ranks]
    assert len(first_epoch[0]) == len(first_epoch[1]) >= 2
    assert not set(first_epoch[0]) & set(first_epoch[1])
    # ... and drew its own random numbers (input noise, latent codes), not the other's.
    assert not torch.equal(ranks[0]["random_draw"], ranks[1]["random_draw"])

    # Only rank 0 wrote: one run directory, its checkpoint the processes' common weights, plain names.
    runs = sorted(path.name for path in (tmp_path / "runs").iterdir())
    assert runs == ["tiny"]
    run_dir = tmp_path / "runs" / "tiny"
    last = load_checkpoint(checkpoint_path(run_dir, "last"))
    assert last["step"] == 3
    assert not any(name.startswith("module.") for name in last["model"])
    for name, tensor in last["model"].items():
        assert torch.equal(tensor, ranks[0]["state"][name]), name
    history_rows = (run_dir / "history.csv").read_text().strip().splitlines()
    assert len(history_rows) == 1 + 3  # header and one row per step, written once
    assert (run_dir / "metrics.json").is_file() == (detector == "rdna")
    assert "run: " in result.stdout and result.stdout.count("run: ") == 1  # one process reports

    # The DDP run resumes in one process, from its step, with its weights.
    resumed = train(
        load_config(run_dir / "config.yaml", {"max_steps": 5}), resume=True, progress=False, evaluate=False
    )
    assert resumed == run_dir
    assert load_checkpoint(checkpoint_path(run_dir, "last"))["step"] == 5


def test_devices_option_resumes_a_one_process_run_on_two_processes(tmp_path, dataset):
    config = write_config(tmp_path, dataset, "rdna", max_steps=2)
    run_dir = train(load_config(config), progress=False, evaluate=False)
    one_process = load_checkpoint(checkpoint_path(run_dir, "last"))
    assert one_process["step"] == 2

    environment = child_environment()
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--resume",
            str(run_dir),
            "--max-steps",
            "4",
            "--devices",
            "2",
            "--no-progress",
            "--no-eval",
        ],
        env=environment,
    )
    assert result.exit_code == 0, result.output
    two_processes = load_checkpoint(checkpoint_path(run_dir, "last"))
    assert two_processes["step"] == 4
    assert sorted(path.name for path in run_dir.parent.iterdir()) == [run_dir.name]
    changed = [
        name
        for name, tensor in two_processes["model"].items()
        if not torch.equal(tensor, one_process["model"][name])
    ]
    assert changed  # the two processes trained the weights they resumed from


def test_the_sampler_shares_each_batch_between_ranks_and_one_process_is_unchanged():
    single = _EpochSampler(11, seed=3)
    single.set_epoch(2, skip=4)
    order = [index for _, index in single]
    assert len(order) == len(single) == 7  # one process: every remaining image, as before
    shares = []
    for rank in (0, 1):
        sampler = _EpochSampler(11, seed=3, rank=rank, world_size=2, batch_size=4)
        sampler.set_epoch(2, skip=4)
        shares.append([index for _, index in sampler])
        assert len(shares[-1]) == len(sampler) == 2  # one whole batch of 4 is left after the skip
    # Step k's total batch is the one process's batch k, cut in halves.
    assert shares[0] + shares[1] == order[:4]


def test_ranks_above_zero_draw_their_own_random_streams():
    assert len({rank_seed(0, rank) for rank in (1, 2, 3)}) == 3
    assert rank_seed(0, 1, step=0) != rank_seed(0, 1, step=10)
    assert rank_seed(5, 1) == rank_seed(5, 1)


TORCHRUN = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"RANK": "2", "WORLD_SIZE": "2", **TORCHRUN}, "RANK=2"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR"),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}, "MASTER_PORT"),
        ({"LOCAL_RANK": "0"}, "LOCAL_RANK is set but WORLD_SIZE"),
        ({"WORLD_SIZE": "2", **TORCHRUN}, "RANK is not"),
        ({"RANK": "one", "WORLD_SIZE": "2", **TORCHRUN}, "RANK='one'"),
        (
            {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2", **TORCHRUN},
            "LOCAL_RANK=2",
        ),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "70000"}, "MASTER_PORT=70000"),
    ],
)
def test_inconsistent_torchrun_variables_are_one_line_naming_the_variable(variables, named):
    with pytest.raises(InspectorError) as error:
        world_from_environment(variables)
    assert named in str(error.value) and "\n" not in str(error.value)


def test_torchrun_variables_describe_the_process_and_none_mean_one_process():
    assert world_from_environment({}) == World()
    world = world_from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", **TORCHRUN})
    assert (world.rank, world.size, world.local_rank, world.is_main) == (3, 4, 1, False)
    single = world_from_environment({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    assert not single.is_distributed
    with joined(torch.device("cpu"), "nccl", {}) as world:  # one process: no process group, no backend check
        assert world.any(True, False) == (True, False) and world.broadcast("x") == "x"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_an_unavailable_backend_is_one_line_naming_it(tmp_path, dataset):
    with pytest.raises(InspectorError, match="backend nccl needs CUDA GPUs"):
        choose_backend("nccl", torch.device("cpu"))
    config = write_config(tmp_path, dataset, "rdna")
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--config", str(config), "--devices", "2", "--backend", "nccl"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: backend nccl needs CUDA GPUs and this run trains on the CPU (no CUDA GPU is usable here); "
        "use --backend gloo (or auto)"
    ]
    environment = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", **TORCHRUN}
    result = runner.invoke(cli, ["train", "--config", str(config), "--backend", "nccl"], env=environment)
    assert result.exit_code == 2 and "backend nccl" in result.output
    assert not (tmp_path / "runs").exists()


def test_bad_torchrun_variables_stop_the_command_before_anything_is_written(tmp_path, dataset):
    config = write_config(tmp_path, dataset, "rdna")
    result = CliRunner().invoke(
        cli, ["train", "--config", str(config)], env={"RANK": "2", "WORLD_SIZE": "2", **TORCHRUN}
    )
    assert result.exit_code == 2
    assert (
        len(result.output.strip().splitlines()) == 1 and "RANK=2 must be below WORLD_SIZE=2" in result.output
    )
    assert not (tmp_path / "runs").exists()


def test_a_total_batch_that_does_not_split_over_the_processes_is_refused():
    from inspector.training.trainer import _batch_size

    assert _batch_size(8, 100, 1) == 8 and _batch_size(8, 5, 1) == 5  # one process: as before
    assert _batch_size(8, 100, 2) == 8 and _batch_size(8, 5, 2) == 4
    with pytest.raises(InspectorError, match="batch_size 5 does not split evenly over 2 processes"):
        _batch_size(5, 100, 2)
