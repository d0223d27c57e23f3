import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_RUN
from kdprune.models import create_model


@pytest.mark.slow
def test_run_end_to_end_on_digits(tmp_path, run_cli):
    out = tmp_path / "run"
    code, stdout, err = run_cli("run", "--out", out, "--sparsity", "0.5,0.9", *TINY_RUN)
    assert code == 0, err
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["target_sparsity"], r["regime"]) for r in rows] == [(0.5, "plain"), (0.5, "kd"), (0.9, "plain"), (0.9, "kd")]
    required = {"method", "dataset", "arch", "teacher_arch", "target_sparsity", "achieved_sparsity", "regime", "top1",
                "dense_top1", "teacher_top1", "seed", "epochs", "wall_seconds"}
    for r in rows:
        assert required <= set(r)
        n = create_model("resnet20", 10, 1)
        prunable = sum(m.weight.numel() for m in n.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
        assert abs(r["achieved_sparsity"] - r["target_sparsity"]) * prunable <= 0.5 + 1e-6
        assert 0 <= r["top1"] <= 100 and r["method"] == "teacher-guided" and r["dataset"] == "digits"
    assert "| 90.00% |" in stdout and (out / "results.md").read_text() in stdout
    # the saved model loads into a vanilla model and its pruned weights are zeros
    state = load_file(str(out / "sparsity-0.9" / "kd" / "model.safetensors"))
    masks = load_file(str(out / "sparsity-0.9" / "kd" / "masks.safetensors"))
    model = create_model("resnet20", 10, 1)
    model.load_state_dict(state)
    for k, m in masks.items():
        assert torch.count_nonzero(state[k][m == 0]) == 0
    for sub in ("teacher", "student", "sparsity-0.9/plain"):
        assert (out / sub / "metrics.json").is_file() and not (out / sub / "checkpoint.pt").exists()
    # where it ran: every stage and every row name this machine's processor and thread count
    from kdprune.hardware import cpu_name

    teacher = json.loads((out / "teacher" / "metrics.json").read_text())
    (where,) = teacher["hardware"]
    assert where.startswith(cpu_name() + ", ") and where.endswith(("1 thread", "threads"))
    assert all(h["hardware"] == where for h in teacher["history"]) and {r["hardware"] for r in rows} == {where}
    assert (out / "config.yaml").is_file() and (out / "sparsity-0.5" / "kd" / "config.yaml").is_file()
    # an existing run is protected
    code, _, err = run_cli("run", "--out", out, *TINY_RUN)
    assert code == 2 and "--resume" in err


@pytest.mark.slow
def test_run_on_cifar10_files_with_magnitude(tmp_path, run_cli, cifar10_dir):
    out = tmp_path / "c10"
    code, _, err = run_cli("run", "--dataset", "cifar10", "--data-dir", cifar10_dir.parent, "--out", out,
                           "--method", "magnitude", "--sparsity", "0.8", "--retrain", "plain", "--arch", "resnet20",
                           "--teacher-arch", "resnet20", "--teacher-epochs", "1", "--student-epochs", "1",
                           "--retrain-epochs", "1", "--batch-size", "32")
    assert code == 0, err
    (row,) = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert row["method"] == "magnitude" and row["regime"] == "plain" and row["dataset"] == "cifar10"


@pytest.mark.slow
def test_train_then_prune_with_each_method(tmp_path, run_cli):
    code, _, err = run_cli("train", "--arch", "resnet20", "--epochs", "2", "--batch-size", "128", "--out", tmp_path / "t")
    assert code == 0, err
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["top1"] > 30 and len(metrics["history"]) == 2
    for method in ("magnitude", "random", "teacher-guided"):
        extra = ["--teacher-checkpoint", tmp_path / "t", "--teacher-arch", "resnet20"] if method == "teacher-guided" else []
        out = tmp_path / f"p-{method}"
        code, _, err = run_cli("prune", "--checkpoint", tmp_path / "t" / "model.safetensors", "--arch", "resnet20",
                               "--method", method, "--sparsity", "0.7", "--score-batches", "2", "--out", out, *extra)
        assert code == 0, err
        m = json.loads((out / "metrics.json").read_text())
        assert m["achieved_sparsity"] == pytest.approx(0.7, abs=1e-5)
        state = load_file(str(out / "model.safetensors"))
        zeros = sum(int((state[k] == 0).sum()) for k in load_file(str(out / "masks.safetensors")))
        assert zeros == m["sparsity"]["prunable_zeros"]


@pytest.mark.parametrize("args, message", [
    (["run", "--dataset", "cifar10", "--data-dir", "{tmp}/nope"], "no cifar-10-batches-py"),
    (["run", "--dataset", "cifar10"], "needs --data-dir"),
    (["run", "--sparsity", "0.5,1.5"], "strictly between 0 and 1"),
    (["run", "--sparsity", "0"], "strictly between 0 and 1"),
    (["run", "--sparsity", "nan"], "strictly between 0 and 1, got nan"),
    (["run", "--alpha", "nan"], "must be a finite number"),
    (["run", "--sparsity", "abc"], "expected float"),
    (["run", "--dataset", "imagenet"], "unknown dataset"),
    (["run", "--arch", "resnet99"], "unknown architecture"),
    (["run", "--method", "oracle"], "unknown method"),
    (["run", "--retrain", "sometimes"], "expected one of"),
    (["run", "--no-such-flag"], "unrecognized arguments"),
    (["run", "--teacher-checkpoint", "{tmp}/missing.safetensors"], "checkpoint not found"),
    (["prune", "--sparsity", "0.5"], "needs --checkpoint"),
    (["run", "--config", "{tmp}/bad.yaml"], "unknown key 'sparsityy'"),
    (["run", "--config", "{tmp}/badtype.yaml"], "expected int"),
    (["run", "--config", "{tmp}/notyaml.yaml"], "not valid YAML"),
    (["run", "--out", "{tmp}/afile"], "not a folder"),
    (["run", "--method", "imp", "--student-checkpoint", "{tmp}/afile"], "which imp does not use"),  # not ignored
    # own heads keep the 640-weight head dense: COLT's rounds would never reach 99.8% (they once went on forever)
    (["run", "--method", "colt", "--sparsity", "0.9,0.998"], "reaches at most 99.76% sparsity on this model"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, run_cli, args, message):
    (tmp_path / "bad.yaml").write_text("sparsityy: [0.5]\n")
    (tmp_path / "badtype.yaml").write_text("teacher_epochs: many\n")
    (tmp_path / "notyaml.yaml").write_text("a: [1,\n")
    (tmp_path / "afile").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    code, stdout, err = run_cli(*argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_checkpoint_of_another_arch_or_class_count_is_refused(tmp_path, run_cli):
    from safetensors.torch import save_file

    save_file(create_model("resnet32", 10, 1).state_dict(), str(tmp_path / "r32.safetensors"))
    save_file(create_model("resnet20", 100, 1).state_dict(), str(tmp_path / "r20c100.safetensors"))
    for ckpt, msg in (("r32.safetensors", "unexpected keys"), ("r20c100.safetensors", "fc.weight has shape (100, 64)")):
        code, _, err = run_cli("prune", "--checkpoint", tmp_path / ckpt, "--arch", "resnet20", "--method", "magnitude",
                               "--out", tmp_path / "out")
        assert code == 2 and "does not match resnet20 with 10 classes" in err and msg in err
        assert not (tmp_path / "out").exists()


def test_yaml_config_and_flag_precedence(tmp_path):
    from kdprune.experiments.config import RunConfig, build_config

    (tmp_path / "c.yaml").write_text("sparsity: [0.5, 0.9]\nteacher-epochs: 3\nalpha: 0.5\n")
    cfg = build_config(RunConfig, {"alpha": "0.7"}, str(tmp_path / "c.yaml"))
    assert cfg.sparsity == [0.5, 0.9] and cfg.teacher_epochs == 3 and cfg.alpha == 0.7


def test_models_and_methods_listings(run_cli):
    code, out, _ = run_cli("models")
    assert code == 0 and all(n in out for n in ("resnet18", "resnet56", "vgg16"))
    code, out, _ = run_cli("methods")
    assert code == 0 and all(n in out for n in ("teacher-guided", "magnitude", "random"))


def test_run_with_mismatched_teacher_checkpoint_writes_nothing(tmp_path, run_cli):
    from safetensors.torch import save_file

    save_file(create_model("resnet20", 10, 1).state_dict(), str(tmp_path / "t.safetensors"))
    code, _, err = run_cli("run", "--teacher-checkpoint", tmp_path / "t.safetensors", "--teacher-arch", "resnet56",
                           "--out", tmp_path / "out")
    assert code == 2 and "does not match resnet56" in err and not (tmp_path / "out").exists()


def test_resume_accepts_a_run_written_before_an_option_existed(tmp_path):
    """A run folder from before an option existed resumes while the option holds its neutral value (the
    behaviour the old run had) and is refused once the option changes what the run does."""
    from dataclasses import replace

    import yaml

    from kdprune.errors import UserError
    from kdprune.experiments.config import RunConfig
    from kdprune.experiments.outdir import prepare_out

    cfg = RunConfig(out=str(tmp_path / "r"))
    prepare_out(cfg, "run")
    saved = tmp_path / "r" / "config.yaml"
    old = yaml.safe_load(saved.read_text())
    del old["structure"], old["layer_floor"]  # as written by a version without these options
    saved.write_text(yaml.safe_dump(old))
    prepare_out(replace(cfg, resume=True), "run")
    with pytest.raises(UserError, match="layer_floor was 0.0, now 0.05"):
        prepare_out(replace(cfg, resume=True, layer_floor=0.05), "run")
    with pytest.raises(UserError, match="seed was 0, now 1"):
        prepare_out(replace(cfg, resume=True, seed=1), "run")


def test_threads_is_taken_before_or_after_the_command(tmp_path, run_cli):
    code, out, err = run_cli("methods", "--threads", "1")
    assert code == 0 and "teacher-guided" in out, err
    for args in (["--threads", "0", "run"], ["run", "--threads", "0"]):
        code, _, err = run_cli(*args, "--out", tmp_path / "x")
        assert code == 2 and "--threads must be at least 1" in err and not (tmp_path / "x").exists(), err


@pytest.mark.slow
def test_student_epochs_0_needs_no_rewind_option_except_for_imp(tmp_path, run_cli):
    """--rewind-epoch is IMP's: other recipes take --student-epochs 0 (e.g. a pre-trained student) as it is."""
    code, out, err = run_cli("--threads", "1", "run", "--student-epochs", "0", "--method", "snip", "--sparsity",
                             "0.5", "--retrain", "plain", "--score-batches", "1", "--out", tmp_path / "m")
    assert code == 0, err
    assert not list((tmp_path / "m" / "dense-ce").glob("rewind-*"))  # no epoch 1, so no rewind point
    code, _, err = run_cli("run", "--student-epochs", "0", "--method", "imp", "--out", tmp_path / "i")
    assert code == 2 and "rewind_epoch: must lie in [0, student_epochs=0], got 1" in err
    assert not (tmp_path / "i").exists()


def test_a_layer_floor_that_no_level_can_keep_stops_the_run_before_anything_is_written(tmp_path, run_cli):
    """Checked on the student's layer sizes at every level (it once stopped the run at the first level that did
    not fit, after the teacher, the student and the levels before it had trained)."""
    code, _, err = run_cli("run", "--layer-floor", "0.5", "--sparsity", "0.5,0.9", "--out", tmp_path / "r")
    assert code == 2 and "layer_floor 0.5 keeps 135,304 weights, more than sparsity 0.9 leaves" in err
    assert not (tmp_path / "r").exists()
