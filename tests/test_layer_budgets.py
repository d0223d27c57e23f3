"""The scopes that fix every layer's budget before the scores act (issue 20, part 3): ``erk`` and
``magnitude-budget``, beside the paper's global threshold."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import TINY_RUN
from kdprune import api
from kdprune.errors import UserError
from kdprune.models import create_model
from kdprune.pruning.prunable import prunable_parameters
from kdprune.pruning.progressive import progressive_masks
from kdprune.pruning.threshold import MaskOptions, erk_budgets, global_masks, magnitude_budgets, prune_masks


def _resnet20_weights(seed=0):
    torch.manual_seed(seed)
    return {n: p.detach().clone() for n, p in prunable_parameters(create_model("resnet20", num_classes=10)).items()}


def test_erk_budgets_by_hand():
    # fc1 4x4: (4+4)/16 = 0.5; fc2 2x8: (2+8)/16 = 0.625. Keep 16 of 32: eps = 16 / (0.5*16 + 0.625*16) = 8/9,
    # so 7.11 and 8.89 weights; the floors (7, 8) leave one, which goes to the larger remainder (fc2).
    shapes = {"fc1": torch.Size([4, 4]), "fc2": torch.Size([2, 8])}
    assert erk_budgets(shapes, 0.5) == {"fc1": 7, "fc2": 9}


@pytest.mark.parametrize("sparsity", [0.36, 0.9, 0.98])
def test_erk_budgets_are_exact_and_follow_the_kernel_rule(sparsity):
    shapes = {n: w.shape for n, w in _resnet20_weights().items()}
    keep = erk_budgets(shapes, sparsity)
    sizes = {n: s.numel() for n, s in shapes.items()}
    total = sum(sizes.values())
    assert sum(keep.values()) == total - round(sparsity * total)
    assert all(0 <= keep[n] <= sizes[n] for n in keep)
    raw = {n: sum(shapes[n]) / sizes[n] for n in shapes}
    sparse = [n for n in keep if keep[n] < sizes[n]]
    # among the layers not held dense, density / raw is one constant (up to one weight of rounding)
    eps = [keep[n] / sizes[n] / raw[n] for n in sparse]
    assert max(eps) - min(eps) <= max(1 / sizes[n] / raw[n] for n in sparse) + 1e-9
    # a dense layer is one the rule would give a density above 1
    assert all(raw[n] * min(eps) >= 1 - 1e-9 for n in keep if n not in sparse)
    # small layers keep a larger fraction than large ones (the stem against the last stage)
    assert keep["conv1.weight"] / sizes["conv1.weight"] > keep["layers.2.2.conv2.weight"] / sizes["layers.2.2.conv2.weight"]


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_magnitude_budget_takes_magnitudes_counts_and_the_scores_choice(sparsity):
    weights = _resnet20_weights()
    g = torch.Generator().manual_seed(1)
    scores = {n: torch.rand(w.shape, generator=g) for n, w in weights.items()}
    masks = prune_masks(scores, sparsity, MaskOptions("magnitude-budget", weights=weights))
    by_magnitude = global_masks({n: w.abs() for n, w in weights.items()}, sparsity)
    for n, m in masks.items():
        assert int(m.sum()) == int(by_magnitude[n].sum())  # the layer's budget: global magnitude's count
        if 0 < int(m.sum()) < m.numel():  # within the layer: the highest scores
            assert scores[n][m].min() >= scores[n][~m].max()
    # scored by magnitude itself, it is global magnitude pruning
    same = prune_masks({n: w.abs() for n, w in weights.items()}, sparsity,
                       MaskOptions("magnitude-budget", weights=weights))
    assert all(torch.equal(same[n], by_magnitude[n]) for n in same)


@pytest.mark.parametrize("scope", ["erk", "magnitude-budget"])
def test_a_budgeted_scope_ignores_each_layers_score_scale(scope):
    weights = _resnet20_weights()
    g = torch.Generator().manual_seed(2)
    scores = {n: torch.rand(w.shape, generator=g) for n, w in weights.items()}
    scaled = {n: s * (1000.0 if n.startswith("layers.2") else 1.0) for n, s in scores.items()}
    a = prune_masks(scores, 0.9, MaskOptions(scope, weights=weights))
    b = prune_masks(scaled, 0.9, MaskOptions(scope, weights=weights))
    assert all(torch.equal(a[n], b[n]) for n in a)
    # the paper's global threshold is what the scale moves: the last stage takes the whole budget
    glob = prune_masks(scaled, 0.9, MaskOptions("global"))
    assert sum(int(glob[n].sum()) for n in glob if not n.startswith("layers.2")) == 0


def test_budgeted_scopes_reject_the_global_scopes_guard_and_need_weights():
    weights = _resnet20_weights()
    scores = {n: w.abs() for n, w in weights.items()}
    with pytest.raises(UserError, match="layer_floor is a guard of the global scope: scope erk"):
        prune_masks(scores, 0.9, MaskOptions("erk", layer_floor=0.1))
    with pytest.raises(UserError, match="score_norm is a guard of the global scope: scope magnitude-budget"):
        prune_masks(scores, 0.9, MaskOptions("magnitude-budget", score_norm="l2", weights=weights))
    with pytest.raises(UserError, match="magnitude-budget needs the weights"):
        prune_masks(scores, 0.9, MaskOptions("magnitude-budget"))
    with pytest.raises(UserError, match="magnitude-budget needs the weights"):
        prune_masks(scores, 0.9, MaskOptions("magnitude-budget", weights={"fc.weight": weights["fc.weight"]}))
    with pytest.raises(UserError, match="needs weights="):
        api.mask(scores, 0.9, scope="magnitude-budget")
    model = create_model("resnet20", num_classes=10)
    m = api.mask({n: p.detach().abs() for n, p in prunable_parameters(model).items()}, 0.9,
                 scope="magnitude-budget", weights=model)
    budgets = magnitude_budgets(prunable_parameters(model), 0.9)
    assert {n: int(v.sum()) for n, v in m.masks.items()} == budgets


def test_magnitude_budget_masks_nest_across_rounds_and_erk_refuses_rounds():
    weights = _resnet20_weights()
    g = torch.Generator().manual_seed(3)
    seen = []

    def score_masked(masks):  # fresh random scores every round, as re-scoring a masked model would give
        seen.append(masks)
        return {n: torch.rand(w.shape, generator=g) for n, w in weights.items()}

    final = progressive_masks(score_masked, 0.95, 4, MaskOptions("magnitude-budget", weights=weights))
    rounds = [m for m in seen[1:]] + [final]
    for before, after in zip(rounds, rounds[1:]):
        assert all(not (after[n] & ~before[n]).any() for n in after)  # nested: nothing pruned comes back
    assert {n: int(m.sum()) for n, m in final.items()} == magnitude_budgets(weights, 0.95)
    with pytest.raises(UserError, match="scope erk is one-shot"):
        progressive_masks(score_masked, 0.95, 4, MaskOptions("erk"))
    # one round of erk is its one-shot mask
    one = progressive_masks(lambda masks: {n: w.abs() for n, w in weights.items()}, 0.95, 1, MaskOptions("erk"))
    assert {n: int(m.sum()) for n, m in one.items()} == erk_budgets({n: w.shape for n, w in weights.items()}, 0.95)


def test_scope_names_the_recipes_that_read_it():
    from kdprune.choices import SCOPED_RECIPES
    from kdprune.methods import METHODS

    recipes = {m.recipe.name for m in METHODS.values()} | {"channel"}
    assert set(SCOPED_RECIPES) <= recipes and "colt" not in SCOPED_RECIPES and "dense" not in SCOPED_RECIPES


@pytest.mark.parametrize("args, message", [
    (["--scope", "erk", "--layer-floor", "0.1"], "layer_floor is a guard of the global scope: scope erk"),
    (["--scope", "per-layer"], "scope: expected one of global, layerwise, erk, magnitude-budget"),
    (["--scope", "erk", "--score-rounds", "3"], "scope erk is one-shot"),
    (["--scope", "erk", "--method", "imp"], "scope erk is one-shot"),
    (["--scope", "erk", "--method", "synflow"], "scope erk is one-shot"),
])
def test_scope_is_validated_before_anything_trains(tmp_path, run_cli, args, message):
    code, _, err = run_cli("run", "--out", tmp_path / "x", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_magnitude_budget_run_end_to_end(tmp_path, run_cli):
    out = tmp_path / "r"
    code, _, err = run_cli("run", "--out", out, "--sparsity", "0.9", "--retrain", "plain",
                           "--scope", "magnitude-budget", *TINY_RUN)
    assert code == 0, err
    (row,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert row["variant"] == "restart, magnitude-budget scope"
    assert yaml.safe_load((out / "config.yaml").read_text())["scope"] == "magnitude-budget"
    masks = load_file(str(out / "sparsity-0.9" / "plain" / "masks.safetensors"))
    student = load_file(str(next(Path(out).rglob("student/model.safetensors"))))
    budgets = magnitude_budgets({n: student[n] for n in masks}, 0.9)
    assert {n: int(m.sum()) for n, m in masks.items()} == budgets
    scores = load_file(str(out / "scores.safetensors"))  # within each layer, the teacher-guided scores chose
    for n, m in masks.items():
        m = m.bool()
        if 0 < int(m.sum()) < m.numel():
            assert scores[n][m].min() >= scores[n][~m].max()
