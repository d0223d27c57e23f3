import math

import pytest
import torch

from kdprune.errors import UserError
from kdprune.pruning import global_masks, layerwise_masks


def test_global_threshold_removes_exactly_k_with_ties_broken_by_index():
    # 20 weights in two layers; many equal scores straddle the threshold.
    scores = {
        "a.weight": torch.tensor([[0.5, 0.1, 0.5], [0.1, 0.9, 0.5]]),  # 6
        "b.weight": torch.tensor([0.5] * 6 + [0.0, 2.0] + [0.5] * 6),  # 14
    }
    masks = global_masks(scores, 0.5)  # k = 10
    removed = sum(int((~m).sum()) for m in masks.values())
    assert removed == 10
    flat = torch.cat([m.flatten() for m in masks.values()])
    # strictly below the 0.5 threshold: 0.1, 0.1, 0.0 -> removed
    assert not flat[1] and not flat[3] and not flat[6 + 6]
    # the remaining 7 removals are the 0.5-ties with the lowest global index
    ties = [i for i, v in enumerate(torch.cat([s.flatten() for s in scores.values()]).tolist()) if v == 0.5]
    assert [bool(flat[i]) for i in ties] == [False] * 7 + [True] * (len(ties) - 7)
    assert masks["a.weight"].shape == (2, 3)
    # deterministic
    again = global_masks(scores, 0.5)
    assert all(torch.equal(masks[k], again[k]) for k in masks)


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98, 0.333])
def test_global_threshold_exact_count_on_random_and_constant_scores(sparsity):
    g = torch.Generator().manual_seed(0)
    scores = {"x": torch.rand(37, 11, generator=g), "y": torch.ones(513), "z": torch.rand(3, 3, 3, 3, generator=g)}
    n = sum(s.numel() for s in scores.values())
    masks = global_masks(scores, sparsity)
    assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * n)
    # every kept score >= every removed score
    kept = torch.cat([scores[k][masks[k]] for k in scores])
    gone = torch.cat([scores[k][~masks[k]] for k in scores])
    assert kept.min() >= gone.max()


def test_layerwise_threshold_prunes_each_layer_to_the_target():
    g = torch.Generator().manual_seed(1)
    scores = {"x": torch.rand(100, generator=g), "y": torch.rand(10, 10, generator=g) * 100}
    masks = layerwise_masks(scores, 0.7)
    assert int((~masks["x"]).sum()) == 70 and int((~masks["y"]).sum()) == 70


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_sparsity_outside_open_interval_is_rejected(bad):
    with pytest.raises(UserError):
        global_masks({"x": torch.rand(10)}, bad)


def test_rounds_of_signed_scores_keep_their_order():
    """GraSP's keep-scores are signed: a later round ranks the kept weights by their own scores (kept negative
    scores were once clamped to 0, and index order then chose what went)."""
    from kdprune.pruning.progressive import progressive_masks
    from kdprune.pruning.threshold import MaskOptions

    s = {"a": torch.tensor([-0.5, -3.0, -2.0, 5.0, 4.0, -1.0])}
    one = progressive_masks(lambda m: s, 0.5, 1)
    for rounds in (2, 3):
        for options in (MaskOptions(), MaskOptions("global", 0.0, "l2")):
            got = progressive_masks(lambda m: s, 0.5, rounds, options)
            want = progressive_masks(lambda m: s, 0.5, 1, options)
            assert all(torch.equal(got[n], want[n]) for n in s)
    assert one["a"].tolist() == [True, False, False, True, True, False]
