import math

import pytest
import torch

from kdprune.data import TensorLoader
from kdprune.losses.self_distill import CSKD, DLB, PSKD, cskd_loss, dlb_loss, pskd_loss
from kdprune.models import create_model
from kdprune.train import OptimSpec, Trainer


def _softmax(row, t=1.0):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _ce(row, y):
    return -math.log(_softmax(row)[y])


Z = [[1.0, -0.5, 2.0], [0.2, 0.1, -1.0]]
Z2 = [[0.5, 0.5, 1.0], [2.0, -1.0, 0.0]]
Y = [2, 0]


def test_cskd_matches_hand_computed():
    want = sum(_ce(r, y) for r, y in zip(Z, Y)) / 2 + 1.0 * 16 * sum(
        _kl(_softmax(b, 4), _softmax(a, 4)) for a, b in zip(Z, Z2)) / 2
    got = cskd_loss(torch.tensor(Z), torch.tensor(Z2), torch.tensor(Y), 4.0, 1.0)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_pskd_matches_hand_computed():
    prev = [[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]
    a = 0.4
    want = 0.0
    for row, y, p in zip(Z, Y, prev):
        target = [(1 - a) * (1.0 if c == y else 0.0) + a * p[c] for c in range(3)]
        want += -sum(t * math.log(s) for t, s in zip(target, _softmax(row)))
    got = pskd_loss(torch.tensor(Z), torch.tensor(Y), torch.tensor(prev), a)
    assert got.item() == pytest.approx(want / 2, rel=1e-5)
    assert pskd_loss(torch.tensor(Z), torch.tensor(Y), None, a).item() == pytest.approx(
        sum(_ce(r, y) for r, y in zip(Z, Y)) / 2, rel=1e-5)


def test_dlb_matches_hand_computed():
    all_logits = Z + Z2
    ys = Y + [1, 2]
    prev_kept = [[0.0, 1.0, 0.0], [1.0, 0.0, 3.0]]
    want = sum(_ce(r, y) for r, y in zip(all_logits, ys)) / 4 + 9 * sum(
        _kl(_softmax(p, 3), _softmax(k, 3)) for p, k in zip(prev_kept, Z2)) / 2
    got = dlb_loss(torch.tensor(all_logits), torch.tensor(ys), torch.tensor(prev_kept), 3.0, 1.0)
    assert got.item() == pytest.approx(want, rel=1e-5)


def _loader(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 4
    kw = dict(mean=[0.5], std=[0.25])
    return TensorLoader(x, y, 16, train=True, pad=1, seed=seed, **kw), TensorLoader(x[:32], y[:32], 32, train=False, **kw)


def test_cskd_partners_share_the_class_and_differ():
    train, _ = _loader()
    obj = CSKD(seed=1)
    obj.attach(train)
    obj.start_epoch(0, 1)
    idx = torch.arange(96)
    p = obj.partners(idx)
    assert torch.equal(train.labels[p], train.labels[idx]) and bool((p != idx).all())


def test_pskd_uses_previous_epoch_predictions_and_dlb_carries_half_a_batch():
    train, test = _loader()
    torch.manual_seed(0)
    model = create_model("resnet20", 4, 1)
    obj = PSKD()
    Trainer(model, obj, OptimSpec(), 2, train, test, progress=False).fit()
    assert obj.memory.shape == (96, 4) and torch.allclose(obj.memory.sum(1), torch.ones(96))
    assert obj.alpha_t == pytest.approx(0.8)  # a_T at the last epoch
    dlb = DLB()
    t = Trainer(create_model("resnet20", 4, 1), dlb, OptimSpec(), 1, train, test, progress=False)
    t.fit()
    assert dlb.prev_x.shape[0] == 8 and t.extra_images == 8 * (len(train) - 1)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [PSKD, DLB, CSKD])
def test_resume_with_objective_state_is_exact(tmp_path, cls):
    train, test = _loader()

    def trainer(out, epochs):
        torch.manual_seed(0)
        return Trainer(create_model("resnet20", 4, 1), cls(), OptimSpec(), epochs, train, test, out_dir=out,
                       progress=False)

    from kdprune.train import Callback

    class Stop(Callback):
        def on_epoch_end(self, t, epoch, metrics):
            if epoch == 1:
                raise KeyboardInterrupt

    full = trainer(tmp_path / "a", 3)
    full.fit()
    crashed = trainer(tmp_path / "b", 3)
    crashed.callbacks.append(Stop())
    with pytest.raises(KeyboardInterrupt):
        crashed.fit()
    resumed = trainer(tmp_path / "b", 3)
    resumed.fit(resume=True)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k



def _pskd_setup():
    x = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    loader = TensorLoader(x, torch.arange(10) % 3, 4, train=True, pad=1)
    return loader, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))


def test_pskd_state_is_a_copy_that_training_leaves_alone():
    """EPSD starts every sparsity level from the warmup's memory: one level's training must not write it."""
    loader, model = _pskd_setup()
    warm = PSKD()
    warm.attach(loader)
    warm.start_epoch(0, 2)
    for xb, yb, idx in loader.batches_with_index():
        warm.forward_loss(model, xb, yb, idx)
    state = warm.state_dict()
    kept = state["memory"].clone()
    level = PSKD()
    level.load_state_dict(state)
    level.attach(loader)
    level.start_epoch(1, 2)
    xb, yb, idx = next(loader.batches_with_index())
    level.forward_loss(model, xb * 0.5, yb, idx)
    assert not torch.equal(level.memory, kept)
    assert torch.equal(state["memory"], kept) and torch.equal(warm.memory, kept)


def test_pskd_a_sample_with_no_prediction_yet_is_trained_on_its_label():
    """The loader drops its ragged last batch, so a sample can reach epoch 1 unpredicted: its memory row is zeros,
    not a distribution; its target is its one-hot label (the others mix in their previous prediction)."""
    loader, model = _pskd_setup()
    obj = PSKD()
    obj.attach(loader)
    obj.memory, obj.written = torch.full((10, 3), 1 / 3), torch.zeros(10, dtype=torch.bool)
    obj.memory[3] = 0
    obj.start_epoch(1, 2)  # alpha_t = 0.8
    x, idx = torch.randn(2, 1, 4, 4), torch.tensor([3, 4])
    y = loader.labels[idx]
    loss, logits = obj.forward_loss(model, x, y, idx)
    onehot = torch.nn.functional.one_hot(y, 3).float()
    target = torch.stack([onehot[0], 0.2 * onehot[1] + 0.8 / 3])
    want = -(target * torch.log_softmax(logits.float(), -1)).sum(-1).mean()
    assert torch.allclose(loss, want)
