"""Channel pruning to a measured latency target (issue 21): the table, the allocation, the search, the CLI.

No test reads a clock to decide: a deterministic timer stands in for the runtime, except where a target is
out of reach by any measure (50x) or only the wiring is checked.
"""

import itertools
import json

import pytest
import torch

import kdprune
from conftest import TINY_RUN
from kdprune.errors import UserError
from kdprune.models import create_model
from kdprune.pruning import latency as L
from kdprune.pruning import structured as S


class FakeTimer:
    """Time = MACs-proportional compute + memory traffic + a per-layer overhead, and for whole models a
    constant the layer table does not see (so predicted and measured speed-ups differ, as on a machine)."""

    def __init__(self, batch=64, threads=2, input_shape=(1, 8, 8), runtime="fake"):
        self.batch, self.threads, self.input_shape, self.runtime = batch, threads, input_shape, runtime
        self.layer_calls = 0

    def key(self):
        return {"cpu": "test cpu", "runtime": self.runtime, "version": "1.0", "threads": self.threads,
                "batch": self.batch, "input": list(self.input_shape)}

    def layer_seconds(self, shape, cin, cout):
        self.layer_calls += 1
        oh = shape.in_hw[0] // shape.stride[0]
        ow = shape.in_hw[1] // shape.stride[1]
        k = shape.kernel[0] * shape.kernel[1]
        groups = cin if shape.depthwise else 1
        return self.batch * (1e-9 * cin // groups * cout * k * oh * ow + 2e-9 * cout * oh * ow) + 5e-6

    def model_seconds(self, model):
        problem = L.build_problem(model, torch.zeros(1, *self.input_shape), [])
        return L.predict(problem, self.layer_seconds, []) + 3e-4

    def compare(self, dense, pruned):
        d, p = self.model_seconds(dense), self.model_seconds(pruned)
        return d, p, d / p


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDPRUNE_CACHE_DIR", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------------ allocation

def _hand_built():
    """Two groups of 4 channels (steps of 1) feeding three layers; a table linear in the widths."""
    conv = L.LayerShape("conv", (3, 3), (1, 1), (1, 1), (1, 1), False, (4, 4))
    layers = [L.Layer("a", conv, 3, 4, None, 0), L.Layer("b", conv, 4, 4, 0, 1), L.Layer("c", conv, 4, 4, 1, None)]
    problem = L.Problem(layers, [4, 4], [1, 1], [1, 1], [[1.0, 2.0, 3.0, 4.0], [0.5, 5.0, 6.0, 7.0]], ["a", "b"])
    costs = {"a": lambda i, o: 1.0 * o, "b": lambda i, o: 0.1 * i * o + 0.2, "c": lambda i, o: 2.0 * i}
    return problem, costs


def _predict(problem, costs, widths):
    total = 0.0
    for layer in problem.layers:
        cin = widths[layer.in_group] if layer.in_group is not None else layer.cin
        cout = widths[layer.out_group] if layer.out_group is not None else layer.cout
        total += costs[layer.name](cin, cout)
    return total


@pytest.mark.parametrize("budget", [14.0, 11.5, 9.0, 7.0])
def test_the_allocation_meets_the_budget_and_keeps_the_most_importance(budget, monkeypatch):
    problem, costs = _hand_built()
    # the layers share one shape, so the table is told apart by the layer being predicted
    monkeypatch.setattr(L, "predict", lambda p, table, w: _predict(p, costs, w))
    widths = L.allocate(problem, None, budget)
    assert widths is not None and _predict(problem, costs, widths) <= budget

    def kept(w):
        return sum(sum(sorted(problem.importance[g])[problem.sizes[g] - w[g]:]) for g in range(2))

    feasible = [w for w in itertools.product(range(1, 5), repeat=2) if _predict(problem, costs, list(w)) <= budget]
    assert kept(widths) == max(kept(w) for w in feasible)
    assert L.allocate(problem, None, 0.5) is None  # below what every group at its floor costs
    gone = L.removals(problem, widths)
    assert all(len(gone.get(r, [])) == 4 - w for r, w in zip(problem.roots, widths))
    if "b" in gone:  # the least important channels go first
        assert gone["b"][0] == 0


def test_widths_follow_the_grid_and_the_floor():
    problem = L.Problem([], [16, 64, 10], [2, 7, 1], [L.grid_step(16), L.grid_step(64), L.grid_step(10, 8)],
                        [[0.0] * 16, [0.0] * 64, [0.0] * 10], rounded=False)
    assert problem.widths(0) == [16, 12, 8, 4, 2]  # the floor itself below the last step
    assert problem.widths(1) == [64, 56, 48, 40, 32, 24, 16, 8, 7]
    rounded = L.Problem([], [10], [1], [8], [[0.0] * 10], rounded=True)
    assert rounded.widths(0) == [10, 8]  # all of it, or a multiple of --channel-round


# ------------------------------------------------------------------------------------------ the table

def test_the_cache_key_changes_with_runtime_threads_batch_and_input_size(tmp_path):
    from kdprune.deploy.runtimes import TorchTimer

    base = TorchTimer((3, 16, 16), batch=64, threads=2).key()
    assert set(base) >= {"cpu", "runtime", "version", "threads", "batch", "input"}
    others = [TorchTimer((3, 16, 16), batch=64, threads=1).key(), TorchTimer((3, 16, 16), batch=1, threads=2).key(),
              TorchTimer((3, 32, 32), batch=64, threads=2).key(), {**base, "runtime": "onnxruntime"},
              {**base, "version": "other"}, {**base, "cpu": "another cpu"}]
    keys = {L.cache_key(k) for k in [base, *others]}
    assert len(keys) == 1 + len(others) and L.cache_key(dict(reversed(list(base.items())))) == L.cache_key(base)


def test_a_measured_table_is_kept_and_a_changed_key_measures_again():
    model = create_model("resnet20", 10, 1)
    x = torch.zeros(1, 1, 8, 8)
    groups = S.channel_groups(model, x, {n: p.abs() for n, p in model.named_parameters()}, S.ChannelOptions(0.1))
    problem = L.build_problem(model, x, groups)
    timer = FakeTimer()
    first = L.LatencyTable(timer)
    L.measure_table(problem, first)
    assert first.measured == len(first.entries) > 20 and first.path.is_file()
    again = L.LatencyTable(FakeTimer())
    L.measure_table(problem, again)
    assert again.measured == 0 and again.entries == first.entries
    other = L.LatencyTable(FakeTimer(batch=1))
    L.measure_table(problem, other)
    assert other.measured == len(other.entries) and other.path != first.path


# ------------------------------------------------------------------------------------------ end to end

def test_the_delivered_model_meets_the_target_under_the_timer():
    torch.manual_seed(0)
    model = create_model("resnet20", 10, 1)
    dense = create_model("resnet20", 10, 1)
    dense.load_state_dict(model.state_dict())
    timer = FakeTimer()
    logs = []
    plan = L.plan_latency(model, torch.zeros(1, 1, 8, 8), {n: p.detach().abs() for n, p in model.named_parameters()},
                          1.8, timer, log=logs.append)
    pruned = S.prune_channels(model, torch.zeros(1, 1, 8, 8), plan)
    measured = timer.compare(dense, pruned)[2]
    assert measured >= 1.8 and plan.latency["speedup"] == pytest.approx(measured)
    assert plan.latency["predicted_speedup"] > plan.latency["speedup"]  # the table does not see the constant
    assert plan.latency["target"] == 1.8 and plan.latency["runtime"] == "fake"
    assert any("predicted" in m and "measured" in m for m in logs)
    # the least pruning found: a plan for a smaller target is faster to run no more than needed
    assert measured < 2.6


def test_the_api_takes_a_latency_target_and_refuses_an_unreachable_one():
    torch.manual_seed(0)
    model = create_model("resnet20", 10, 1)
    plan = kdprune.prune_channels(model, criterion="l1", target_latency="1.5x", input_shape=(1, 8, 8),
                                  timer=FakeTimer())
    assert plan.latency["speedup"] >= 1.5 and plan.macs_after < plan.macs_before
    with pytest.raises(UserError, match=r"out of reach: .* \d+\.\d\dx faster as measured .* ask for at most"):
        kdprune.prune_channels(create_model("resnet20", 10, 1), criterion="l1", target_latency=40,
                               input_shape=(1, 8, 8), timer=FakeTimer())
    with pytest.raises(UserError, match="above 1x"):
        kdprune.prune_channels(create_model("resnet20", 10, 1), criterion="l1", target_latency=1,
                               input_shape=(1, 8, 8), timer=FakeTimer())
    with pytest.raises(UserError, match="exactly one target"):
        kdprune.prune_channels(create_model("resnet20", 10, 1), criterion="l1", target_latency=2, target_macs=2,
                               input_shape=(1, 8, 8))


# ------------------------------------------------------------------------------------------ command line

@pytest.mark.parametrize("args, message", [
    (["--target-latency", "1x"], "above 1x"),
    (["--target-latency", "fast"], "expected a speed-up factor like 2x"),
    (["--target-latency", "2x", "--target-macs", "2x"], "exactly one target"),
    (["--target-latency", "2x", "--latency-runtime", "tvm"], "latency_runtime: expected one of onnxruntime, torch"),
    (["--target-latency", "2x", "--latency-batch", "0"], "latency_batch: must be at least 1"),
])
def test_bad_latency_targets_are_one_line(args, message, run_cli, tmp_path):
    code, _, err = run_cli("run", "--structure", "channel", "--out", tmp_path / "r", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_a_missing_onnxruntime_names_what_to_install(run_cli, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    code, _, err = run_cli("run", "--structure", "channel", "--target-latency", "2x", "--out", tmp_path / "r")
    assert code == 2 and "pip install" in err and "kdprune[export]" in err and "--latency-runtime torch" in err


@pytest.mark.parametrize("resume", [[], ["--resume"]])  # --resume on a new folder starts a run: checked too
def test_an_unreachable_target_stops_the_run_before_anything_trains(run_cli, tmp_path, resume):
    code, _, err = run_cli("--threads", "1", "run", "--structure", "channel", "--target-latency", "50x",
                           "--latency-runtime", "torch", "--out", tmp_path / "r", *resume)
    assert code == 2 and "out of reach" in err and "ask for at most" in err
    assert not (tmp_path / "r" / "teacher").exists()


@pytest.mark.slow
def test_a_latency_targeted_run_records_its_measured_latency_and_the_report_plots_it(run_cli, tmp_path):
    out = tmp_path / "r"
    code, _, err = run_cli("--threads", "1", "run", "--structure", "channel", "--target-latency", "1.2x",
                           "--latency-runtime", "torch", "--method", "magnitude", "--retrain", "plain",
                           "--channel-round", "8", *TINY_RUN, "--out", out)  # widths in 8s: a smaller table
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert row["target_latency"] == 1.2 and row["latency_runtime"] == "torch" and row["latency_speedup"] >= 1.2
    assert row["variant"] == "channel, latency torch, widths x8" and row["latency_ms"] < row["dense_latency_ms"]
    plan = json.loads((out / "latency-1.2x" / "plan.json").read_text())
    assert plan["latency"]["speedup"] == row["latency_speedup"]
    code, text, err = run_cli("inspect", out / "latency-1.2x" / "plain")
    assert code == 0 and "faster as measured when pruned (target 1.2x)" in text
    code, md, err = run_cli("report", out, "--out", tmp_path / "rep")
    assert code == 0, err
    assert (tmp_path / "rep" / "accuracy_vs_recorded_latency_digits_torch.png").is_file()
    assert "accuracy against measured latency (PyTorch eager)" in md and "1.2x latency" in md


def test_the_stem_stays_whole_unless_asked():
    widths = {}
    for prune_stem in (False, True):
        torch.manual_seed(0)
        model = create_model("resnet20", 10, 1)
        kdprune.prune_channels(model, criterion="l1", target_params=0.9, input_shape=(1, 8, 8), prune_stem=prune_stem)
        widths[prune_stem] = model.conv1.out_channels
        assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    assert widths[False] == 16 and widths[True] < 16
