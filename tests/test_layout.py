"""The channels_last memory format (the default on the CPU): masks, checkpoints, exports and run configs."""

import pytest
import torch
import yaml

from kdprune.data import TensorLoader
from kdprune.losses import CrossEntropy
from kdprune.models import create_model
from kdprune.pruning import MaskSet, global_masks, prunable_parameters
from kdprune.train import Callback, OptimSpec, Trainer
from kdprune.train.layout import default_channels_last, is_channels_last, set_layout
from kdprune.checkpoint import load_checkpoint
from conftest import TINY_RUN


def _data(n=64, batch=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    kw = dict(mean=[0.5] * 3, std=[0.25] * 3)
    return (TensorLoader(x, y, batch, train=True, pad=1, flip=True, seed=3, **kw),
            TensorLoader(x[:32], y[:32], 32, **kw))


def _masked(seed=0):
    torch.manual_seed(seed)
    model = create_model("resnet20", 10)
    scores = {k: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) for k, p in
              prunable_parameters(model).items()}
    return model, MaskSet(global_masks(scores, 0.8))


def test_the_default_is_channels_last_on_cpu_and_cuda():
    assert default_channels_last("cpu") and default_channels_last("cuda")
    assert not default_channels_last("meta")


def test_masks_hold_exactly_through_channels_last_steps_with_momentum_and_weight_decay():
    train, test = _data()
    model, masks = _masked()
    spec = OptimSpec(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    trainer = Trainer(model, CrossEntropy(), spec, 3, train, test, masks=masks, progress=False)
    assert trainer.channels_last and is_channels_last(model)
    trainer.fit()
    params = dict(model.named_parameters())
    conv = params["conv1.weight"]
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for k, m in masks.masks.items():
        assert torch.count_nonzero(params[k].detach()[~m]) == 0, k
        buf = trainer.optimizer.state[params[k]]["momentum_buffer"]
        assert torch.count_nonzero(buf[~m]) == 0, k
        assert torch.count_nonzero(params[k].detach()[m]) > 0, k  # kept weights trained


class _Stop(Exception):
    pass


class _KillInEpoch(Callback):
    """Dies at the end of epoch ``at`` (0-based) before its checkpoint: the last one is epoch ``at - 1``'s."""

    def __init__(self, at):
        self.at = at

    def on_epoch_end(self, trainer, epoch, metrics):
        if epoch == self.at:
            raise _Stop


def _trainer(out_dir, channels_last, callbacks=()):
    train, test = _data()
    model, masks = _masked()
    return Trainer(model, CrossEntropy(), OptimSpec(lr=0.05), 3, train, test, masks=masks, out_dir=out_dir,
                   progress=False, channels_last=channels_last, callbacks=callbacks)


def test_a_channels_last_checkpoint_resumes_into_an_identical_next_step(tmp_path):
    whole = _trainer(tmp_path / "whole", True)
    whole.fit()
    with pytest.raises(_Stop):
        _trainer(tmp_path / "cut", True, [_KillInEpoch(1)]).fit()
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert state["epoch"] == 0 and state["model"]["conv1.weight"].is_contiguous(memory_format=torch.channels_last)
    resumed = _trainer(tmp_path / "cut", True)
    resumed.fit(resume=True)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    # the same checkpoint also loads into a model in NCHW: the same values, other strides
    nchw = _trainer(tmp_path / "nchw", False)
    nchw.load_state_dict(state)
    assert not is_channels_last(nchw.model)
    c = nchw.model.state_dict()
    assert all(torch.equal(c[k], state["model"][k]) for k in c)


@pytest.mark.slow
def test_export_from_a_channels_last_model_matches_pytorch(tmp_path):
    import kdprune

    torch.manual_seed(0)
    model = set_layout(create_model("resnet20", 10).eval(), True)
    r = kdprune.export(model, tmp_path / "m.onnx", format="onnx", input_shape=(3, 16, 16))
    assert r["onnx_max_abs_diff"] <= 1e-4
    kdprune.export(model, tmp_path / "m.safetensors", format="dense")
    from kdprune.io import load_tensors

    saved = load_tensors(tmp_path / "m.safetensors")
    assert all(torch.equal(saved[k], v.contiguous()) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_the_run_config_records_the_layout_and_a_resumed_run_keeps_it(run_cli, tmp_path):
    out = tmp_path / "t"
    code, _, err = run_cli("train", "--epochs", "1", "--batch-size", "128", "--out", out, "--no-channels-last")
    assert code == 0, err
    assert yaml.safe_load((out / "config.yaml").read_text())["channels_last"] is False
    # resumed under today's default (channels_last on): the run keeps what it recorded instead of refusing
    code, _, err = run_cli("train", "--epochs", "1", "--batch-size", "128", "--out", out, "--resume")
    assert code == 0, err
    assert "channels_last=False as it recorded" in err
    assert yaml.safe_load((out / "config.yaml").read_text())["channels_last"] is False
    code, _, err = run_cli("run", *TINY_RUN, "--sparsity", "0.5", "--retrain", "plain", "--out", tmp_path / "r")
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["channels_last"] is True


def test_a_sweep_left_to_a_changed_default_refuses_to_mix_layouts(run_cli, tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"out: {tmp_path / 'out'}\ngrid:\n  seed: [0]\nbase:\n  sparsity: [0.5]\n")
    old = tmp_path / "out" / "runs" / "0123456789ab"
    old.mkdir(parents=True)
    (old / "config.yaml").write_text("command: run\nchannels_last: false\n")
    code, _, err = run_cli("sweep", sweep, "--dry-run")
    assert code == 2 and "channels_last: false" in err and "add 'channels_last: false' to base" in err
    sweep.write_text(sweep.read_text() + "  channels_last: false\n")
    code, out, err = run_cli("sweep", sweep, "--dry-run")
    assert code == 0, err
