"""The VAE detectors: memory-augmented VAE (``memvae``) and adversarial VAE (``advvae``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from inspector.cli import cli
from inspector.training.detectors import build_detector
from inspector.training.detectors.advvae import AdvVAE
from inspector.training.detectors.memvae import MemVAE

torch.set_num_threads(1)

SMALL = {
    "memvae": {"base_width": 8, "max_width": 16, "hidden_dim": 32},
    "advvae": {"base_width": 8, "max_width": 16, "latent_dim": 16},
}


def blobs(count: int, channels: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Normal images: one soft bright blob on a dark background, at a random place."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(size[0]).view(1, -1, 1).float()
    cols = torch.arange(size[1]).view(1, 1, -1).float()
    centre_r = torch.rand(count, 1, 1, generator=generator) * size[0]
    centre_c = torch.rand(count, 1, 1, generator=generator) * size[1]
    blob = torch.exp(-((rows - centre_r) ** 2 + (cols - centre_c) ** 2) / (2 * (min(size) / 6) ** 2))
    return blob.unsqueeze(1).expand(count, channels, *size).clone()


@pytest.mark.parametrize("name", ["memvae", "advvae"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(28, 28), (32, 32), (24, 40)])
def test_detector_scores_maps_and_draws_images_at_any_size_and_channel_count(name, channels, size):
    detector = build_detector(name, size, channels, SMALL[name]).eval()
    images = torch.rand(3, channels, *size)

    score, anomaly_map = detector(images)
    assert score.shape == (3,) and anomaly_map.shape == (3, 1, *size)
    assert torch.all(anomaly_map >= 0) and torch.all(torch.isfinite(score))
    reconstruction = detector.visuals(images)["reconstruction"]
    assert reconstruction.shape == (3, channels, *size)
    assert reconstruction.min() >= 0 and reconstruction.max() <= 1
    samples = detector.prior_samples(5)
    assert samples.shape == (5, channels, *size) and samples.min() >= 0 and samples.max() <= 1
    for component in detector.components().values():
        outputs = component.module(*component.example_inputs(2))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        assert len(outputs) == len(component.output_names)
        assert all(output.shape[0] == 2 for output in outputs)


@pytest.mark.parametrize("name", ["memvae", "advvae"])
def test_a_few_training_steps_fit_normal_images_with_finite_losses(name):
    torch.manual_seed(0)
    detector = build_detector(name, (28, 28), 1, SMALL[name])
    detector.configure_optimizers(lr=2e-3, total_steps=30)
    images = blobs(32, 1, (28, 28))
    before = detector.validation_loss({"image": images})
    initial = [p.detach().clone() for p in detector.parameters()]

    for _ in range(30):
        losses = detector.training_step({"image": images})

    assert all(np.isfinite(value) for value in losses.values())
    assert detector.validation_loss({"image": images}) < before
    assert all(
        not torch.equal(a, b.detach()) for a, b in zip(initial, detector.parameters()) if b.requires_grad
    )


def test_memory_addressing_is_sparse_non_negative_and_sums_to_one():
    torch.manual_seed(0)
    detector = MemVAE((28, 28), 1, memory_slots=50, memory_dim=16, latent_dim=8)
    memory = detector.memory_decoder.memory
    assert memory.shrink_threshold == pytest.approx(1 / 50)

    weights = memory.addressing(torch.randn(64, 16) * 3)

    assert torch.all(weights >= 0)
    assert torch.allclose(weights.sum(dim=1), torch.ones(64), atol=1e-5)
    # Hard shrinkage zeroes every slot whose softmax weight is below 1/slots: many per row.
    assert (weights == 0).float().mean() > 0.3
    softmax = torch.softmax(torch.randn(4, 16) @ memory.slots.t(), dim=1)
    assert softmax.min() > 0  # the softmax alone is never sparse; the zeros come from the shrinkage


def test_memvae_decoder_sees_only_a_combination_of_memory_slots():
    detector = MemVAE((28, 28), 1, memory_slots=20, memory_dim=8, latent_dim=4).eval()
    decoder = detector.memory_decoder
    z = torch.randn(6, 4)
    with torch.no_grad():
        reconstruction, weights = decoder(z)
        rebuilt = decoder.decoder(weights @ decoder.memory.slots)
    assert torch.allclose(reconstruction, rebuilt, atol=1e-6)


@pytest.mark.parametrize("name", ["memvae", "advvae"])
def test_scores_use_the_mean_latent_so_the_same_image_scores_the_same_twice(name):
    detector = build_detector(name, (28, 28), 1, SMALL[name])
    detector.configure_optimizers(1e-3, 2)
    detector.training_step({"image": blobs(8, 1, (28, 28))})  # logvar no longer at its initial value
    detector.eval()
    images = blobs(4, 1, (28, 28), seed=3)

    torch.manual_seed(1)
    first = detector(images)[0]
    torch.manual_seed(2)
    second = detector(images)[0]

    assert torch.equal(first, second)
    # The score is the error of the reconstruction decoded from mu (+ the option's KL term, off here).
    if name == "memvae":
        with torch.no_grad():
            mu, _ = detector.encoder(images)
            expected = (detector.memory_decoder(mu)[0] - images).pow(2).flatten(1).mean(dim=1)
        assert torch.allclose(first, expected, atol=1e-6)


def test_memvae_score_can_add_the_kl_term():
    torch.manual_seed(0)
    plain = MemVAE((28, 28), 1, **SMALL["memvae"]).eval()
    with_kl = MemVAE((28, 28), 1, score_kl_weight=1.0, **SMALL["memvae"]).eval()
    with_kl.load_state_dict(plain.state_dict())
    images = blobs(4, 1, (28, 28))
    assert torch.all(with_kl(images)[0] > plain(images)[0])


def test_both_adversarial_terms_of_advvae_train_the_decoder():
    torch.manual_seed(0)
    detector = AdvVAE((28, 28), 1, **SMALL["advvae"])
    assert detector.adv_rec_weight > 0 and detector.adv_sample_weight > 0
    detector.train()
    images = blobs(8, 1, (28, 28))

    for term in ("adv_reconstruction", "adv_sample"):
        detector.zero_grad(set_to_none=True)
        terms = detector.generator_terms(images)
        terms[term].backward()
        decoder_grads = [p.grad for p in detector.decoder.parameters() if p.grad is not None]
        assert decoder_grads and sum(float(g.abs().sum()) for g in decoder_grads) > 0, term

    # And both are inside the loss the generator step minimises, with their weights.
    terms = detector.generator_terms(images)
    unweighted = terms["mse"] + detector.kl_weight * terms["kl"]
    expected = unweighted + 0.002 * terms["adv_reconstruction"] + 0.002 * terms["adv_sample"]
    assert torch.allclose(detector.generator_loss(terms), expected)


def test_advvae_ssim_option_adds_an_ssim_term():
    detector = AdvVAE((32, 32), 3, ssim_weight=1.0, **SMALL["advvae"])
    detector.configure_optimizers(1e-3, 1)
    losses = detector.training_step({"image": blobs(4, 3, (32, 32))})
    assert 0 < losses["ssim"] <= 2


def test_advvae_discriminator_score_is_one_minus_d_of_x():
    torch.manual_seed(0)
    detector = AdvVAE((28, 28), 1, score="discriminator", **SMALL["advvae"])
    detector.configure_optimizers(1e-3, 3)
    for _ in range(3):
        detector.training_step({"image": blobs(8, 1, (28, 28))})
    detector.eval()
    images = torch.rand(5, 1, 28, 28)

    score, anomaly_map = detector(images)

    real_probability = detector.components()["discriminator"].module(images)
    assert torch.allclose(score, 1 - real_probability, atol=1e-6)
    assert torch.all((score >= 0) & (score <= 1))
    detector.score = "reconstruction"
    assert torch.equal(detector(images)[1], anomaly_map)  # the map is the reconstruction error either way


def test_unknown_options_are_refused():
    with pytest.raises(ValueError, match="score"):
        AdvVAE((28, 28), 1, score="magic")
    with pytest.raises(ValueError, match="preset"):
        MemVAE((28, 28), 1, preset="imagenet")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["memvae", "advvae"])
def test_onnx_export_with_a_dynamic_batch_matches_torch(name, tmp_path):
    torch.manual_seed(0)
    detector = build_detector(name, (24, 40), 3, SMALL[name])
    detector.configure_optimizers(1e-3, 2)
    detector.training_step({"image": blobs(8, 3, (24, 40))})  # BN running statistics away from defaults
    detector.eval()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        detector,
        (torch.rand(2, 3, 24, 40),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["score", "anomaly_map"],
        dynamic_axes={"image": {0: "batch"}, "score": {0: "batch"}, "anomaly_map": {0: "batch"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    for batch in (1, 5):
        images = blobs(batch, 3, (24, 40), seed=batch)
        score, anomaly_map = session.run(None, {"image": images.numpy()})
        with torch.no_grad():
            expected_score, expected_map = detector(images)
        np.testing.assert_allclose(score, expected_score.numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(anomaly_map, expected_map.numpy(), rtol=1e-4, atol=1e-6)


# --- trained and exported like every detector --------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file of unsigned bytes, as MNIST and Fashion-MNIST ship them."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_tiny_fashion_mnist(folder: Path) -> None:
    """A Fashion-MNIST-format set of 28x28 shapes: class 0 discs, class 1 bars, class 2 rings."""
    rows, cols = np.mgrid[0:28, 0:28]
    rng = np.random.default_rng(0)

    def shape(label: int) -> np.ndarray:
        r, c = 14 + rng.integers(-3, 4), 14 + rng.integers(-3, 4)
        distance = np.hypot(rows - r, cols - c)
        drawn = [distance < 7, np.abs(cols - c) < 3, np.abs(distance - 8) < 1.5][label]
        return (drawn * 220 + rng.integers(0, 20, (28, 28))).clip(0, 255)

    folder.mkdir(parents=True)
    for split, per_class in (("train", 16), ("t10k", 4)):
        labels = np.repeat(np.arange(3), per_class)
        write_idx(folder / f"{split}-images-idx3-ubyte", np.stack([shape(label) for label in labels]))
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["memvae", "advvae"])
def test_one_class_run_trains_calibrates_and_exports_a_model_that_matches_torch(name, tmp_path):
    from inspector.config import load_config
    from inspector.training.checkpoint import load_detector
    from inspector.training.trainer import train

    write_tiny_fashion_mnist(tmp_path / "fmnist")
    config = load_config(
        Path(__file__).resolve().parents[1] / "configs" / f"{name}_fmnist.yaml",
        {
            "name": name,
            "detector_options": {**SMALL[name], "preset": "mnist"} if name == "memvae" else SMALL[name],
            "data.root": str(tmp_path / "fmnist"),
            "data.val_fraction": 0.25,
            "data.workers": 0,
            "max_steps": 4,
            "batch_size": 4,
            "val_every_steps": 2,
            "time_limit_minutes": None,
            "device": "cpu",
            "out": str(tmp_path / "runs"),
        },
    )

    run_dir = Path(train(config, progress=False))

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["image_auroc"] <= 1
    assert (run_dir / "calibration.json").is_file()
    assert (run_dir / "plots" / "samples.png").is_file() and (
        run_dir / "plots" / "prior_samples.png"
    ).is_file()

    result = CliRunner().invoke(cli, ["export", str(run_dir), "--onnx"])
    assert result.exit_code == 0, result.output
    model_path = run_dir / "export" / "model.onnx"
    detector, _, _ = load_detector(run_dir)
    components = sorted(path.stem for path in (model_path.parent / "components").glob("*.onnx"))
    assert components == sorted(detector.components())
    images = blobs(3, 1, (28, 28), seed=5)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    score, anomaly_map = session.run(None, {"image": images.numpy()})
    with torch.no_grad():
        expected_score, expected_map = detector.eval()(images)
    np.testing.assert_allclose(score, expected_score.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(anomaly_map, expected_map.numpy(), rtol=1e-4, atol=1e-6)
