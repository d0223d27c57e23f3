"""Channel pruning: group importance, targets, surgery on residual and depthwise nets, widths, export."""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

import kdprune
from kdprune.errors import UserError
from kdprune.models import create_model
from kdprune.models.macs import count_macs
from kdprune.pruning import structured as S

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def _depthwise():
    from own_model import Student

    torch.manual_seed(0)
    return Student().eval()


@pytest.mark.parametrize("make, shape", [(lambda: create_model("resnet20", 10, 3), (3, 16, 16)),
                                         (_depthwise, (1, 8, 8))])
@pytest.mark.slow
@pytest.mark.parametrize("factor", [2.0, 4.0])
def test_pruned_to_the_declared_macs_still_runs_and_keeps_its_ends(make, shape, factor, tmp_path):
    torch.manual_seed(1)
    model = make().eval()
    x = torch.randn(3, *shape)
    plan = kdprune.prune_channels(model, criterion="l2", target_macs=f"{factor:g}x", input_shape=shape)
    macs = count_macs(model, x)[0]
    assert plan.macs_after == macs and plan.macs_before / macs >= factor
    assert plan.macs_before / macs <= factor * 1.05  # the declared MACs within 5%
    assert model(x).shape == (3, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    first_out = {"resnet": 16, "student": 32}["resnet" if shape[0] == 3 else "student"]
    assert convs[0].out_channels == first_out and convs[0].in_channels == shape[0]  # the first conv is whole
    assert [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features == 10  # so are the classes
    r = kdprune.export(model, tmp_path / "m.onnx", format="onnx", input_shape=shape)
    assert r["onnx_max_abs_diff"] <= 1e-4


def test_rebuilt_from_widths_equals_the_pruned_model_bit_for_bit():
    torch.manual_seed(2)
    model = create_model("resnet20", 10, 3).eval()
    x = torch.randn(2, 3, 16, 16)
    kdprune.prune_channels(model, criterion="l1", target_macs=2, input_shape=(3, 16, 16))
    rebuilt = S.apply_widths(create_model("resnet20", 10, 3), json.loads(json.dumps(S.channel_widths(model))))
    rebuilt.load_state_dict(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values()))
    assert torch.equal(rebuilt.eval()(x), model(x))


def test_group_score_is_the_hand_computed_sum():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1),
                        nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    g = torch.Generator().manual_seed(4)
    sal = {n: torch.rand(p.shape, generator=g) for n, p in net.named_parameters()}
    _, names, groups = S._groups(net, torch.zeros(1, 1, 6, 6))
    imp = S.GroupSaliency({p: sal[n] for n, p in net.named_parameters()})
    by_root = {names[gr[0].dep.target.module]: imp(gr) for gr in groups}
    # the second conv's channels: its filters + bias, its BN scale and shift, the classifier's input columns
    want = (sal["3.weight"].flatten(1).sum(1) + sal["3.bias"] + sal["4.weight"] + sal["4.bias"]
            + sal["8.weight"].sum(0))
    assert torch.allclose(by_root["3"].float(), want, atol=1e-6)
    assert set(by_root) == {"3"}  # the first conv (0) and the classifier (8) are never roots


def test_teacher_guided_group_importance_ranks_like_the_kd_free_one_only_by_chance():
    """teacher-guided saliency is sum_b |w * dL_total/dw| (CA-KLD and CE), taylor-ce the same with CE alone:
    both equal the formula written out by hand, and they differ by the KD term."""
    torch.manual_seed(5)
    student, teacher = create_model("resnet20", 10, 1).eval(), create_model("resnet20", 10, 1).eval()
    g = torch.Generator().manual_seed(6)
    data = [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
    tg = S.saliency(student, "teacher-guided", iter(data), teacher=teacher, num_batches=2)
    ce = S.saliency(student, "taylor-ce", iter(data), num_batches=2)
    assert set(tg) == set(dict(student.named_parameters()))  # every parameter, BN included

    def by_hand(alpha):  # sum over batches of |w * dL/dw|, L = alpha*CA-KLD + (1-alpha)*CE, written out here
        params = dict(student.named_parameters())
        out = {n: torch.zeros_like(p) for n, p in params.items()}
        for x, y in data:
            def z(v):  # per-sample z-score over the classes (population std), then /T
                return (v - v.mean(-1, keepdim=True)) / (v.std(-1, keepdim=True, unbiased=False) + 1e-7) / 4.0
            s_logits = student(x)
            with torch.no_grad():
                t_logits = teacher(x)
            kl = (torch.softmax(z(t_logits), -1) * (torch.log_softmax(z(t_logits), -1)
                                                    - torch.log_softmax(z(s_logits), -1))).sum(-1).mean() * 16.0
            loss = alpha * kl + (1 - alpha) * nn.functional.cross_entropy(s_logits, y)
            grads = torch.autograd.grad(loss, list(params.values()))
            for (n, p), g in zip(params.items(), grads):
                out[n] += (p.detach() * g).abs()
        return out

    want_tg, want_ce = by_hand(0.9), by_hand(0.0)
    for n in tg:
        assert torch.allclose(tg[n], want_tg[n], rtol=1e-3, atol=1e-6), n
        assert torch.allclose(ce[n], want_ce[n], rtol=1e-3, atol=1e-6), n
    assert not torch.allclose(tg["conv1.weight"], ce["conv1.weight"])  # and the KD term does change them


def test_parameter_target_and_unreachable_or_bad_targets():
    torch.manual_seed(7)
    model = create_model("resnet20", 10, 3).eval()
    before = S.count_params(model)
    plan = kdprune.prune_channels(model, criterion="l1", target_params=0.3, input_shape=(3, 8, 8))
    assert plan.params_after <= 0.7 * before and S.count_params(model) == plan.params_after
    for bad in ("1x", "0.5", "abc", "-2x"):
        with pytest.raises(UserError, match="target_macs"):
            kdprune.prune_channels(create_model("resnet20", 10, 3), criterion="l1", target_macs=bad,
                                   input_shape=(3, 8, 8))
    with pytest.raises(UserError, match="unreachable"):
        kdprune.prune_channels(create_model("resnet20", 10, 3), criterion="l1", target_macs=1000,
                               input_shape=(3, 8, 8))


@pytest.mark.slow
def test_cli_prune_channels_then_export_and_inspect(tmp_path, run_cli):
    code, _, err = run_cli("train", "--arch", "resnet20", "--epochs", "1", "--batch-size", "128", "--out", tmp_path / "t")
    assert code == 0, err
    out = tmp_path / "p"
    code, _, err = run_cli("prune", "--checkpoint", tmp_path / "t", "--arch", "resnet20", "--structure", "channel",
                           "--method", "teacher-guided", "--teacher-checkpoint", tmp_path / "t", "--teacher-arch",
                           "resnet20", "--target-macs", "2x", "--score-batches", "2", "--out", out)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert 2.0 <= m["macs_reduction"] <= 2.1 and m["params_after"] < m["params_before"]
    widths = json.loads((out / "widths.json").read_text())
    assert widths["arch"] == "resnet20" and widths["widths"]["conv1"]["out"] == 16
    code, stdout, err = run_cli("export", out, "--format", "onnx")
    assert code == 0 and "ONNX Runtime vs PyTorch" in stdout, err
    code, stdout, err = run_cli("inspect", out)
    assert code == 0, err
    assert f"MACs per 8x8 image: {m['macs_after']:,}" in stdout and f"(before channel pruning {m['macs_before']:,}" in stdout


@pytest.mark.parametrize("args, message", [
    (["--target-macs", "1x"], "above 1x"),
    (["--target-macs", "2x", "--target-params", "0.5"], "exactly one target"),
    ([], "exactly one target"),
    (["--target-params", "1.5"], "target_params"),
    (["--target-macs", "2x", "--method", "snip"], "--structure channel takes --method"),
    (["--target-macs", "2x", "--channel-floor", "1"], "channel_floor"),
])
def test_bad_channel_options_are_one_line(tmp_path, run_cli, args, message):
    code, _, err = run_cli("prune", "--checkpoint", tmp_path, "--structure", "channel", "--out", tmp_path / "x", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["teacher-guided", "taylor-ce"])
def test_run_channel_recipe_end_to_end(tmp_path, run_cli, method):
    from conftest import TINY_RUN
    from kdprune.experiments.report import aggregate
    from kdprune.pruning.prunable import prunable_parameters

    out = tmp_path / "run"
    twin = ["--channel-twin"] if method == "teacher-guided" else []
    code, stdout, err = run_cli("run", "--structure", "channel", "--method", method, "--target-macs", "2x,4x",
                                "--out", out, *twin, *TINY_RUN)
    assert code == 0, err
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    channel = [r for r in rows if r["variant"] == "channel"]
    assert [(r["target_macs"], r["regime"]) for r in channel] == [(2.0, "plain"), (2.0, "kd"), (4.0, "plain"), (4.0, "kd")]
    for r in channel:
        assert r["macs_reduction"] >= r["target_macs"]
        assert r["macs_reduction"] <= r["target_macs"] * 1.05 and r["params"] < 272_186
        assert r["target_sparsity"] == pytest.approx(1 - 1 / r["target_macs"])
        assert (Path(r["out"]) / "widths.json").is_file()
    assert run_cli("export", out / "macs-4x" / "kd", "--format", "onnx")[0] == 0
    twins = [r for r in rows if r["variant"] != "channel"]
    if not twin:
        assert not twins and "--channel-twin" not in (out / "config.yaml").read_text()
        return
    # --channel-twin: per target and regime, the unstructured model with the channel model's parameter count
    assert [(r["target_macs"], r["regime"], r["variant"]) for r in twins] == [
        (f, g, "unstructured, same params") for f in (2.0, 4.0) for g in ("plain", "kd")]
    dense = create_model("resnet20", 10, 1)
    prunable = sum(p.numel() for p in prunable_parameters(dense).values())
    fixed = sum(p.numel() for p in dense.parameters()) - prunable
    for t, c in zip(twins, channel):
        state = load_file(str(Path(t["out"]) / "model.safetensors"))
        masks = load_file(str(Path(t["out"]) / "masks.safetensors"))
        kept = sum(int(m.sum()) for m in masks.values())
        assert all(torch.count_nonzero(state[k][m == 0]) == 0 for k, m in masks.items())
        assert kept + fixed == pytest.approx(c["params"], abs=1) and t["params"] == c["params"]
        assert t["target_sparsity"] == c["target_sparsity"]
    # the report sets the twins in the channel table, at the channel model's MACs column
    labels = {k[3] for k in aggregate(rows)}
    assert labels == {"plain, channel", "kd, channel", "plain, unstructured, same params", "kd, unstructured, same params"}
    assert all(v["channel"] for v in aggregate(rows).values())
    # --latency: every model timed once against its dense one; a twin is the dense architecture (speed-up 1)
    code, stdout, err = run_cli("report", out, "--out", tmp_path / "rep", "--latency", "8")
    assert code == 0, err
    assert (tmp_path / "rep" / "accuracy_vs_latency_digits.png").stat().st_size > 10_000
    recorded, section = stdout.split("Measured by `kdprune report --latency`")  # each run's own, then the report's
    assert "PyTorch eager (channels_last), batch 8" in section
    assert "Measured by each run when it pruned" in recorded  # the rows carry what the run measured
    table = [l.split(" | ") for l in section.splitlines() if l.startswith("| teacher-guided")]
    assert len(table) == 8 and all(l[-1] == "1.00x |" for l in table if "unstructured" in l[0])
    assert all(l[1] in ("2x MACs", "4x MACs") for l in table)
    assert run_cli("report", out, "--out", tmp_path / "rep2", "--latency", "0")[0] == 2


@pytest.mark.parametrize("args, message", [
    (["--channel-twin"], "--channel-twin goes with --structure channel"),
    (["--channel-twin", "--structure", "channel", "--target-macs", "2x", "--method", "taylor-ce"],
     "--channel-twin needs an unstructured criterion"),
])
def test_bad_twin_options_are_one_line(tmp_path, run_cli, args, message):
    code, _, err = run_cli("run", "--out", tmp_path / "x", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x").exists()


def test_rounded_widths_are_a_variant_of_their_own():
    from kdprune.experiments.config import RunConfig
    from kdprune.methods.structured import channel_variant

    assert channel_variant(RunConfig()) == "channel"
    assert channel_variant(RunConfig(channel_round=8)) == "channel, widths x8"


def test_a_latency_target_names_its_runtime_in_the_variant():
    """The end-to-end latency test runs with rounded widths; the unrounded variant is checked here."""
    from kdprune.experiments.config import RunConfig
    from kdprune.methods.structured import channel_variant

    cfg = dict(target_latency="2x", latency_runtime="torch")
    assert channel_variant(RunConfig(**cfg)) == "channel, latency torch"
    assert channel_variant(RunConfig(**cfg, channel_round=8)) == "channel, latency torch, widths x8"
    assert channel_variant(RunConfig(target_latency="2x", latency_runtime="onnxruntime")) == "channel, latency onnxruntime"


def test_channel_rounding_keeps_multiples_and_still_reaches_the_target():
    torch.manual_seed(8)
    model = create_model("resnet20", 10, 3).eval()
    plan = kdprune.prune_channels(model, criterion="l2", target_macs=2, input_shape=(3, 16, 16), round_to=8)
    assert 2.0 <= plan.macs_reduction <= 2.1
    for name, w in S.channel_widths(model).items():
        if w["type"] == "conv2d" and name != "conv1":
            assert w["out"] % 8 == 0, (name, w)


def test_the_run_table_keeps_the_channel_rows_beside_their_unstructured_twin():
    """Same target, same regime, two variants: two lines (the twin's row once replaced the channel row)."""
    from kdprune.experiments.results import format_table

    base = dict(method="teacher-guided", dataset="digits", arch="resnet20", teacher_arch="resnet32", seed=0,
                dense_top1=99.0, teacher_top1=99.2, pruned_top1=50.0, total_params=100, target_sparsity=0.5,
                regime="plain", nonzero_params=40)
    table = format_table([dict(base, top1=90.0, achieved_sparsity=0.6, variant="channel"),
                          dict(base, top1=97.0, achieved_sparsity=0.6, variant="unstructured, same params")])
    assert "| 50.00% | channel | 60.0000% | 40 / 100 | 50.00 | 90.00 | -9.00 |" in table
    assert "| 50.00% | unstructured, same params | 60.0000% | 40 / 100 | 50.00 | 97.00 | -2.00 |" in table
    one = format_table([dict(base, top1=90.0, achieved_sparsity=0.6, variant="channel")])
    assert "variant" not in one and "| 50.00% | 60.0000% |" in one  # one variant: the table as before
