"""Every registered detector, by name from the registry: builds, trains, scores and exports with parity.

A new detector is covered as soon as it registers: it only needs an entry in ``TINY`` (the test fails,
saying so, until it has one). The option vocabulary's renames (``training/detectors/renamed.py``) are
checked against the detectors' constructors here too.
"""

from __future__ import annotations

import inspect

import numpy as np
import onnxruntime as ort
import pytest
import torch
from runtime_images import textured_images

from inspector.artifact import INPUT_NAME, MAP_OUTPUT, SCORE_OUTPUT
from inspector.errors import InspectorError
from inspector.export.pipeline import export_detector
from inspector.preprocess import prepare_batch
from inspector.training.detectors import build_detector, detector_names, get_detector_class
from inspector.training.detectors.renamed import RENAMED, check_renamed_options, upgrade_options

SIZE = (32, 32)
CHANNELS = 3

#: Options that make each detector tiny (first blocks of 4 channels), so that it trains and exports in a
#: second or two. Every registered detector needs an entry.
TINY: dict[str, dict] = {
    "alocc": {"base_width": 4, "max_width": 8},
    "bigan": {"base_width": 4, "max_width": 8, "latent_dim": 8, "rec_weight": 1.0},
    "memvae": {
        "base_width": 4,
        "max_width": 8,
        "hidden_dim": 16,
        "latent_dim": 8,
        "memory_slots": 10,
        "memory_dim": 8,
    },
    "advvae": {"base_width": 4, "max_width": 8, "latent_dim": 8, "discriminator_width": 4},
    "draem": {"reconstruction_width": 4, "segmentation_width": 4},
    "rdna": {"reconstruction_width": 4, "segmentation_width": 4, "discriminator_width": 4},
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets run fastest on one thread, and the test machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_options(name: str) -> dict:
    if name not in TINY:
        pytest.fail(
            f"detector '{name}' is registered but has no tiny options: add TINY['{name}'] to "
            "tests/test_registry.py (options that make it small enough to train and export in seconds)"
        )
    return TINY[name]


def training_batch(count: int, synthetic_anomalies: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """Normal images in [0, 1]; with synthetic anomalies also a pasted bright square in half of them."""
    generator = torch.Generator().manual_seed(seed)
    image = 0.3 + 0.4 * torch.rand(count, CHANNELS, *SIZE, generator=generator)
    if not synthetic_anomalies:
        return {"image": image}
    mask = torch.zeros(count, 1, *SIZE)
    mask[: count // 2, :, 8:20, 10:22] = 1.0
    augmented = image * (1 - mask) + 0.95 * mask
    return {"image": image, "augmented": augmented, "mask": mask, "has_anomaly": mask.flatten(1).amax(1)}


@pytest.mark.parametrize("name", detector_names())
def test_every_registered_detector_trains_scores_and_exports_with_parity(name):
    torch.manual_seed(0)
    detector = build_detector(name, SIZE, CHANNELS, tiny_options(name))
    detector.configure_optimizers(1e-3, 2)
    detector.train()
    for step in range(2):
        batch = training_batch(4, detector.uses_synthetic_anomalies, seed=step)
        losses = detector.training_step(batch)
        assert losses and all(np.isfinite(value) for value in losses.values()), (name, step, losses)

    detector.eval()
    images = prepare_batch(textured_images(5), SIZE, CHANNELS)
    with torch.no_grad():
        score, anomaly_map = detector(torch.from_numpy(images))
    assert score.shape == (5,) and anomaly_map.shape == (5, 1, *SIZE)
    assert torch.isfinite(score).all() and torch.isfinite(anomaly_map).all()

    # The project's one export path, with its parity check, at thresholds inside the scores' range.
    checked = export_detector(
        detector,
        images,
        float(score.median()),
        float(anomaly_map.median()),
        "generated test images",
        log=lambda line: None,
    )
    assert checked.parity.passed, checked.parity.summary()
    assert checked.parity.batch_sizes == [1, 4] and set(checked.parity.by_batch_size) == {"1", "4"}
    assert sorted(graph.name for graph in checked.components) == sorted(detector.components())
    for graph in [checked.model, *checked.components]:
        declared = ort.InferenceSession(graph.onnx_bytes, providers=["CPUExecutionProvider"])
        for item in [*declared.get_inputs(), *declared.get_outputs()]:
            assert item.shape[0] == "batch" and all(isinstance(size, int) for size in item.shape[1:]), (
                f"{graph.name}: {item.name} is declared {item.shape}"
            )

    # And onnxruntime against torch once more here, on a batch size the check did not use.
    session = ort.InferenceSession(checked.model.onnx_bytes, providers=["CPUExecutionProvider"])
    onnx_score, onnx_map = session.run([SCORE_OUTPUT, MAP_OUTPUT], {INPUT_NAME: images[:3]})
    assert onnx_score.shape == (3,) and onnx_map.shape == (3, 1, *SIZE)
    for ours, theirs in ((onnx_score, score[:3]), (onnx_map, anomaly_map[:3])):
        theirs = theirs.numpy()
        allowed = 1e-4 * max(1.0, float(np.abs(theirs).max()))
        assert float(np.abs(ours - theirs).max()) <= allowed, name


def test_the_tiny_options_name_only_registered_detectors():
    assert sorted(TINY) == detector_names(), "remove TINY entries of detectors that are no longer registered"


def _parameters(name: str) -> set[str]:
    return set(inspect.signature(get_detector_class(name).__init__).parameters)


@pytest.mark.parametrize("name", sorted(RENAMED))
def test_each_rename_goes_from_a_name_no_longer_accepted_to_one_the_detector_takes(name):
    assert name in detector_names()
    parameters = _parameters(name)
    for old, new in RENAMED[name].items():
        assert old not in parameters, f"{name}: '{old}' is a current option; it cannot be a renamed one"
        assert new in parameters, f"{name}: '{old}' was renamed to '{new}', which {name} does not take"


def test_an_old_option_name_is_refused_in_one_line_naming_the_new_one():
    check_renamed_options("advvae", {"adv_rec_weight": 0.002, "kl_weight": 1e-4})
    check_renamed_options("rdna", {"adv_rec_weight": 0.1})
    check_renamed_options("draem", None)

    with pytest.raises(InspectorError) as raised:
        check_renamed_options("advvae", {"recon_weight": 0.002})
    assert (
        str(raised.value) == "detector 'advvae': detector_options 'recon_weight' was renamed 'adv_rec_weight'"
    )

    with pytest.raises(InspectorError) as raised:
        check_renamed_options("bigan", {"latent_size": 8, "width": 4, "alpha": 0.9})
    message = str(raised.value)
    assert "\n" not in message
    assert (
        "'latent_size' was renamed 'latent_dim'" in message and "'width' was renamed 'base_width'" in message
    )


def test_build_detector_refuses_an_old_option_name_naming_the_new_one():
    with pytest.raises(InspectorError, match=r"'kld_weight' was renamed 'kl_weight'"):
        build_detector("advvae", SIZE, CHANNELS, {**TINY["advvae"], "kld_weight": 1e-4})


@pytest.mark.parametrize("name", sorted(RENAMED))
def test_options_stored_by_an_older_version_upgrade_and_its_weights_load(name):
    """A checkpoint written before the renames stores the old names; its weights are the same."""
    new_to_old = {new: old for old, new in RENAMED[name].items()}
    stored = {new_to_old.get(key, key): value for key, value in TINY[name].items()}
    assert stored != TINY[name], f"TINY['{name}'] should use one of its renamed options"

    upgraded = upgrade_options(name, stored)
    assert upgraded == TINY[name]
    trained = build_detector(name, SIZE, CHANNELS, TINY[name])
    reloaded = build_detector(name, SIZE, CHANNELS, upgraded)
    reloaded.load_state_dict(trained.state_dict())
