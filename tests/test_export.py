import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from kdprune.deploy.sparse_format import load_sparse
from kdprune.models import create_model
from kdprune.pruning import MaskSet, global_masks, prunable_parameters


@pytest.fixture
def pruned_run(tmp_path):
    """A run folder holding a ResNet-20 (digits: 1 channel, 8x8) with exactly 90% of its weights zero."""
    torch.manual_seed(0)
    model = create_model("resnet20", 10, 1)
    params = prunable_parameters(model)
    MaskSet(global_masks({k: p.detach().abs() for k, p in params.items()}, 0.9)).bind(model).apply_()
    # every BN gets non-trivial statistics so the ONNX comparison means something
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    run = tmp_path / "run"
    run.mkdir()
    save_file(model.state_dict(), str(run / "model.safetensors"))
    (run / "metrics.json").write_text(json.dumps({"arch": "resnet20", "dataset": "digits"}))
    n = sum(p.numel() for p in params.values())
    return run, model.eval(), n


def test_inspect_counts_known_zeros(pruned_run, run_cli):
    run, model, n = pruned_run
    code, out, err = run_cli("inspect", run, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["prunable_params"] == n and r["prunable_nonzero"] == n - round(0.9 * n)
    # parameters only (BatchNorm's running statistics are buffers): the same count as the run's table
    assert r["total_params"] == sum(p.numel() for p in model.parameters()) == 272_186
    assert r["nonzero_params"] == sum(int(torch.count_nonzero(p)) for p in model.parameters())
    conv1 = next(l for l in r["layers"] if l["name"] == "conv1.weight")
    assert conv1["nonzero"] == int(torch.count_nonzero(model.conv1.weight))
    # MACs: the first conv runs at 8x8, its non-zero weights each do 64 MACs
    assert r["dense_macs"] > r["nonzero_macs"] > 0
    code, out, _ = run_cli("inspect", run)
    assert "global sparsity (conv + linear weights): 90.0000%" in out or "89.9999%" in out


def test_sparse_export_round_trip_and_size(pruned_run, run_cli):
    run, model, _ = pruned_run
    code, out, err = run_cli("export", run, "--format", "sparse")
    assert code == 0, err
    back = load_sparse(run / "model.sparse.safetensors")
    orig = load_file(str(run / "model.safetensors"))
    assert set(back) == set(orig) and all(torch.equal(back[k], orig[k]) for k in orig)
    ratio = (run / "model.sparse.safetensors").stat().st_size / (run / "model.safetensors").stat().st_size
    assert ratio <= 0.2
    assert f"{ratio:.3f} of the dense file" in out
    # fp16 is smaller still and close
    code, _, _ = run_cli("export", run, "--format", "sparse", "--fp16", "--output", run / "half.safetensors")
    half = load_sparse(run / "half.safetensors")
    assert (run / "half.safetensors").stat().st_size < (run / "model.sparse.safetensors").stat().st_size
    torch.testing.assert_close(half["fc.weight"], orig["fc.weight"], atol=1e-3, rtol=1e-3)
    # a sparse file inspects like the dense one
    code, out, _ = run_cli("inspect", run / "model.sparse.safetensors", "--arch", "resnet20", "--json")
    assert json.loads(out)["prunable_nonzero"] == int(sum(torch.count_nonzero(p) for p in prunable_parameters(model).values()))


def test_dense_export_loads_into_a_vanilla_model(pruned_run, run_cli):
    run, model, _ = pruned_run
    code, _, err = run_cli("export", run, "--format", "dense", "--output", run / "plain.safetensors")
    assert code == 0, err
    fresh = create_model("resnet20", 10, 1)
    fresh.load_state_dict(load_file(str(run / "plain.safetensors")))
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model(x))


@pytest.mark.slow
def test_onnx_export_matches_pytorch(pruned_run, run_cli):
    import onnxruntime as ort

    run, model, _ = pruned_run
    code, out, err = run_cli("export", run, "--format", "onnx")
    assert code == 0, err
    assert "(torch.export exporter)" in out  # onnxscript comes with the test extras: not the deprecated path
    # one self-contained file holding every weight (no side .data file, nothing temporary left behind)
    assert not [p.name for p in run.iterdir() if p.name.startswith(".") or p.name.endswith(".data")]
    assert (run / "model.onnx").stat().st_size > 0.9 * (run / "model.safetensors").stat().st_size
    sess = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 8, 8)
    got = torch.from_numpy(sess.run(None, {"images": x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), atol=1e-4, rtol=0)


def test_export_errors_are_one_line(tmp_path, run_cli):
    code, _, err = run_cli("export", tmp_path, "--format", "dense")
    assert code == 2 and "no weights at" in err
    (tmp_path / "x.pt").write_text("garbage")
    code, _, err = run_cli("inspect", tmp_path / "x.pt")
    assert code == 2 and len(err.strip().splitlines()) == 1
