"""Datasets: one `MultiLabelDataset` type, loaders registered by name (`load_dataset`)."""

from models.data import emojitags, nuswide, openimages, voc2007  # noqa: F401 - registration
from models.data.base import (
    DATASETS,
    DatasetNotFoundError,
    MultiLabelDataset,
    load_dataset,
    subset_labels,
)

__all__ = ["DATASETS", "DatasetNotFoundError", "MultiLabelDataset", "load_dataset",
           "subset_labels"]
