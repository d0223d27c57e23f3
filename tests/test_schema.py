"""One owner per option, recipes as objects, one result schema, one primitive per pruning rule (issue 22)."""

import argparse
import math
import sqlite3
from dataclasses import dataclass, fields

import pytest
import torch
import torch.nn as nn
import yaml

from kdprune.choices import SCORE_FORMS
from kdprune.errors import UserError
from kdprune.experiments import config as C
from kdprune.experiments.report import CSV_COLUMNS
from kdprune.experiments.store import COLUMNS, add_rows, all_rows, connect
from kdprune.methods import METHODS, PAPER_METHOD, method_or_structured
from kdprune.methods.result import Cost, ResultRow


def _row(**kw):
    base = dict(dataset="digits", arch="resnet20", teacher_arch="resnet32", method="teacher-guided", regime="kd",
                variant="restart", seed=1, target_sparsity=0.9, achieved_sparsity=0.9000001, top1=91.25,
                pruned_top1=40.5, dense_top1=97.0, teacher_top1=98.5, epochs=3, total_epochs=33,
                images_fwd_bwd=123456, teacher_forwards=7890, scoring_batches=12, wall_seconds=1.5,
                total_wall_seconds=9.25, nonzero_params=27000, total_params=270000, teacher_images_fwd_bwd=45000,
                out="runs/x/sparsity-0.9/kd")
    return {**base, **kw}


# ------------------------------------------------------------------------------- one result schema

def test_one_result_row_gives_the_csv_header_and_the_store_columns(tmp_path):
    assert CSV_COLUMNS == ResultRow.columns() == COLUMNS[1:] and COLUMNS[0] == "run"
    con = connect(tmp_path / "s.sqlite")
    try:
        cols = [r[1] for r in con.execute("PRAGMA table_info(results)")]
    finally:
        con.close()
    assert cols == COLUMNS


def test_a_row_survives_the_store_and_the_csv_unchanged(tmp_path):
    rows = [_row(), _row(regime="plain", teacher_top1=None),
            _row(variant="channel", structure="channel", target_macs=2.0, macs=100, macs_before=200,
                 macs_reduction=2.0, params=5000, hardware="AMD EPYC, 2 threads + NVIDIA H200")]
    store = tmp_path / "s.sqlite"
    assert add_rows(store, "abc", rows) == 3 and add_rows(store, "abc", rows) == 0  # keyed: no doubles
    back = sorted(all_rows(store), key=lambda r: (r["regime"], r["variant"]))
    assert back == sorted(rows, key=lambda r: (r["regime"], r["variant"]))
    # the CSV: every value a string, read back by the schema's types
    as_csv = {k: ("" if v is None else str(v)) for k, v in rows[2].items()}
    assert ResultRow.from_dict(as_csv).to_dict() == rows[2]
    assert "structure" not in ResultRow.from_dict(rows[0]).to_dict()  # the extras only where set


def test_an_old_store_layout_is_not_readable(tmp_path):
    from kdprune.experiments.store import readable

    old = tmp_path / "old.sqlite"
    con = sqlite3.connect(old)
    con.execute("CREATE TABLE results (run TEXT, target_sparsity REAL, regime TEXT, variant TEXT, row TEXT)")
    con.commit()
    con.close()
    assert not readable(old) and readable(tmp_path / "absent.sqlite")


def test_costs_add():
    a = Cost.of({"epochs": 2, "images_fwd_bwd": 100, "teacher_forwards": 5, "wall_seconds": 1.5, "top1": 9})
    b = Cost.of(None) + Cost(wall_seconds=0.5) + Cost(epochs=1, images_fwd_bwd=50)
    assert a + b == Cost(3, 150, 5, 2.0)
    # the machines: distinct, in the order the stages ran (a resumed stage may list two)
    c = Cost.of({"epochs": 1, "hardware": ["cpu A, 2 threads", "cpu B, 1 thread"]}) + Cost.of({"hardware": ["gpu"]})
    assert (c + Cost.of({"hardware": ["cpu B, 1 thread"]})).hardware == ("cpu A, 2 threads", "cpu B, 1 thread", "gpu")
    assert (a + b).hardware == ()


def test_describe_names_the_processor_and_the_thread_or_rank_count(monkeypatch):
    from kdprune.hardware import cpu_name, describe

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert describe("cpu") == f"{cpu_name()}, 1 thread" and cpu_name()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert describe(torch.device("cpu"), world_size=2) == f"2 × {cpu_name()}, 3 threads"


# ------------------------------------------------------------------------------- recipes as objects

def _cfg(**kw):
    return C.build_config(C.RunConfig, kw)


def test_every_method_has_a_recipe_object_that_says_its_stages_and_what_the_teacher_costs():
    recipes = {m.recipe.name: m.recipe for m in METHODS.values()}
    assert set(recipes) == {"post-training", "at-init", "imp", "colt", "epsd", "dense"}
    assert all(callable(r.run) for r in recipes.values())
    assert recipes["post-training"].stages(_cfg()) == ("teacher", "student")
    assert recipes["at-init"].stages(_cfg(retrain="both")) == ("dense-ce", "teacher")
    assert recipes["at-init"].stages(_cfg(retrain="plain")) == ("dense-ce",)
    assert recipes["epsd"].stages(_cfg(retrain="both")) == ("dense-ce",)  # its own SD loss, never the teacher
    assert [r.name for r in recipes.values() if r.pays_for_teacher] == ["post-training"]
    assert {r.name for r in recipes.values() if r.iterative} == {"imp", "colt"}
    # the dense references: the CE student alone, or the KD student and so its teacher; each row its own reference
    assert recipes["dense"].stages(_cfg(retrain="plain")) == ("dense-ce",)
    assert recipes["dense"].stages(_cfg(retrain="both")) == ("teacher", "student", "dense-ce")
    assert [recipes["dense"].reference_stage(g) for g in ("plain", "kd")] == ["dense-ce", "student"]
    channel = method_or_structured(_cfg(structure="channel", target_macs="2x"))
    assert channel.recipe.name == "channel" and channel.recipe.stages(_cfg()) == ("teacher", "student")
    assert METHODS[PAPER_METHOD].recipe.name == "post-training"
    # what tells the EPSD family apart is the method's attributes, not its name
    assert (METHODS["epsd-pskd"].self_distillation, METHODS["epsd-pskd"].criterion) == ("pskd", "sd-saliency")
    assert (METHODS["simple-dlb"].self_distillation, METHODS["simple-dlb"].criterion) == ("dlb", "snip")
    assert METHODS["epg"].self_distillation is None


def test_recipe_cost_estimates():
    from kdprune.experiments.sweep import estimate

    post = _cfg(teacher_epochs=4, student_epochs=3, retrain_epochs=2, sparsity=[0.5, 0.9], retrain="both")
    assert estimate(post)["epochs"] == 4 + 3 + 2 * 2 * 2
    at_init = _cfg(method="snip", student_epochs=3, sparsity=[0.5, 0.9], retrain="plain")
    assert estimate(at_init)["epochs"] == 3 * (1 + 2)
    epsd = _cfg(method="epsd-cskd", student_epochs=3, epsd_warmup_epochs=1, sparsity=[0.5, 0.9])
    assert estimate(epsd)["epochs"] == 3 * 3 + 1
    imp = _cfg(method="imp", student_epochs=2, sparsity=[0.75], rounds=2, retrain="plain")
    assert estimate(imp, 100) == {"epochs": 2 * (1 + 2), "images": 600}
    given = _cfg(teacher_epochs=4, student_epochs=3, retrain_epochs=2, sparsity=[0.5, 0.9], retrain="both",
                 teacher_checkpoint=__file__)  # any existing file: estimates read no weights
    assert estimate(given)["epochs"] == 3 + 2 * 2 * 2  # a teacher given as a file trains no epoch
    channel = _cfg(structure="channel", target_latency="1.5x,2x,3x", teacher_epochs=4, student_epochs=3,
                   retrain_epochs=2, retrain="plain")
    assert estimate(channel)["epochs"] == 4 + 3 + 3 * 2  # one retraining per latency target


# ------------------------------------------------------------------------------- one owner per option

def test_the_sweeps_stage_keys_come_from_the_declarations_and_are_the_ones_runs_were_hashed_with():
    # frozen: a change here renames every shared stage of every existing sweep folder
    data = {"dataset", "data_dir", "download", "image_size", "batch_size", "optimizer", "momentum", "nesterov",
            "weight_decay", "schedule", "grad_clip", "amp", "channels_last", "lr"}
    teacher = data | {"seed", "teacher_arch", "teacher_checkpoint", "teacher_epochs"}
    student = teacher | {"arch", "student_checkpoint", "student_epochs", "alpha", "temperature", "kd_loss", "kd_eps",
                         "kd_t_squared", "kd_std", "teacher_seed"}
    dense = data | {"seed", "arch", "student_epochs", "rewind_epoch"}
    assert set(C.stage_keys("teacher")) == teacher
    assert set(C.stage_keys("student")) == student
    assert set(C.stage_keys("dense-ce")) == dense


@pytest.mark.parametrize("key, value, message", [
    ("batch_size", 0, "batch_size: must be positive, got 0"),
    ("retrain_lr", -1.0, "retrain_lr: must not be negative, got -1.0"),
    ("image_size", 2, "image_size: must lie in [4, 1024], got 2"),
    ("rate", 1.0, "rate: must lie strictly between 0 and 1, got 1.0"),
    ("colt_partitions", 1, "colt_partitions: must be at least 2, got 1"),
    ("channel_floor", 1.0, "channel_floor: must lie in [0, 1), got 1.0"),
    ("kd_std", "both", "kd_std: expected one of population, sample, got 'both'"),
    ("optimizer", "adam", "optimizer: expected one of sgd, adamw, got 'adam'"),
])
def test_declared_ranges_and_choices_are_checked(key, value, message):
    with pytest.raises(UserError) as e:
        _cfg(**{key: value})
    assert str(e.value) == message


def test_every_choice_set_is_the_one_the_library_checks():
    from kdprune.pruning.criteria import _FORMS

    assert tuple(_FORMS) == SCORE_FORMS
    declared = {f.name: f.metadata["choices"] for f in fields(C.RunConfig) if "choices" in f.metadata}
    assert {"optimizer", "schedule", "kd_loss", "kd_std", "scope", "score_norm", "score_form", "structure",
            "retrain_schedule", "retrain", "colt_heads", "latency_runtime"} == set(declared)
    # the library refuses what the declaration refuses, in the same words
    from kdprune.losses import Distillation

    with pytest.raises(UserError, match="kd_loss: expected one of ca-kld, kd, got 'kl'"):
        Distillation(kind="kl")


@dataclass
class _WithNewOption(C.RunConfig):
    """``kdprune run`` with one option more, declared as a new option would be."""

    score_clip: str = C._f("off", "a new collapse guard: clip each layer's scores (off | p99)", choices=("off", "p99"),
                           neutral="off", used_by=("post-training",))


def test_an_option_declared_once_works_in_the_cli_the_yaml_validation_the_saved_config_and_the_hash(tmp_path):
    parser = argparse.ArgumentParser()
    C.add_arguments(parser, _WithNewOption, grouped=True)
    flags = vars(parser.parse_args(["--score-clip", "p99", "--sparsity", "0.5"]))
    cfg = C.build_config(_WithNewOption, flags)
    assert cfg.score_clip == "p99"
    assert "--score-clip" in parser.format_help() and "[post-training]" in parser.format_help()
    f = tmp_path / "c.yaml"
    f.write_text("score-clip: p99\nmethod: magnitude\n")
    assert C.build_config(_WithNewOption, {}, str(f)).score_clip == "p99"
    with pytest.raises(UserError, match="score_clip: expected one of off, p99, got 'p50'"):
        C.build_config(_WithNewOption, {"score_clip": "p50"})
    f.write_text("score_clip: p50\n")
    with pytest.raises(UserError, match="score_clip: expected one of off, p99, got 'p50'"):
        C.build_config(_WithNewOption, {}, str(f))
    assert yaml.safe_load(yaml.safe_dump(C.to_dict(cfg)))["score_clip"] == "p99"  # config.yaml holds it
    # hashed where a recipe that reads it runs with a value that changes something; not otherwise, so adding it
    # renamed no existing run
    assert C.identity(cfg)["score_clip"] == "p99"
    assert "score_clip" not in C.identity(C.build_config(_WithNewOption, {}))
    assert "score_clip" not in C.identity(C.build_config(_WithNewOption, {"score_clip": "p99", "method": "snip"}))


def test_help_groups_the_options_by_owner():
    from kdprune.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    out = sub.choices["run"].format_help()
    sections = {s.split(":\n", 1)[0]: s for s in out.split("\n\n") if ":\n" in s}
    titles = list(sections)
    assert titles[1:5] == ["the run: student, teacher, sparsities and retraining", "data and training",
                           C.DistillConfig.__doc__.splitlines()[0], C.PruneOptions.__doc__.splitlines()[0]]
    assert "--colt-heads" in sections["iterative pruning: IMP (Lottery Ticket with rewinding) and COLT"]
    assert "--alpha" in sections[C.DistillConfig.__doc__.splitlines()[0]]


# ------------------------------------------------------------------------------- one primitive per pruning rule

def test_nesting_puts_pruned_weights_below_every_kept_one():
    from kdprune.pruning.threshold import nest

    scores = {"w": torch.tensor([0.5, -0.25, 3.0, 0.0])}
    masks = {"w": torch.tensor([True, True, False, True])}
    assert nest(scores, None) is scores
    assert nest(scores, masks)["w"].tolist() == [0.5, -0.25, -math.inf, 0.0]  # kept scores keep their sign


def test_imp_synflow_and_progressive_scoring_all_nest_through_one_threshold():
    """Every rule that thresholds, at every round, keeps the previous round's mask nested."""
    from kdprune.models import create_model
    from kdprune.pruning import CRITERIA
    from kdprune.pruning.progressive import progressive_masks
    from kdprune.pruning.prunable import prunable_parameters

    torch.manual_seed(0)
    model = create_model("resnet20", 10, 1)
    params = prunable_parameters(model)
    seen = []

    def scores(masks):
        seen.append(masks)
        return {n: torch.rand(p.shape) for n, p in params.items()}  # new scores every round

    final = progressive_masks(scores, 0.9, 4)
    for earlier in seen[1:]:
        assert all(bool((~earlier[n] <= ~final[n]).all()) for n in final)  # pruned stays pruned
    total = sum(m.numel() for m in final.values())
    assert sum(int((~m).sum()) for m in final.values()) == round(0.9 * total)
    sf = CRITERIA["synflow"].masks_for(model, params, None, 0.8, "layerwise", input_shape=(1, 8, 8),
                                       synflow_iterations=3)
    for n, m in sf.items():  # layerwise scope through the same threshold: 80% of every layer
        assert int((~m).sum()) == round(0.8 * m.numel())


# ------------------------------------------------------------------------------- the dependencies

def test_registered_models_carry_their_stem_and_classifier():
    from kdprune.models import create_model, list_models
    from kdprune.pruning.prunable import prunable_parameters, stem_and_classifier

    for name in list_models():
        model = create_model(name, 10, 1)
        cfg = model.kdprune_cfg
        modules = dict(model.named_modules())
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        assert (cfg["first_conv"], cfg["classifier"]) == (convs[0], linears[-1]) == stem_and_classifier(model), name
        assert cfg["input_size"] == (1, 32, 32)
        kept = prunable_parameters(model, prune_first=False, prune_last=False)
        assert f"{cfg['first_conv']}.weight" not in kept and f"{cfg['classifier']}.weight" not in kept


def test_group_importance_is_a_torch_pruning_importance_and_one_mac_counter_serves():
    import torch_pruning as tp

    from kdprune.models import create_model
    from kdprune.models.macs import count_macs
    from kdprune.pruning.structured import GroupSaliency

    assert isinstance(GroupSaliency({}), tp.importance.Importance)
    model = create_model("resnet20", 10, 3)
    x = torch.zeros(1, 3, 8, 8)
    dense, nonzero = count_macs(model, x)
    assert dense == nonzero > 0
    with torch.no_grad():
        model.fc.weight.zero_()
    dense2, nonzero2 = count_macs(model, x)
    assert dense2 == dense and nonzero2 == dense - model.fc.weight.numel()
