"""Datasets: readers for each on-disk format, anomaly synthesis, and the dispatcher from a config."""

from __future__ import annotations

from torch.utils.data import Dataset

from inspector.config import TrainConfig
from inspector.training.data.samples import Sample, Splits, split_validation

__all__ = ["Sample", "Splits", "build_splits", "split_validation", "training_datasets"]


def build_splits(config: TrainConfig) -> Splits:
    """Read the dataset that ``config.data`` describes into train / validation / test samples.

    Raises:
        InspectorError: missing or empty folders, unknown category or class, wrong layout.
    """
    data_format = config.data.format
    if data_format == "synthetic":
        from inspector.training.data.synthetic import build_synthetic_splits

        return build_synthetic_splits(config)
    if data_format == "mvtec":
        from inspector.training.data.mvtec import build_mvtec_splits

        return build_mvtec_splits(config)
    if data_format == "folder":
        from inspector.training.data.folder import build_folder_splits

        return build_folder_splits(config)
    from inspector.training.data.oneclass import build_oneclass_splits

    return build_oneclass_splits(config)


def training_datasets(
    config: TrainConfig, splits: Splits, synthetic_anomalies: bool
) -> tuple[Dataset, Dataset]:
    """The training and validation sets of ``splits``: every image through the shared preprocessing
    (:class:`ImageDataset`); with ``synthetic_anomalies``, anomalies pasted in, fresh each epoch for
    training and a fixed set for validation."""
    from inspector.training.data.dataset import ImageDataset

    train_set: Dataset = ImageDataset(splits.train, config.input_size, config.channels)
    val_set: Dataset = ImageDataset(splits.val, config.input_size, config.channels)
    if synthetic_anomalies:
        from inspector.training.data.anomaly_source import anomaly_source_from_config
        from inspector.training.data.synthesis import SyntheticAnomalyDataset

        source = anomaly_source_from_config(config)
        train_set = SyntheticAnomalyDataset(
            train_set,
            source,
            seed=config.seed,
            crop_size=config.crop_size,
            line_probability=config.data.line_anomaly_probability,
            shade_probability=config.data.shade_anomaly_probability,
        )
        val_set = SyntheticAnomalyDataset(val_set, source, seed=config.seed + 1)
    return train_set, val_set
