"""The Python API on models outside the registry and on torch DataLoaders, and the defects it fixed."""

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import kdprune
from kdprune.errors import UserError
from kdprune.pruning import MaskSet, compute_scores, prunable_parameters

ROOT = Path(__file__).resolve().parents[1]


def _digits(n_train=256, n_test=128):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    return (x[:n_train], y[:n_train]), (x[n_train:n_train + n_test], y[n_train:n_train + n_test])


def _cnn(width=16, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1, groups=width), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


@pytest.fixture
def data():
    (tx, ty), (vx, vy) = _digits()
    train = DataLoader(TensorDataset(tx, ty), batch_size=64, shuffle=False)
    test = DataLoader(TensorDataset(vx, vy), batch_size=64)
    return train, test


@pytest.mark.slow
def test_example_script_runs(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "own_model.py"), "--out", str(tmp_path), "--epochs", "1"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "error::FutureWarning"})
    assert r.returncode == 0, r.stderr
    assert "pruned to 80.00%" in r.stdout and "ONNX Runtime vs PyTorch max |diff|" in r.stdout
    for name in ("student.safetensors", "student.sparse.safetensors", "student.onnx"):
        assert (tmp_path / name).is_file()
    assert "distill: epoch 1/1" in r.stderr  # progress lines when stderr is not a terminal


@pytest.mark.slow
def test_readme_python_example_runs_as_written(tmp_path):
    text = (ROOT / "README.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert "kdprune.prune(" in code and "stats=train" in code
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "at 90.00% sparsity" in r.stdout and (tmp_path / "student.onnx").is_file()


@pytest.mark.slow
def test_dataloader_through_score_retrain_and_evaluate(data):
    train, test = data
    student, teacher = _cnn(seed=1), _cnn(width=24, seed=2)
    batches = [(x, y) for x, y in train]
    from_loader = kdprune.score(student, train, teacher=teacher)
    from_list = kdprune.score(student, batches, teacher=teacher)
    assert all(torch.equal(from_loader[k], from_list[k]) for k in from_loader)
    masks = kdprune.mask(from_loader, 0.7)
    r = kdprune.retrain(student, masks, train, epochs=2, test_data=test, teacher=teacher, lr=0.05)
    assert r["sparsity"] == pytest.approx(0.7, abs=1e-3) and len(r["history"]) == 2
    for name, m in masks.masks.items():
        assert torch.count_nonzero(dict(student.named_parameters())[name][~m]) == 0
    ev = kdprune.evaluate(student, test)
    assert ev["top1"] == pytest.approx(r["top1"]) and 0 < ev["top1"] <= 100


def test_prune_recipe_in_one_call(data):
    train, test = data
    student, teacher = _cnn(seed=3), _cnn(width=24, seed=4)
    r = kdprune.prune(student, teacher, train, 0.5, test_data=test, distill_epochs=2, epochs=1, lr=0.05)
    assert r.metrics["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert {"dense_top1", "pruned_top1", "top1"} <= set(r.metrics)
    names = {n for n, p in prunable_parameters(student).items()}
    assert set(r.masks.masks) == names  # depthwise conv and the classifier included


def test_scoring_puts_a_train_mode_teacher_in_eval_and_leaves_its_statistics(data):
    train, _ = data
    student, teacher = _cnn(seed=5), _cnn(width=24, seed=6)
    kdprune.distill(teacher, _cnn(width=24, seed=7), train, epochs=1, lr=0.05)  # BN statistics that mean something
    reference = copy.deepcopy(teacher).eval()
    teacher.train()  # as it comes out of load_state_dict
    buffers = {k: v.clone() for k, v in teacher.named_buffers()}
    got = kdprune.mask(kdprune.score(student, train, teacher=teacher), 0.9)
    want = kdprune.mask(kdprune.score(student, train, teacher=reference), 0.9)
    assert got.digest() == want.digest()
    assert all(torch.equal(buffers[k], v) for k, v in teacher.named_buffers())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_wrong_keywords_and_unbound_masks_are_errors(data):
    train, _ = data
    model = _cnn()
    params = prunable_parameters(model)
    with pytest.raises(UserError, match="takes no option 'score_form'"):
        compute_scores("magnitude", model, params, score_form="grad")
    with pytest.raises(UserError, match="score\\(\\) got an unexpected keyword 'score_form'"):
        kdprune.score(model, train, teacher=_cnn(seed=9), score_form="grad")
    with pytest.raises(UserError, match="criterion 'teacher-guided' takes no option 'seed' \\(it takes: form\\)"):
        kdprune.score(model, train, teacher=_cnn(seed=9), seed=3)
    with pytest.raises(TypeError):
        kdprune.mask({}, 0.5, scpoe="layerwise")
    with pytest.raises(UserError, match="input_shape"):
        compute_scores("synflow", model, params)
    # with data at hand the API infers the shape
    assert set(kdprune.score(model, train, criterion="synflow")) == set(params)
    with pytest.raises(UserError, match="synflow_iterations sets the rounds of synflow's masks.*kdprune.prune"):
        kdprune.score(model, train, criterion="synflow", synflow_iterations=2)  # once silently ignored
    masks = MaskSet({n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()})
    with pytest.raises(RuntimeError, match="bind"):
        masks.apply_()
    with pytest.raises(UserError, match="one-shot iterator"):
        kdprune.retrain(model, masks, iter(train), epochs=1)


@pytest.mark.slow
def test_export_from_memory_dense_sparse_onnx(tmp_path, data):
    from kdprune.deploy.sparse_format import load_sparse

    train, _ = data
    model = _cnn(width=64)
    masks = kdprune.mask(kdprune.score(model, criterion="magnitude"), 0.9).bind(model)
    masks.apply_()
    d = kdprune.export(model, tmp_path / "m.safetensors", format="dense")
    s = kdprune.export(model, tmp_path / "m.sparse.safetensors", format="sparse")
    o = kdprune.export(model, tmp_path / "m.onnx", format="onnx", input_shape=(1, 8, 8))
    assert s["bytes"] < d["bytes"] and o["onnx_max_abs_diff"] <= 1e-4
    back = load_sparse(tmp_path / "m.sparse.safetensors")
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    with pytest.raises(UserError, match="input shape"):
        kdprune.export(model, tmp_path / "x.onnx", format="onnx")


def test_missing_onnx_names_the_packages(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_onnx(name, *a, **k):
        if name in ("onnx", "onnxruntime"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(UserError, match=r"pip install onnx onnxruntime onnxscript .*pip install -e '\.\[export\]'"):
        kdprune.export(_cnn(), tmp_path / "m.onnx", format="onnx", input_shape=(1, 8, 8))


def test_ca_kld_sample_std_option():
    from kdprune.losses import ca_kld, normalize_logits

    z = torch.randn(5, 10, generator=torch.Generator().manual_seed(0))
    t = torch.randn(5, 10, generator=torch.Generator().manual_seed(1))
    n_pop, n_smp = normalize_logits(z), normalize_logits(z, std="sample")
    hand = (z - z.mean(1, keepdim=True)) / (((z - z.mean(1, keepdim=True)) ** 2).sum(1, keepdim=True) / 9).sqrt()
    assert torch.allclose(n_smp, hand, atol=1e-6)
    assert torch.allclose(n_smp * (10 / 9) ** 0.5, n_pop, atol=1e-5)  # the two differ by sqrt(C/(C-1))
    assert not torch.isclose(ca_kld(z, t), ca_kld(z, t, std="sample"))


def test_kd_std_flag_is_validated_and_saved(tmp_path, run_cli):
    code, _, err = run_cli("run", "--kd-std", "biased", "--out", tmp_path / "x")
    assert code == 2 and "kd_std: expected one of population, sample" in err
    from kdprune.experiments.config import RunConfig, build_config

    assert build_config(RunConfig, {"kd_std": "sample"}).kd_std == "sample"


def test_thread_policy(monkeypatch):
    from kdprune import threads

    assert threads.choose_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.choose_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "idle_cores", lambda: 0.2)  # another process keeps every core busy
    assert threads.auto_threads() == 1
    monkeypatch.setattr(threads, "idle_cores", lambda: 64.0)
    assert threads.auto_threads() == threads.usable_cores()


@pytest.mark.slow
def test_non_tty_run_prints_a_line_per_epoch(tmp_path, run_cli):
    from conftest import TINY_RUN

    code, _, err = run_cli("run", "--out", tmp_path / "r", "--sparsity", "0.5", "--retrain", "plain", *TINY_RUN)
    assert code == 0, err
    lines = err.splitlines()
    assert any(l.startswith("kdprune run: digits on cpu, ") for l in lines)
    for stage in ("teacher resnet20: epoch 1/2", "teacher resnet20: epoch 2/2", "student resnet20 (KD): epoch 2/2",
                  "retrain 0.5 plain: epoch 1/1"):
        assert any(l.startswith(stage) and "top-1" in l for l in lines), stage


def test_bar_on_a_terminal_keeps_its_last_state():
    import io

    from kdprune.train.progress import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    p = Progress("teacher", 2, 3, stream=out)
    p.start(0)
    for e in (1, 2):
        for _ in range(3):
            p.step()
        p.epoch_end(e, {"train_loss": 0.5, "test_top1": 90.0, "seconds": 1.0})
    p.close()
    text = out.getvalue()
    assert "teacher" in text and "6/6" in text and "epoch 2/2" in text and text.endswith("\n")


@pytest.mark.slow
def test_inspect_json_into_a_closed_pipe_is_quiet(tmp_path):
    model = _cnn()
    from kdprune.io import save_tensors

    save_tensors(tmp_path / "model.safetensors", model.state_dict())
    cmd = (f"{sys.executable} -m kdprune inspect {tmp_path / 'model.safetensors'} --json | head -c 10 >/dev/null; "
           "echo ${PIPESTATUS[0]}")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr
    assert r.stdout.strip() == "0"


def test_fp16_sparse_export_keeps_the_fp32_file(tmp_path, run_cli):
    from kdprune.io import save_tensors

    save_tensors(tmp_path / "model.safetensors", _cnn().state_dict())
    assert run_cli("export", tmp_path, "--format", "sparse")[0] == 0
    assert run_cli("export", tmp_path, "--format", "sparse", "--fp16")[0] == 0
    assert (tmp_path / "model.sparse.safetensors").is_file() and (tmp_path / "model.sparse-fp16.safetensors").is_file()
    assert (tmp_path / "model.sparse-fp16.safetensors").stat().st_size < (tmp_path / "model.sparse.safetensors").stat().st_size


def test_api_mask_options_and_progressive(data):
    train, _ = data
    student, teacher = _cnn(seed=11), _cnn(width=24, seed=12)
    scores = kdprune.score(student, train, teacher=teacher)
    one = kdprune.progressive_mask(student, train, 0.8, rounds=1, teacher=teacher)
    assert one.digest() == kdprune.mask(scores, 0.8).digest()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    prog = kdprune.progressive_mask(student, train, 0.8, rounds=3, teacher=teacher, layer_floor=0.05)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # the model is left as it was
    assert all(int(m.sum()) >= math.ceil(0.05 * m.numel()) for m in prog.masks.values())
    n = sum(m.numel() for m in prog.masks.values())
    assert sum(int((~m).sum()) for m in prog.masks.values()) == round(0.8 * n)
    normed = kdprune.mask(scores, 0.8, score_norm="l2")
    assert normed.density() == pytest.approx(0.2, abs=1e-3)
    # l2 divides each layer's scores by their norm before the one global threshold: the layers keep other
    # fractions than without it, and exactly those of the hand-normalised scores
    by_hand = kdprune.mask({k: v.float() / v.float().norm() for k, v in scores.items()}, 0.8)
    assert normed.digest() == by_hand.digest() != kdprune.mask(scores, 0.8).digest()
    kept = {k: float(m.float().mean()) for k, m in normed.masks.items()}
    assert kept != {k: float(m.float().mean()) for k, m in kdprune.mask(scores, 0.8).masks.items()}
    with pytest.raises(UserError, match="score_norm"):
        kdprune.mask(scores, 0.8, score_norm="max")


def test_tensor_loader_takes_float_images_and_defaults_its_statistics():
    from kdprune.data import TensorLoader

    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    a = TensorLoader(u8, y, 16)  # mean/std of the images themselves
    b = TensorLoader(u8.float() / 255.0, y, 16, mean=a.mean.flatten().div(255).tolist(),
                     std=(1 / (a.inv_std.flatten() * 255)).tolist())
    xa, xb = next(iter(a))[0], next(iter(b))[0]
    assert torch.allclose(xa, xb, atol=1e-5)
    assert abs(float(xa.mean())) < 0.2 and abs(float(torch.cat([x for x, _ in a]).std()) - 1) < 0.05
    with pytest.raises(UserError, match="N, C, H, W"):
        TensorLoader(torch.zeros(4, 8, 8), y[:4], 2)


def test_prune_with_synflow_builds_the_iterative_masks_of_the_cli(data):
    """kdprune.prune(criterion="synflow") prunes over synflow_iterations rounds, as `kdprune run --method synflow`
    does (masks_for): not one threshold over one round's scores."""
    from kdprune.pruning.criteria import CRITERIA

    train, _ = data
    model = _cnn()
    params = prunable_parameters(model)
    want = {it: MaskSet(CRITERIA["synflow"].masks_for(model, params, None, 0.95, "global", input_shape=(1, 8, 8),
                                                      synflow_iterations=it)) for it in (1, 20)}
    assert want[1].digest() != want[20].digest()  # the rounds matter at this sparsity
    for it in (1, 20):
        got = kdprune.prune(_cnn(), None, train, 0.95, criterion="synflow", retrain="plain", epochs=0,
                            synflow_iterations=it, progress=False)
        assert got.masks.digest() == want[it].digest()
    with pytest.raises(UserError, match="prunes over its own rounds"):
        kdprune.prune(_cnn(), None, train, 0.9, criterion="synflow", retrain="plain", epochs=0, layer_floor=0.01)
