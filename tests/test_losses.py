import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdprune.losses import CrossEntropy, Distillation, ca_kld, hinton_kd, normalize_logits


def _ca_kld_by_hand(zs, zt, T, eps, t_squared=True):
    """Plain-Python CA-KLD: z-score per row (population std), /T, softmax, KL(teacher || student)."""
    total = 0.0
    for s_row, t_row in zip(zs, zt):
        def prob(row):
            m = sum(row) / len(row)
            sd = math.sqrt(sum((v - m) ** 2 for v in row) / len(row))
            z = [((v - m) / (sd + eps)) / T for v in row]
            e = [math.exp(v) for v in z]
            return [v / sum(e) for v in e]

        ps, pt = prob(s_row), prob(t_row)
        total += sum(p * math.log(p / q) for p, q in zip(pt, ps))
    kl = total / len(zs)
    return kl * T * T if t_squared else kl


def test_ca_kld_matches_hand_computed_value():
    zs = [[1.0, 2.0, 0.5, -1.0], [0.3, -0.2, 2.5, 1.0]]
    zt = [[3.0, 1.0, 0.0, -2.0], [0.0, 0.1, 4.0, -1.0]]
    got = ca_kld(torch.tensor(zs), torch.tensor(zt), temperature=2.0, eps=1e-7)
    want = _ca_kld_by_hand(zs, zt, 2.0, 1e-7)
    assert got.item() == pytest.approx(want, rel=1e-5)
    # a fixed reference, so that a change of convention (e.g. unbiased std, no T^2) shows up
    assert want == pytest.approx(0.244940, rel=1e-5)
    assert ca_kld(torch.tensor(zs), torch.tensor(zt), 2.0, 1e-7, t_squared=False).item() == pytest.approx(want / 4, rel=1e-5)


def test_ca_kld_invariant_to_shift_and_scale_of_logits():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    base = ca_kld(zs, zt, 4.0)
    shifted = ca_kld(3.0 * zs + 7.0, 0.25 * zt - 2.0, 4.0)
    assert shifted.item() == pytest.approx(base.item(), rel=1e-4)
    # per-sample shifts and scales too
    a, b = torch.rand(8, 1, generator=g) + 0.5, torch.randn(8, 1, generator=g)
    assert ca_kld(a * zs + b, zt, 4.0).item() == pytest.approx(base.item(), rel=1e-4)
    # Hinton KD is not invariant: the normalisation is what makes the difference
    assert hinton_kd(3.0 * zs, zt, 4.0).item() != pytest.approx(hinton_kd(zs, zt, 4.0).item(), rel=1e-2)


def test_ca_kld_zero_for_identical_and_positive_otherwise():
    z = torch.randn(4, 5)
    assert ca_kld(z, z).item() == pytest.approx(0.0, abs=1e-6)
    assert ca_kld(z, torch.randn(4, 5)).item() > 0


def test_normalize_logits_population_std():
    z = torch.tensor([[1.0, 2.0, 3.0]])
    n = normalize_logits(z, eps=0.0)
    np.testing.assert_allclose(n.numpy(), [[-math.sqrt(1.5), 0.0, math.sqrt(1.5)]], rtol=1e-6)


def test_distillation_weights_kd_by_alpha():
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    y = torch.randint(0, 10, (6,), generator=g)
    obj = Distillation(alpha=0.3, temperature=3.0)
    want = 0.3 * ca_kld(zs, zt, 3.0) + 0.7 * F.cross_entropy(zs, y)
    assert obj(zs, y, zt).item() == pytest.approx(want.item(), rel=1e-6)
    hinton = Distillation(alpha=1.0, temperature=3.0, kind="kd")
    assert hinton(zs, y, zt).item() == pytest.approx(hinton_kd(zs, zt, 3.0).item(), rel=1e-6)
    assert CrossEntropy()(zs, y).item() == pytest.approx(F.cross_entropy(zs, y).item())
    with pytest.raises(ValueError):
        obj(zs, y, None)
