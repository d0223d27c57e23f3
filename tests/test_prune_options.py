"""Retraining schedules, progressive scoring, the layer floor, score normalisation, COLT's heads, and the
CIFAR-10 reader on files written the way the shared CIFAR-10 script writes them."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import TINY_RUN
from kdprune.experiments.config import RunConfig, build_config
from kdprune.experiments.pipeline import run_pipeline
from kdprune.pruning.progressive import progressive_masks, schedule
from kdprune.pruning.threshold import MaskOptions, global_masks, prune_masks
from kdprune.train.engine import OptimSpec, make_scheduler

ROOT = Path(__file__).resolve().parents[1]


def _lrs(spec: OptimSpec, steps_per_epoch: int, epochs: int) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=spec.lr)
    sched = make_scheduler(opt, spec, steps_per_epoch, epochs)
    out = []
    for _ in range(steps_per_epoch * epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_lr_rewind_replays_the_last_epochs_of_the_training_schedule():
    training = _lrs(OptimSpec(lr=0.1), steps_per_epoch=5, epochs=8)
    rewind = _lrs(OptimSpec(lr=0.1, start_fraction=1 - 3 / 8), steps_per_epoch=5, epochs=3)
    assert rewind == pytest.approx(training[-15:], abs=1e-12)  # Renda et al.: the last R epochs' rates
    restart = _lrs(OptimSpec(lr=0.1), 5, 3)
    assert restart[0] == 0.1 and restart[-1] < 0.01  # the whole schedule compressed into 3 epochs
    step = _lrs(OptimSpec(lr=0.1, schedule="multistep", start_fraction=0.5), 4, 4)
    assert step == pytest.approx(_lrs(OptimSpec(lr=0.1, schedule="multistep"), 4, 8)[-16:])


@pytest.mark.slow
@pytest.mark.parametrize("kind, first_lr", [("finetune", 0.01), ("restart", 0.1), ("lr-rewind", None)])
def test_retraining_runs_at_the_schedule_it_names(tmp_path, kind, first_lr):
    cfg = build_config(RunConfig, {"out": str(tmp_path), "teacher_arch": "resnet20", "teacher_epochs": 1,
                                   "student_epochs": 4, "retrain_epochs": 2, "batch_size": 128, "score_batches": 2,
                                   "sparsity": "0.5", "retrain": "plain", "retrain_schedule": kind,
                                   "progress": False})
    (row,) = run_pipeline(cfg)
    assert row["variant"] == kind
    hist = json.loads((tmp_path / "sparsity-0.5" / "plain" / "metrics.json").read_text())["history"]
    steps = len(hist) and (1437 // 128)
    if kind == "lr-rewind":  # epochs 3 and 4 of the 4-epoch training schedule: lr after them
        train = _lrs(OptimSpec(lr=0.1), steps, 4) + [0.0]
        want = [train[3 * steps], train[4 * steps]]
    else:
        full = _lrs(OptimSpec(lr=first_lr), steps, 2) + [0.0]
        want = [full[steps], full[2 * steps]]
    assert [h["lr"] for h in hist] == pytest.approx(want, abs=1e-9)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["retrain_schedule"] == kind


def _scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.rand(4, 3, generator=g), "b.weight": torch.rand(6, 2, 2, generator=g) * 10}


def test_progressive_with_one_round_is_the_one_shot_mask():
    sc = _scores()
    one = progressive_masks(lambda m: sc, 0.7, 1)
    ref = prune_masks(sc, 0.7)
    assert all(torch.equal(one[k], ref[k]) for k in ref)
    assert schedule(0.9, 3) == pytest.approx([1 - 0.1 ** (1 / 3), 1 - 0.1 ** (2 / 3), 0.9])


def test_progressive_masks_are_nested_and_exact():
    calls = []

    def score_masked(masks):
        calls.append(masks)
        return _scores(len(calls))  # re-scoring gives new scores each round

    got = progressive_masks(score_masked, 0.8, 4)
    n = sum(v.numel() for v in got.values())
    assert sum(int((~v).sum()) for v in got.values()) == round(0.8 * n) and len(calls) == 4
    for prev, nxt in zip(calls[1:], calls[2:] + [got]):
        assert all(not bool((nxt[k] & ~prev[k]).any()) for k in prev)  # a pruned weight stays pruned


def test_layer_floor_is_honoured_exactly_and_the_global_sparsity_stays_exact():
    sc = {"small.weight": torch.full((10,), 0.01), "big.weight": torch.arange(1.0, 91.0)}
    plain = global_masks(sc, 0.5)
    assert int(plain["small.weight"].sum()) == 0  # the small layer collapses without a floor
    floored = global_masks(sc, 0.5, layer_floor=0.25)
    assert int(floored["small.weight"].sum()) == 3  # ceil(0.25 * 10)
    assert sum(int((~v).sum()) for v in floored.values()) == 50
    assert torch.equal(floored["small.weight"], torch.tensor([True] * 3 + [False] * 7))  # ties by index
    from kdprune.errors import UserError

    with pytest.raises(UserError, match="layer_floor"):
        global_masks(sc, 0.9, layer_floor=0.5)


def test_normalised_scores_give_the_expected_mask_on_two_layers():
    # layer a's scores are 100x larger: one global threshold would keep only a; per-layer l2 or mean
    # normalisation puts both layers on one scale, so each keeps its own top half
    sc = {"a.weight": torch.tensor([100.0, 300.0, 200.0, 400.0]), "b.weight": torch.tensor([4.0, 1.0, 3.0, 2.0])}
    assert prune_masks(sc, 0.5)["b.weight"].sum() == 0
    for how in ("l2", "mean"):
        m = prune_masks(sc, 0.5, MaskOptions(score_norm=how))
        assert m["a.weight"].tolist() == [False, True, False, True]
        assert m["b.weight"].tolist() == [True, False, True, False]


@pytest.mark.slow
def test_options_run_end_to_end_with_their_cost(tmp_path, run_cli):
    out = tmp_path / "r"
    code, _, err = run_cli("run", "--out", out, "--sparsity", "0.9", "--retrain", "plain", "--score-rounds", "3",
                           "--layer-floor", "0.02", "--score-norm", "l2", *TINY_RUN)
    assert code == 0, err
    (row,) = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert row["variant"] == "restart, progressive R=3, floor 0.02, l2-norm"  # restart: the default
    assert row["scoring_batches"] == 3 * 2  # three score rounds of --score-batches 2
    masks = load_file(str(out / "sparsity-0.9" / "plain" / "masks.safetensors"))
    assert all(int(m.sum()) >= math.ceil(0.02 * m.numel()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert sum(int((m == 0).sum()) for m in masks.values()) == round(0.9 * total)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["score_rounds"], saved["layer_floor"], saved["score_norm"]) == (3, 0.02, "l2")


@pytest.mark.parametrize("args, message", [
    (["--retrain-schedule", "cyclic"], "retrain_schedule: expected one of finetune, lr-rewind, restart"),
    (["--score-rounds", "0"], "score_rounds: must be at least 1"),
    (["--layer-floor", "1.5"], "layer_floor: must lie in [0, 1)"),
    (["--score-norm", "max"], "score_norm: expected one of none, l2, mean"),
    (["--colt-heads", "two"], "colt_heads: expected one of own, shared"),
])
def test_new_options_are_validated(tmp_path, run_cli, args, message):
    code, _, err = run_cli("run", "--out", tmp_path / "x", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_colt_tickets_have_their_own_heads(tmp_path):
    cfg = build_config(RunConfig, {"out": str(tmp_path), "method": "colt", "student_epochs": 1, "batch_size": 128,
                                   "sparsity": "0.5", "retrain": "plain", "progress": False})
    (row,) = run_pipeline(cfg)
    ticket = load_file(str(tmp_path / "colt" / "round-01" / "ticket-0" / "model.safetensors"))
    assert ticket["fc.weight"].shape[0] == 5  # classes 0, 2, 4, 6, 8 remapped to 0..4
    round_masks = load_file(str(tmp_path / "colt" / "round-01" / "masks.safetensors"))
    assert "fc.weight" not in round_masks  # the head is never intersected
    final = load_file(str(tmp_path / "sparsity-0.5" / "plain" / "masks.safetensors"))
    assert final["fc.weight"].shape == (10, 64) and bool(final["fc.weight"].all())  # fresh dense C-class head
    n = sum(m.numel() for m in final.values())
    assert sum(int((m == 0).sum()) for m in final.values()) == round(0.5 * n)  # exact over all weights
    assert row["variant"] == "own heads"
    tickets = json.loads((tmp_path / "colt" / "round-01" / "ticket-1" / "metrics.json").read_text())
    assert 0 <= tickets["top1"] <= 100 and tickets["classes"] == [1, 3, 5, 7, 9]


def _shared_script():
    path = ROOT.parent / "shared" / "data" / "make_cifar10.py"
    if not path.is_file():
        pytest.skip(f"the shared CIFAR-10 script is not beside this checkout ({path})")
    spec = importlib.util.spec_from_file_location("make_cifar10", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cifar10_reader_reads_the_shared_scripts_format(tmp_path):
    """Tiny batches pickled exactly as ../shared/data/make_cifar10.py pickles (Python 2 strings), not its data."""
    from kdprune.data import load_dataset

    mod = _shared_script()
    out = tmp_path / "cifar-10-batches-py"
    out.mkdir()
    rng = np.random.default_rng(0)
    for b in range(1, 6):
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        mod._dump(str(out / f"data_batch_{b}"), {"batch_label": f"training batch {b} of 5", "labels": [b % 10] * 4,
                                                "data": data, "filenames": [f"x_{i}.png" for i in range(4)]})
    test = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    mod._dump(str(out / "test_batch"), {"batch_label": "testing batch 1 of 1", "labels": [7, 8, 9], "data": test,
                                        "filenames": ["a.png", "b.png", "c.png"]})
    mod._dump(str(out / "batches.meta"), {"num_cases_per_batch": 10000, "num_vis": 3072, "label_names": mod.CLASSES})
    ds = load_dataset("cifar10", str(tmp_path))
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_y.tolist() == [7, 8, 9]
    assert torch.equal(ds.test_x[0], torch.from_numpy(test[0].reshape(3, 32, 32)))
