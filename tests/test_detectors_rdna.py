"""RDNA and DRAEM: shapes, training steps, where the adversarial gradients go, scoring and ONNX export."""

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch

from inspector.errors import InspectorError
from inspector.training.detectors import build_detector, detector_names, get_detector_class
from inspector.training.detectors.draem import DRAEM
from inspector.training.detectors.rdna import RDNA

TINY = {"reconstruction_width": 4, "segmentation_width": 4}
TINY_RDNA = {**TINY, "discriminator_width": 4}


def _batch(channels: int, size: tuple[int, int], count: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Normal images, the same images with a bright square pasted into half of them, and the masks."""
    generator = torch.Generator().manual_seed(seed)
    image = 0.4 + 0.1 * torch.rand(count, channels, *size, generator=generator)
    mask = torch.zeros(count, 1, *size)
    mask[: count // 2, :, 4:12, 6:14] = 1.0
    augmented = image * (1 - mask) + 0.95 * mask
    return {"image": image, "augmented": augmented, "mask": mask, "has_anomaly": mask.flatten(1).amax(1)}


def _parameters(module: torch.nn.Module) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(old, new) for old, new in zip(before, module.parameters()))


@pytest.mark.parametrize("name", ["rdna", "draem"])
@pytest.mark.parametrize(("channels", "size"), [(1, (32, 32)), (3, (32, 48)), (3, (40, 24))])
def test_scoring_gives_one_score_and_one_map_per_image(name, channels, size):
    detector = build_detector(name, size, channels, TINY_RDNA if name == "rdna" else TINY).eval()
    with torch.no_grad():
        score, anomaly_map = detector(torch.rand(2, channels, *size))
        reconstruction = detector.visuals(torch.rand(2, channels, *size))["reconstruction"]
    assert score.shape == (2,)
    assert anomaly_map.shape == (2, 1, *size)
    assert reconstruction.shape == (2, channels, *size)
    assert float(anomaly_map.min()) >= 0.0 and float(anomaly_map.max()) <= 1.0


def test_training_step_updates_every_network_and_reports_finite_losses():
    torch.manual_seed(0)
    detector = build_detector(
        "rdna", (32, 32), 3, {**TINY_RDNA, "adv_rec_weight": 0.1, "adv_seg_weight": 0.1}
    )
    detector.configure_optimizers(lr=1e-3, total_steps=10)
    networks = {
        "reconstructor": detector.reconstructor,
        "segmenter": detector.segmenter,
        "reconstruction_discriminator": detector.reconstruction_discriminator,
        "mask_discriminator": detector.mask_discriminator,
    }
    before = {name: _parameters(module) for name, module in networks.items()}
    losses = detector.training_step(_batch(3, (32, 32)))
    for key in (
        "loss",
        "mse",
        "ssim",
        "focal",
        "adversarial_reconstruction",
        "adversarial_mask",
        "reconstruction_discriminator_loss",
        "mask_discriminator_loss",
    ):
        assert np.isfinite(losses[key]), key
    for name, module in networks.items():
        assert _changed(before[name], module), f"{name} did not change"
    assert np.isfinite(detector.validation_loss(_batch(3, (32, 32), seed=1)))


def test_draem_builds_no_discriminator_and_trains_only_its_two_nets():
    detector = build_detector("draem", (32, 32), 1, TINY)
    detector.configure_optimizers(lr=1e-3, total_steps=10)
    assert not any("discriminator" in name for name, _ in detector.named_modules())
    assert set(detector.optimizers) == {"generator"}
    assert set(detector.components()) == {"reconstructor", "segmenter"}
    losses = detector.training_step(_batch(1, (32, 32)))
    assert set(losses) == {"loss", "mse", "ssim", "focal"}


def _gradient_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_adversarial_terms_send_gradients_into_reconstruction_and_segmentation_nets():
    torch.manual_seed(0)
    detector = build_detector(
        "rdna", (32, 32), 3, {**TINY_RDNA, "adv_rec_weight": 0.5, "adv_seg_weight": 0.5}
    )
    batch = _batch(3, (32, 32))
    _, parts, _ = detector.generator_loss(batch)

    def gradient_norms(term: torch.Tensor) -> tuple[float, float]:
        detector.zero_grad(set_to_none=False)
        term.backward(retain_graph=True)
        return _gradient_norm(detector.reconstructor), _gradient_norm(detector.segmenter)

    reconstruction_side, segmentation_side = gradient_norms(parts["adversarial_reconstruction"])
    assert reconstruction_side > 0 and segmentation_side == 0  # D_rec judges x_hat only
    reconstruction_side, segmentation_side = gradient_norms(parts["adversarial_mask"])
    assert reconstruction_side > 0 and segmentation_side > 0  # the map depends on both nets


def test_adversarial_weight_changes_the_generator_update_and_zero_weight_is_draem():
    batch = _batch(3, (32, 32))

    def one_step(name: str, options: dict, start: dict) -> list[torch.Tensor]:
        detector = build_detector(name, (32, 32), 3, options)
        missing, _ = detector.load_state_dict(start, strict=False)
        assert not any(key.startswith(("reconstructor", "segmenter")) for key in missing)
        detector.configure_optimizers(lr=1e-3, total_steps=10)
        detector.training_step(batch)
        return _parameters(detector.reconstructor) + _parameters(detector.segmenter)

    torch.manual_seed(0)
    start = build_detector("rdna", (32, 32), 3, TINY_RDNA).state_dict()
    draem = one_step("draem", TINY, start)
    zero_weight = one_step("rdna", {**TINY_RDNA, "adv_rec_weight": 0.0, "adv_seg_weight": 0.0}, start)
    adversarial = one_step("rdna", {**TINY_RDNA, "adv_rec_weight": 1.0, "adv_seg_weight": 1.0}, start)
    assert all(torch.equal(a, b) for a, b in zip(draem, zero_weight))
    assert any(not torch.equal(a, b) for a, b in zip(draem, adversarial))


def test_validation_loss_leaves_batch_norm_statistics_and_mode_alone():
    detector = build_detector("draem", (32, 32), 1, TINY)
    detector.train()
    before = {k: v.clone() for k, v in detector.state_dict().items() if "running" in k}
    detector.validation_loss(_batch(1, (32, 32)))
    assert detector.training
    assert all(torch.equal(before[k], v) for k, v in detector.state_dict().items() if "running" in k)


def _mean_filtered_max_by_hand(anomaly_map: np.ndarray, window: int = 21) -> float:
    height, width = anomaly_map.shape
    half = window // 2
    best = -np.inf
    for row in range(height):
        for col in range(width):
            patch = anomaly_map[max(0, row - half) : row + half + 1, max(0, col - half) : col + half + 1]
            best = max(best, float(patch.mean()))  # mean over the pixels inside the image only
    return best


def test_image_score_is_max_of_21x21_mean_filtered_map():
    torch.manual_seed(3)
    detector = build_detector("draem", (32, 40), 3, TINY)
    detector.configure_optimizers(lr=1e-2, total_steps=10)
    for _ in range(3):  # a few steps so the map is not uniform
        detector.training_step(_batch(3, (32, 40)))
    detector.eval()
    with torch.no_grad():
        score, anomaly_map = detector(_batch(3, (32, 40))["augmented"])
    for index in range(len(score)):
        expected = _mean_filtered_max_by_hand(anomaly_map[index, 0].numpy().astype(np.float64))
        assert float(score[index]) == pytest.approx(expected, abs=1e-5)
        assert float(score[index]) <= float(anomaly_map[index].max()) + 1e-6


def test_detectors_are_found_by_name_and_reject_unknown_options():
    assert {"rdna", "draem"} <= set(detector_names())
    assert get_detector_class("rdna") is RDNA and get_detector_class("draem") is DRAEM
    assert RDNA.uses_synthetic_anomalies and DRAEM.uses_synthetic_anomalies
    with pytest.raises(InspectorError, match="draem"):
        build_detector("draem", (32, 32), 3, {"adv_rec_weight": 0.1})


@pytest.mark.parametrize("separable", [False, True])
def test_onnx_export_with_dynamic_batch_matches_torch(separable):
    torch.manual_seed(0)
    detector = build_detector("rdna", (32, 48), 3, {**TINY_RDNA, "separable": separable})
    detector.configure_optimizers(lr=1e-2, total_steps=10)
    detector.training_step(_batch(3, (32, 48)))
    detector.eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        detector,
        (torch.rand(1, 3, 32, 48),),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["score", "anomaly_map"],
        dynamic_axes={"image": {0: "batch"}, "score": {0: "batch"}, "anomaly_map": {0: "batch"}},
    )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    images = torch.rand(3, 3, 32, 48)
    onnx_score, onnx_map = session.run(None, {"image": images.numpy()})
    with torch.no_grad():
        torch_score, torch_map = detector(images)
    assert onnx_score.shape == (3,) and onnx_map.shape == (3, 1, 32, 48)
    np.testing.assert_allclose(onnx_score, torch_score.numpy(), atol=1e-5)
    np.testing.assert_allclose(onnx_map, torch_map.numpy(), atol=1e-5)


def test_batchnorm_momentum_option_reaches_every_batch_norm_and_bad_values_are_refused():
    detector = build_detector("draem", (32, 32), 3, {**TINY, "batchnorm_momentum": 0.5})
    momenta = {m.momentum for m in detector.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta == {0.5}
    with pytest.raises(ValueError, match="batchnorm_momentum"):  # the trainer reports it as a config error
        build_detector("rdna", (32, 32), 3, {**TINY_RDNA, "batchnorm_momentum": 0.0})


def test_separable_option_makes_every_wide_3x3_convolution_depthwise_and_still_learns():
    options = {"reconstruction_width": 8, "segmentation_width": 8}
    plain = build_detector("draem", (32, 32), 3, options)
    separable = build_detector("draem", (32, 32), 3, {**options, "separable": True})
    for network in ("reconstructor", "segmenter"):
        convolutions = [m for m in getattr(separable, network).modules() if isinstance(m, torch.nn.Conv2d)]
        full = [m for m in convolutions if m.kernel_size == (3, 3) and m.groups == 1]
        depthwise = [m for m in convolutions if m.groups > 1]
        # Only the convolutions reading fewer than 8 channels (the image, the pair) and the output stay full.
        assert all(m.in_channels < 8 or m.out_channels < 8 for m in full)
        assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    count = lambda detector: sum(p.numel() for p in detector.parameters())  # noqa: E731
    assert count(separable) < count(plain) / 4
    separable.configure_optimizers(lr=1e-2, total_steps=10)
    before = _parameters(separable)
    losses = separable.training_step(_batch(3, (32, 32)))
    assert _changed(before, separable) and all(np.isfinite(value) for value in losses.values())


@pytest.mark.parametrize("signed_head", [False, True])
def test_signed_head_lifts_the_anomaly_probability_ceiling_of_an_all_negative_head(signed_head):
    # Short CPU trainings end with anomaly-minus-normal head weights that are all negative: after a ReLU the
    # anomaly probability can then never pass the softmax of the head's biases (0.5 here).
    detector = DRAEM((32, 32), 3, **TINY, signed_head=signed_head)
    head = detector.segmenter.output
    with torch.no_grad():
        head.weight[0] = 0.1
        head.weight[1] = -0.1
        head.bias.zero_()
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # batch statistics: features of unit variance, whatever the initial weights
        _, anomaly_map = detector.train()(images)
    if signed_head:
        assert anomaly_map.max() > 0.6
    else:
        assert anomaly_map.max() <= 0.5 + 1e-6
    state = detector.state_dict()  # the head's option changes no checkpoint key
    assert set(state) == set(DRAEM((32, 32), 3, **TINY, signed_head=not signed_head).state_dict())
