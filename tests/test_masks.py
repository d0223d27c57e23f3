"""Pruned weights stay exactly zero through training (the famous bug of pruning libraries)."""

import pytest
import torch

from kdprune.data import TensorLoader
from kdprune.errors import UserError
from kdprune.losses import CrossEntropy
from kdprune.models import create_model
from kdprune.pruning import MaskSet, global_masks, prunable_parameters
from kdprune.train import OptimSpec, Trainer


def _loaders(n=80, batch=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    kw = dict(mean=[0.5] * 3, std=[0.25] * 3)
    return (TensorLoader(x, y, batch, train=True, pad=1, flip=True, seed=seed, **kw),
            TensorLoader(x[:32], y[:32], 32, train=False, **kw))


def _pruned_model(sparsity=0.8, seed=0):
    torch.manual_seed(seed)
    model = create_model("resnet20", 10)
    params = prunable_parameters(model)
    masks = MaskSet(global_masks({k: p.detach().abs() for k, p in params.items()}, sparsity))
    return model, masks


def _assert_pruned_zero(model, masks, optimizer=None):
    params = dict(model.named_parameters())
    for k, m in masks.masks.items():
        p = params[k]
        assert torch.count_nonzero(p.detach()[~m]) == 0, k
        if optimizer is not None:
            for name, v in optimizer.state.get(p, {}).items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    assert torch.count_nonzero(v[~m]) == 0, (k, name)


@pytest.mark.parametrize("spec", [
    OptimSpec(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
    OptimSpec(optimizer="adamw", lr=0.01, weight_decay=0.05),
], ids=["sgd-nesterov-wd", "adamw"])
def test_pruned_weights_stay_exactly_zero_for_20_steps(spec):
    train, test = _loaders()  # 5 batches per epoch
    model, masks = _pruned_model()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = Trainer(model, CrossEntropy(), spec, 4, train, test, masks=masks, progress=False)
    steps = []  # after every optimizer step, the pruned weights are still exactly zero (not only at the end)
    trainer.optimizer.register_step_post_hook(lambda opt, args, kwargs: steps.append(
        all(torch.count_nonzero(dict(model.named_parameters())[k].detach()[~m]) == 0 for k, m in masks.masks.items())))
    trainer.fit()
    assert trainer.optimizer.state, "the optimizer must have built state (momentum / moments)"
    assert len(steps) == 20 and all(steps)  # 4 epochs of 5 batches: 20 steps taken, each one checked
    _assert_pruned_zero(model, masks, trainer.optimizer)
    # kept weights did train
    params = dict(model.named_parameters())
    changed = [k for k, m in masks.masks.items() if not torch.equal(params[k].detach()[m], before[k][m])]
    assert len(changed) == len(masks.masks)


def test_without_masking_momentum_and_decay_would_revive_weights():
    """The control: zeroing weights once, then training without the mask, makes them non-zero again."""
    train, test = _loaders()
    model, masks = _pruned_model()
    masks.bind(model).apply_()
    Trainer(model, CrossEntropy(), OptimSpec(), 1, train, test, progress=False).fit()
    params = dict(model.named_parameters())
    revived = sum(int(torch.count_nonzero(params[k].detach()[~m])) for k, m in masks.masks.items())
    assert revived > 0


def test_masks_and_optimizer_state_survive_resume(tmp_path):
    train, test = _loaders()
    spec = OptimSpec(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model, masks = _pruned_model()
    Trainer(model, CrossEntropy(), spec, 2, train, test, masks=masks, out_dir=tmp_path, progress=False).fit()
    # a fresh process: a dense model with fresh masks object, resumed from the checkpoint
    model2, masks2 = _pruned_model()
    t2 = Trainer(model2, CrossEntropy(), spec, 4, train, test, masks=masks2, out_dir=tmp_path, progress=False)
    t2.fit(resume=True)
    assert t2.start_epoch == 2 and len(t2.history) == 4
    _assert_pruned_zero(model2, masks2, t2.optimizer)
    # a checkpoint made with other masks is refused
    model3, masks3 = _pruned_model(sparsity=0.5)
    t3 = Trainer(model3, CrossEntropy(), spec, 6, train, test, masks=masks3, out_dir=tmp_path, progress=False)
    with pytest.raises(UserError, match="other masks"):
        t3.fit(resume=True)


def test_masks_file_round_trip_and_mismatch(tmp_path):
    model, masks = _pruned_model()
    masks.save(tmp_path / "masks.safetensors")
    loaded = MaskSet.load(tmp_path / "masks.safetensors")
    assert all(torch.equal(loaded.masks[k], masks.masks[k]) for k in masks.masks)
    assert loaded.density() == pytest.approx(0.2, abs=1e-5)
    with pytest.raises(UserError, match="do not match"):
        loaded.bind(create_model("vgg11", 10))
    with pytest.raises(UserError, match="do not match"):
        loaded.bind(create_model("resnet20", 100))


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    from kdprune.train import TrainingDiverged
    from kdprune.checkpoint import load_checkpoint

    class NanAfter(CrossEntropy):
        def __init__(self, good_steps):
            self.calls, self.good = 0, good_steps

        def __call__(self, logits, targets, teacher_logits=None):
            self.calls += 1
            loss = super().__call__(logits, targets)
            return loss * float("nan") if self.calls > self.good else loss

    train, test = _loaders()  # 5 steps per epoch
    model, _ = _pruned_model()
    t = Trainer(model, NanAfter(7), OptimSpec(), 3, train, test, out_dir=tmp_path, progress=False)
    with pytest.raises(TrainingDiverged, match="epoch 2"):
        t.fit()
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_corrupt_checkpoint_is_detected(tmp_path):
    from kdprune.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "checkpoint.pt", {"epoch": 1, "w": torch.ones(10)})
    data = bytearray((tmp_path / "checkpoint.pt").read_bytes())
    data[-20] ^= 0xFF
    (tmp_path / "checkpoint.pt").write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum mismatch"):
        load_checkpoint(tmp_path / "checkpoint.pt")
