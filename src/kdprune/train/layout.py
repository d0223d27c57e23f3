"""The memory format of training and inference: ``channels_last`` (NHWC strides) by default.

Measured on a 2-core AMD EPYC (``benchmarks/training_speed.py``): ResNet-20 training steps run 1.28-1.37x
faster in ``channels_last`` than in NCHW at 16x16 and 32x32, because oneDNN's convolutions and BatchNorm
work in NHWC natively and NCHW tensors are reordered inside every convolution. On CUDA it is PyTorch's
guidance for convolutional networks (tensor cores under AMP). Elsewhere (MPS, ...) the default is NCHW.

Only strides change: shapes, parameter names, state_dicts, masks, scores and exports are the same tensors
in either format (safetensors and ONNX get contiguous copies), and a checkpoint saved in one format
loads into a model in the other. Float results differ in the last bits between the two formats, so a
run records which one it used (``channels_last`` in its config.yaml) and a resumed run keeps it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

_FAST_DEVICES = ("cpu", "cuda")


def default_channels_last(device: torch.device | str) -> bool:
    """The layout that measures faster on ``device``: channels_last on CPU and CUDA."""
    return torch.device(device).type in _FAST_DEVICES


def is_channels_last(model: nn.Module) -> bool:
    """Whether the model's 4-d weights are in channels_last (the first one whose two layouts differ decides:
    a weight with one input channel and a 1x1 kernel is both at once)."""
    for p in model.parameters():
        if p.dim() == 4:
            cl, nchw = p.is_contiguous(memory_format=torch.channels_last), p.is_contiguous()
            if cl != nchw:
                return cl
    return False


def set_layout(model: nn.Module, channels_last: bool) -> nn.Module:
    """Put every 4-d parameter and buffer of ``model`` in channels_last (or back in NCHW), in place: the
    Parameter objects stay the same, so optimizers and bound masks still refer to them."""
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def as_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A batch of images in the model's layout (a no-op when it already is, e.g. a TensorLoader's)."""
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
