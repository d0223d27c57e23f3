"""``--arch module:factory``: the user's own model, and the user's own trained teacher as a state_dict file."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY_RUN
from kdprune.errors import UserError
from kdprune.models import create_model, list_models, model_info
from kdprune.pruning import prunable_parameters

OWN = "own_models:tiny_cnn"


@pytest.fixture(autouse=True)
def in_tests_dir(monkeypatch):
    """Run from tests/ (holding own_models.py): the current folder being importable is the feature under test.
    sys.path is restored afterwards (kdprune prepends the current folder to it)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(Path(__file__).parent)


def _run(run_cli, out, *extra):
    return run_cli("run", "--arch", OWN, *TINY_RUN, "--teacher-arch", OWN, "--sparsity", "0.5", "--retrain", "plain",
                   "--out", out, *extra)


def _rows(out):
    return [json.loads(line) for line in (Path(out) / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_own_model_runs_prunes_exactly_half_and_exports_to_onnx(tmp_path, run_cli):
    code, out, err = _run(run_cli, tmp_path / "run")
    assert code == 0, err
    assert f"teacher {OWN}: epoch 2/2" in err and f"student {OWN} (KD): epoch 2/2" in err
    [row] = _rows(tmp_path / "run")
    assert row["arch"] == row["teacher_arch"] == OWN
    prunable = sum(p.numel() for p in prunable_parameters(create_model(OWN, 10, 1)).values())
    assert prunable == 8 * 1 * 9 + 10 * 8  # the conv and linear weights
    assert row["achieved_sparsity"] == 0.5
    assert row["total_params"] - row["nonzero_params"] == prunable // 2
    # export reads the architecture from the run's config.yaml
    plain = tmp_path / "run" / "sparsity-0.5" / "plain"
    code, out, err = run_cli("export", plain, "--format", "onnx")
    assert code == 0, err
    assert "ONNX Runtime vs PyTorch max |diff|" in out and (plain / "model.onnx").stat().st_size > 0
    code, out, err = run_cli("inspect", plain, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["arch"] == OWN and r["prunable_params"] == prunable and r["prunable_nonzero"] == prunable // 2
    assert r["dense_macs"] > r["nonzero_macs"] > 0


@pytest.fixture
def trained_teacher(tmp_path, run_cli):
    """A teacher trained by ``kdprune train --arch own_models:tiny_cnn`` and the top-1 it reached."""
    code, _, err = run_cli("train", "--arch", OWN, "--epochs", "1", "--batch-size", "128", "--out", tmp_path / "t")
    assert code == 0, err
    model = create_model(OWN, 10, 1)
    model.load_state_dict(load_file(str(tmp_path / "t" / "model.safetensors")))
    top1 = json.loads((tmp_path / "t" / "metrics.json").read_text())["top1"]
    return model, top1


def test_user_teacher_as_a_state_dict_or_safetensors_file(tmp_path, run_cli, trained_teacher):
    model, top1 = trained_teacher
    files = {"t.pt": model.state_dict(), "t.safetensors": model.state_dict(),
             "ddp.pth": {"module." + k: v for k, v in model.state_dict().items()}}  # saved from a DDP wrapper
    for name, state in files.items():
        path = tmp_path / name
        if name.endswith(".safetensors"):
            save_file(state, str(path))
        else:
            torch.save(state, path)
        out = tmp_path / f"run-{name}"
        code, _, err = _run(run_cli, out, "--teacher-checkpoint", path)
        assert code == 0, (name, err)
        assert f"teacher {OWN}: epoch" not in err  # loaded, not trained
        [row] = _rows(out)
        assert row["teacher_top1"] == pytest.approx(top1) and row["achieved_sparsity"] == 0.5
    # the same file as the model to prune, and as the teacher of `kdprune prune`
    code, _, err = run_cli("prune", "--arch", OWN, "--checkpoint", tmp_path / "t.pt", "--teacher-arch", OWN,
                           "--teacher-checkpoint", tmp_path / "t.safetensors", "--sparsity", "0.5",
                           "--score-batches", "2", "--batch-size", "128", "--out", tmp_path / "pruned")
    assert code == 0, err
    pruned = load_file(str(tmp_path / "pruned" / "model.safetensors"))
    zeros = sum(int((pruned[k] == 0).sum()) for k in ("0.weight", "5.weight"))
    assert zeros == (8 * 9 + 10 * 8) // 2


def test_teacher_checkpoints_that_do_not_fit_are_one_line_errors(tmp_path, run_cli):
    def fails(path, *expected):
        code, _, err = _run(run_cli, tmp_path / "run", "--teacher-checkpoint", path)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "epoch" not in err and not (tmp_path / "run").exists()  # checked before anything is written
        for e in expected:
            assert e in err, (e, err)

    wrong_classes = tmp_path / "five.pt"
    torch.save(create_model(OWN, 5, 1).state_dict(), wrong_classes)
    fails(wrong_classes, str(wrong_classes), f"does not match {OWN} with 10 classes",
          "5.weight has shape (5, 8) in the checkpoint, (10, 8) in the model")
    wrong_arch = tmp_path / "resnet20.safetensors"
    save_file(create_model("resnet20", 10, 1).state_dict(), str(wrong_arch))
    fails(wrong_arch, str(wrong_arch), f"does not match {OWN} with 10 classes", "missing keys (e.g. 0.weight)",
          "unexpected keys (e.g. bn1.")  # safetensors sorts its keys
    whole_model = tmp_path / "model.pt"  # a pickled nn.Module: never unpickled
    torch.save(create_model(OWN, 10, 1), whole_model)
    fails(whole_model, str(whole_model), "holds a pickled torch.nn.modules.container.Sequential", "save a state_dict")


@pytest.mark.parametrize("args, expected", [
    (["--arch", "nosuchmod:f"], "architecture 'nosuchmod:f': cannot import module 'nosuchmod' "
                                "(No module named 'nosuchmod')"),
    (["--arch", "own_models:nosuch"],
     "architecture 'own_models:nosuch': module 'own_models' has no attribute 'nosuch'"),
    (["--teacher-arch", "own_models:nosuch"], "module 'own_models' has no attribute 'nosuch'"),
    (["--arch", "own_models:CONSTANT"], "architecture 'own_models:CONSTANT': CONSTANT is not callable (type int)"),
    (["--arch", "own_models:"], "expected module:factory"),
    (["--arch", "resnet99"], "unknown architecture 'resnet99'; choose one of: resnet18,"),
])
def test_bad_specs_fail_before_anything_runs(tmp_path, run_cli, args, expected):
    code, _, err = run_cli("run", *TINY_RUN, *args, "--out", tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert expected in err
    assert "epoch" not in err and not (tmp_path / "out").exists()  # config validation, no folder written
    if "resnet99" in args:
        assert err.strip().endswith("or module:factory for your own model")


@pytest.mark.parametrize("spec, expected", [
    ("own_models:not_a_module_factory", "own_models:not_a_module_factory': not_a_module_factory returned dict, "
                                        "not an nn.Module"),
    ("own_models:raising_factory", "calling raising_factory(num_classes=10, in_channels=1) raised "
                                   "ValueError: no model for 10 classes"),
])
def test_factories_that_fail_when_called(tmp_path, run_cli, spec, expected):
    """Called once the data says the class and channel counts, before anything is written or trained."""
    for student, teacher in ((spec, spec), (spec, "resnet20")):  # a broken student alone: the teacher waits too
        code, _, err = run_cli("run", "--arch", student, *TINY_RUN, "--teacher-arch", teacher,
                               "--out", tmp_path / "out")
        assert code == 2 and err.strip().splitlines() == [err.strip()] and err.startswith("kdprune: error:"), err
        assert expected in err and "epoch" not in err and not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="not an nn.Module" if "not_a" in spec else "ValueError"):
        create_model(spec, 10, 1)


def test_the_signature_decides_the_arguments_and_models_lists_only_registered(tmp_path, run_cli):
    info = model_info(OWN)
    assert (info.name, info.family, info.description) == (OWN, "user", f"user model {OWN}")
    assert create_model(OWN, 7, 2)[0].in_channels == 2 and create_model(OWN, 7, 2)[-1].out_features == 7
    gray = create_model("own_models:gray_cnn", 4, 3)  # takes num_classes only: no in_channels passed
    assert gray[0].in_channels == 1 and gray[-1].out_features == 4
    kw = create_model("own_models:any_kwargs", 3, 2)  # **kwargs takes both
    assert kw[0].in_channels == 2 and kw[-1].out_features == 3
    assert OWN not in list_models()
    code, out, _ = run_cli("models")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == list_models()
    # export/inspect take the same specs
    weights = tmp_path / "w.safetensors"
    save_file(create_model(OWN, 10, 1).state_dict(), str(weights))
    code, out, err = run_cli("inspect", weights, "--arch", OWN, "--image-size", "8", "--json")
    assert code == 0 and json.loads(out)["dense_macs"] > 0, err
    code, _, err = run_cli("inspect", weights, "--arch", "nosuchmod:f", "--image-size", "8")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot import module 'nosuchmod'" in err


def test_the_current_folder_is_importable(tmp_path, monkeypatch):
    (tmp_path / "mymodels_cwd_test.py").write_text(
        "import torch.nn as nn\n\ndef net(num_classes, in_channels):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "mymodels_cwd_test", raising=False)
    model = create_model("mymodels_cwd_test:net", 10, 1)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert sys.path[0] == str(tmp_path)
    monkeypatch.delitem(sys.modules, "mymodels_cwd_test", raising=False)


def test_a_model_that_does_not_fit_the_data_is_named_before_training(tmp_path, run_cli):
    code, _, err = run_cli("run", "--arch", "own_models:ignores_in_channels", *TINY_RUN, "--out", tmp_path / "out")
    assert code == 2 and "student (own_models:ignores_in_channels): its first convolution takes 3 input channels" in err
    assert "epoch" not in err and not (tmp_path / "out").exists()
