"""SNIP, GraSP and SynFlow scores against their papers' formulas, computed independently here."""

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call, grad, jvp

from kdprune.pruning import prunable_parameters
from kdprune.pruning.criteria import CRITERIA


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))


def _batches(n=2):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 1, 4, 4, generator=g), torch.randint(0, 5, (6,), generator=g)) for _ in range(n)]


def _loss_fn(net, batches, temperature=1.0):
    base = {k: v.detach() for k, v in net.named_parameters()}

    def loss(weights):
        total = 0.0
        for x, y in batches:
            total = total + nn.functional.cross_entropy(functional_call(net, {**base, **weights}, (x,)) / temperature, y)
        return total

    return loss


def test_snip_is_abs_weight_times_summed_gradient():
    net, data = _net(), _batches()
    params = prunable_parameters(net)
    got = CRITERIA["snip"].score(net, params, iter(data), num_batches=2)
    weights = {k: v.detach() for k, v in params.items()}
    g = grad(_loss_fn(net, data))(weights)
    for k in params:
        torch.testing.assert_close(got[k], (weights[k] * g[k]).abs())


def test_grasp_is_weight_times_hessian_gradient_product():
    net, data = _net(), _batches()
    params = prunable_parameters(net)
    got = CRITERIA["grasp"].score(net, params, iter(data), num_batches=2)
    weights = {k: v.detach() for k, v in params.items()}
    loss = _loss_fn(net, data, temperature=200.0)
    g = grad(loss)(weights)
    _, hg = jvp(grad(loss), (weights,), (g,))  # forward-over-reverse: H g
    for k in params:
        # GraSP removes the largest -w*Hg; the keep-score is its negation w*Hg
        torch.testing.assert_close(got[k], weights[k] * hg[k], rtol=1e-4, atol=1e-12)


def _mlp():
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))


def test_synflow_scores_match_closed_form_without_data():
    net = _mlp()
    params = prunable_parameters(net)
    got = CRITERIA["synflow"].score(net, params, None, input_shape=(4,))
    a1, a2 = net[0].weight.detach().abs().double(), net[2].weight.detach().abs().double()
    # R = 1^T |W2| |W1| 1  =>  dR/dW1[i,j] = sum_k |W2|[k,i],  dR/dW2[k,i] = sum_j |W1|[i,j]
    want1 = a1 * a2.sum(0)[:, None]
    want2 = a2 * a1.sum(1)[None, :]
    torch.testing.assert_close(got["0.weight"].double(), want1, rtol=1e-6, atol=0)
    torch.testing.assert_close(got["2.weight"].double(), want2, rtol=1e-6, atol=0)
    # the model itself is untouched (SynFlow works on an absolute-valued float64 copy)
    assert net[0].weight.dtype == torch.float32 and (net[0].weight < 0).any()


def test_synflow_iterative_masks_are_exact_and_need_no_data():
    from kdprune.models import create_model

    model = create_model("resnet20", 10)
    params = prunable_parameters(model)
    n = sum(p.numel() for p in params.values())
    masks = CRITERIA["synflow"].masks_for(model, params, None, 0.9, input_shape=(3, 8, 8), synflow_iterations=10)
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.9 * n)
    # with one iteration it is plain thresholding of the synflow scores
    from kdprune.pruning import global_masks

    one = CRITERIA["synflow"].masks_for(model, params, None, 0.5, input_shape=(3, 8, 8), synflow_iterations=1)
    ref = global_masks(CRITERIA["synflow"].score(model, params, None, input_shape=(3, 8, 8)), 0.5)
    assert all(torch.equal(one[k], ref[k]) for k in ref)


@pytest.mark.parametrize("name", ["snip", "grasp", "synflow", "magnitude", "random"])
def test_scores_identical_for_the_same_seed(name):
    from kdprune.models import create_model

    def run():
        torch.manual_seed(0)
        m = create_model("resnet20", 10, 1)
        data = _batches_img()
        crit = CRITERIA[name]
        return crit.score(m, prunable_parameters(m), iter(data),
                          **crit.select({"num_batches": 2, "seed": 3, "input_shape": (1, 8, 8)}))

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == torch.float32 for k in a)


def _batches_img():
    g = torch.Generator().manual_seed(4)
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
