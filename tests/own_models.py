"""Small user models for tests/test_own_models.py: ``--arch own_models:tiny_cnn`` (tests/ is the cwd)."""

import torch.nn as nn

CONSTANT = 3


def tiny_cnn(num_classes, in_channels=3):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def gray_cnn(num_classes):
    """Takes no in_channels: built for 1-channel images."""
    return tiny_cnn(num_classes, in_channels=1)


def any_kwargs(**kwargs):
    return tiny_cnn(**kwargs)


def not_a_module_factory(num_classes, in_channels=3):
    return {"num_classes": num_classes}


def raising_factory(num_classes, in_channels=3):
    raise ValueError(f"no model for {num_classes} classes")


def ignores_in_channels(num_classes):
    """A factory that hard-codes RGB input: on 1-channel digits the early batch check names it."""
    return tiny_cnn(num_classes, in_channels=3)
