"""Every method runs end to end on real (tiny) data and reaches exactly its target sparsity."""

import json

import pytest
import torch
from safetensors.torch import load_file

from kdprune.experiments.config import RunConfig, build_config
from kdprune.experiments.pipeline import run_pipeline
from kdprune.methods import METHODS
from kdprune.methods.imp import schedule
from kdprune.models import create_model

N_PRUNABLE = sum(m.weight.numel() for m in create_model("resnet20", 10, 1).modules()
                 if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))


def _cfg(out, method, **kw):
    base = {"out": str(out), "method": method, "teacher_arch": "resnet20", "teacher_epochs": 1,
            "student_epochs": 2, "retrain_epochs": 1, "batch_size": 128, "score_batches": 2,
            "sparsity": "0.5,0.8", "retrain": "plain", "synflow_iterations": 5, "progress": False, "rewind_epoch": 1}
    base.update(kw)
    return build_config(RunConfig, base)


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("teacher-guided", "dense")])
def test_method_end_to_end_exact_sparsity(tmp_path, method):
    rows = run_pipeline(_cfg(tmp_path, method))
    assert sorted(r["target_sparsity"] for r in rows) == [0.5, 0.8]
    for r in rows:
        assert abs(r["achieved_sparsity"] - r["target_sparsity"]) * N_PRUNABLE <= 0.5 + 1e-6
        assert r["method"] == method and r["images_fwd_bwd"] > 0 and r["total_epochs"] >= r["epochs"]
        state = load_file(f"{r['out']}/model.safetensors")
        masks = load_file(f"{r['out']}/masks.safetensors")
        assert all(torch.count_nonzero(state[k][m == 0]) == 0 for k, m in masks.items())
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2


@pytest.mark.slow
def test_kd_regime_counts_the_teacher(tmp_path):
    rows = run_pipeline(_cfg(tmp_path, "snip", retrain="both", sparsity="0.7"))
    plain, kd = sorted(rows, key=lambda r: r["regime"] != "plain")
    assert plain["teacher_forwards"] == 0 and kd["teacher_forwards"] > 0
    assert kd["total_epochs"] == plain["total_epochs"] + 1  # the teacher's one epoch


def test_imp_schedule_hits_every_target():
    rounds = schedule([0.5, 0.9], 0.2)
    sp = [s for s, _ in rounds]
    assert sp[:3] == pytest.approx([0.2, 0.36, 0.488])
    assert [s for s, hit in rounds if hit] == [0.5, 0.9]
    assert all(a < b for a, b in zip(sp, sp[1:])) and len(rounds) == 12  # 4 to 0.5, then 8 more from 0.5


@pytest.mark.slow
def test_imp_masks_are_nested_and_cost_accumulates(tmp_path):
    rows = run_pipeline(_cfg(tmp_path, "imp", sparsity="0.5", rate="0.3", student_epochs=1))
    rounds = sorted((tmp_path / "imp" / "plain").iterdir())
    assert [p.name for p in rounds] == ["round-01-0.3", "round-02-0.5"]
    m1, m2 = (load_file(str(p / "masks.safetensors")) for p in rounds)
    for k in m1:
        assert not bool(((m2[k] == 1) & (m1[k] == 0)).any()), k  # nothing pruned comes back
    (row,) = rows
    # dense training + two rounds, one epoch each
    assert row["total_epochs"] == 3
    r1 = json.loads((rounds[0] / "metrics.json").read_text())
    dense = json.loads((tmp_path / "dense-ce" / "metrics.json").read_text())
    r2 = json.loads((rounds[1] / "metrics.json").read_text())
    assert row["images_fwd_bwd"] == dense["images_fwd_bwd"] + r1["images_fwd_bwd"] + r2["images_fwd_bwd"]
    # rewinding: round 2 started from the epoch-1 weights of dense training, masked
    assert (tmp_path / "dense-ce" / "rewind-epoch1.safetensors").is_file()


def test_methods_listing_names_papers(run_cli):
    code, out, _ = run_cli("methods")
    assert code == 0
    for name, m in METHODS.items():
        assert name in out and m.paper.split(",")[0] in out


@pytest.mark.slow
def test_colt_end_to_end_and_cost_counts_every_ticket(tmp_path):
    rows = run_pipeline(_cfg(tmp_path, "colt", sparsity="0.5", rate="0.2", student_epochs=1))
    (row,) = rows
    assert abs(row["achieved_sparsity"] - 0.5) * N_PRUNABLE <= 0.5 + 1e-6
    rounds = sorted((tmp_path / "colt").iterdir())
    # two tickets keeping 80% each keep at least 60% together: round 1 cannot reach 0.5
    assert len(rounds) >= 2 and rounds[0].name == "round-01"
    m0 = load_file(str(rounds[0] / "masks.safetensors"))
    s1 = 1 - sum(int(v.sum()) for v in m0.values()) / N_PRUNABLE
    assert 0.2 <= s1 <= 0.4  # the intersection removed at least the rate, at most two rates' worth
    tickets = [json.loads((r / f"ticket-{p}" / "metrics.json").read_text()) for r in rounds for p in (0, 1)]
    assert tickets[0]["classes"] == [0, 2, 4, 6, 8] and tickets[1]["classes"] == [1, 3, 5, 7, 9]
    final = json.loads((tmp_path / "sparsity-0.5" / "plain" / "metrics.json").read_text())
    assert row["images_fwd_bwd"] == sum(t["images_fwd_bwd"] for t in tickets) + final["images_fwd_bwd"]
    assert row["total_epochs"] == 2 * len(rounds) + 1
    m1, m2 = (load_file(str(r / "masks.safetensors")) for r in rounds[-2:])
    assert all(not bool(((m2[k] == 1) & (m1[k] == 0)).any()) for k in m1)
    # round 1's mask, as run_colt saved it, is the intersection of the two trained tickets' magnitude masks,
    # checked against the tickets' own saved weights with ranks computed here
    names = list(m0)
    keep = torch.cat([m0[n].bool().flatten() for n in names])
    states = [load_file(str(rounds[0] / f"ticket-{p}" / "model.safetensors")) for p in (0, 1)]

    def rank(state):  # each weight's magnitude rank in a ticket (0 = largest): its top-m mask is rank < m
        flat = torch.cat([state[n].abs().double().flatten() for n in names])
        r = torch.empty(flat.numel(), dtype=torch.long)
        r[torch.sort(flat, descending=True, stable=True).indices] = torch.arange(flat.numel())
        return r

    r0, r1 = rank(states[0]), rank(states[1])
    n_keep = int(keep.sum())
    both = torch.maximum(r0, r1)  # in both top-m masks exactly when both < m
    m_star = int(torch.sort(both).values[n_keep - 1]) + 1  # the smallest m whose intersection holds n_keep
    assert bool((keep <= ((r0 < m_star) & (r1 < m_star))).all())  # kept: in both tickets' top-m*
    inner = (r0 < m_star - 1) & (r1 < m_star - 1)
    assert bool((inner <= keep).all())  # and the whole intersection of the smaller top-m sets is kept


@pytest.mark.slow
def test_epg_mask_is_the_ce_saliency_of_the_warmed_up_weights(tmp_path):
    """EPG: after CE warmup, keep the weights with the largest sum_b |w * dCE_b/dw| (computed here by hand)."""
    from kdprune.train.stage import make_env
    from kdprune.pruning.prunable import prunable_parameters

    cfg = _cfg(tmp_path, "epg", sparsity="0.8", epsd_warmup_epochs=1)
    (row,) = run_pipeline(cfg)
    assert row["regime"] == "plain"
    model = create_model("resnet20", 10, 1)
    model.load_state_dict(load_file(str(tmp_path / "warmup-ce" / "model.safetensors")))
    model.eval()
    params = prunable_parameters(model)
    env = make_env(cfg)
    loader = iter(env.score_loader(cfg.seed))
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for _ in range(cfg.score_batches):
        x, y = next(loader)
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), list(params.values()))
        for (n, p), g in zip(params.items(), grads):
            total[n] += (p.detach() * g).abs()
    flat = torch.cat([v.flatten() for v in total.values()])
    keep = round(0.2 * flat.numel())
    expected = torch.zeros_like(flat, dtype=torch.bool)
    expected[flat.topk(keep).indices] = True
    masks = load_file(f"{row['out']}/masks.safetensors")
    got = torch.cat([masks[n].flatten().bool() for n in total])
    assert int(got.sum()) == keep
    assert (got == expected).float().mean() > 0.999  # float summation order may swap a few boundary ties


@pytest.mark.slow
def test_an_epsd_row_names_the_collapse_guards_its_masks_were_built_with(tmp_path):
    """--layer-floor / --score-norm change EPSD's masks, so its rows say so (reports keep them apart)."""
    (row,) = run_pipeline(_cfg(tmp_path, "epsd-cskd", sparsity="0.8", epsd_warmup_epochs=1, layer_floor=0.05,
                               score_norm="l2"))
    assert row["variant"] == "floor 0.05, l2-norm"
    masks = load_file(f"{row['out']}/masks.safetensors")
    assert all(m.float().mean() >= 0.05 - 1 / m.numel() for m in masks.values())


@pytest.mark.slow
def test_each_epsd_level_starts_from_the_warmup_state_whatever_came_before_it(tmp_path):
    """PS-KD's memory after warmup is every level's start: the 0.8 level of a [0.5, 0.8] run equals a run of
    0.8 alone (one level's training once wrote the memory the next level started from)."""
    both = run_pipeline(_cfg(tmp_path / "both", "epsd-pskd", sparsity="0.5,0.8", epsd_warmup_epochs=1))
    alone = run_pipeline(_cfg(tmp_path / "alone", "epsd-pskd", sparsity="0.8", epsd_warmup_epochs=1))
    (b,) = [r for r in both if r["target_sparsity"] == 0.8]
    assert b["top1"] == alone[0]["top1"]
    got, want = (load_file(f"{r['out']}/model.safetensors") for r in (b, alone[0]))
    assert all(torch.equal(got[k], want[k]) for k in want)
