"""The one MAC counter: multiply-accumulates of a model's Conv2d and Linear layers for one input.

Channel pruning's targets (``--target-macs``), its plans, the reports and ``kdprune inspect`` all count
with it, so a "2x" means the same everywhere.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def trace_layers(model: nn.Module, example_input: torch.Tensor, hook) -> None:
    """One forward of the first input of ``example_input``, in eval mode (restored after), without gradients,
    calling ``hook(module, inputs, output)`` at every Conv2d and Linear."""
    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input[:1])
    finally:
        model.train(was)
        for h in hs:
            h.remove()


def count_macs(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """``(dense MACs, non-zero MACs)`` of the Conv2d and Linear layers for one input (the first of the
    batch), the model in eval mode (restored after). A weight that is zero (pruned) costs no non-zero MAC."""
    dense, nonzero = [0], [0]

    def hook(m, inp, out):
        positions = out.shape[2] * out.shape[3] if isinstance(m, nn.Conv2d) else out.numel() // out.shape[-1] // out.shape[0]
        dense[0] += positions * m.weight.numel()
        nonzero[0] += positions * int(torch.count_nonzero(m.weight))

    trace_layers(model, example_input, hook)
    return dense[0], nonzero[0]
