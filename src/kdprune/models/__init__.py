"""Architectures and their registry: ``create_model(name, num_classes)``."""

from kdprune.models.registry import create_model, list_models, model_info

# Importing the modules registers their architectures.
from kdprune.models import resnet_cifar as _resnet_cifar  # noqa: F401
from kdprune.models import vgg as _vgg  # noqa: F401

__all__ = ["create_model", "list_models", "model_info"]
