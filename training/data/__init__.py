"""Datasets: readers for each on-disk format, anomaly synthesis, and the dispatcher from a config."""

from __future__ import annotations

from inspector.config import TrainConfig
from training.data.samples import Sample, Splits, split_validation

__all__ = ["Sample", "Splits", "build_splits", "split_validation"]


def build_splits(config: TrainConfig) -> Splits:
    """Read the dataset that ``config.data`` describes into train / validation / test samples.

    Raises:
        InspectorError: missing or empty folders, unknown category or class, wrong layout.
    """
    data_format = config.data.format
    if data_format == "synthetic":
        from training.data.synthetic import build_synthetic_splits

        return build_synthetic_splits(config)
    if data_format == "mvtec":
        from training.data.mvtec import build_mvtec_splits

        return build_mvtec_splits(config)
    if data_format == "folder":
        from training.data.folder import build_folder_splits

        return build_folder_splits(config)
    from training.data.oneclass import build_oneclass_splits

    return build_oneclass_splits(config)
