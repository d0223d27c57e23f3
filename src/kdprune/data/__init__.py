"""Datasets (read once into uint8 tensors), tensor-resident loaders and batched augmentation."""

from kdprune.data.datasets import DATASETS, ImageDataset, load_dataset
from kdprune.data.loader import TensorLoader

__all__ = ["DATASETS", "ImageDataset", "TensorLoader", "load_dataset"]
