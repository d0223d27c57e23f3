"""A new user's mistakes end early, in one line that names the argument or the model at fault: before any
training starts (no epoch has run, the weights are untouched), never as a raw torch error or a silent result."""

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import kdprune
from kdprune.errors import UserError


def _digits(n=192):
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0, torch.tensor(d.target[:n])


def _cnn(outputs=10, in_channels=1, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, outputs))


@pytest.fixture
def loader():
    x, y = _digits()
    return DataLoader(TensorDataset(x, y), batch_size=64)


def _untouched(model, before):
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kwargs, message", [
    (dict(sparsity=1.0), "sparsity must lie strictly between 0 and 1, got 1.0"),
    (dict(sparsity=0.9, epoch=1), r"prune\(\) got an unexpected keyword 'epoch'; did you mean 'epochs'"),
    (dict(sparsity=0.9, seed=1), "criterion 'teacher-guided' takes no option 'seed'"),
    (dict(sparsity=0.9, retrain="kdd"), "retrain: expected one of kd, plain, got 'kdd'"),
    (dict(sparsity=0.9, retrain_schedule="rewind"), "retrain_schedule: expected one of finetune, lr-rewind, restart"),
    (dict(sparsity=0.9, retrain_schedule="lr-rewind", distill_epochs=0), "lr-rewind' needs train_epochs"),
    (dict(sparsity=0.9, scope="local"), "scope: expected one of global, layerwise"),
    (dict(sparsity=0.9, score_norm="l3"), "score_norm: expected one of none, l2, mean"),
    (dict(sparsity=0.9, alpha=1.5), "alpha must lie in"),
    (dict(sparsity=0.9, kd_loss="kl"), "kd_loss: expected one of ca-kld, kd, got 'kl'"),
    (dict(sparsity=0.9, criterion="snipp"), "snipp"),
    (dict(sparsity=0.9, epochs=-1), "epochs: expected a whole number >= 0"),
    (dict(sparsity=0.9, layer_floor=0.2), r"layer_floor 0.2 keeps 31 weights, more than sparsity 0.9 leaves"),
    (dict(sparsity=0.9, layer_floor=0.2, scope="layerwise"), "layer_floor 0.2 is above the density 0.1"),
])
def test_prune_checks_every_argument_before_it_trains(loader, capsys, kwargs, message):
    student, teacher = _cnn(), _cnn(seed=1)
    before = _snapshot(student)
    with pytest.raises(UserError, match=message):
        kdprune.prune(student, teacher, loader, **{"distill_epochs": 2, **kwargs})
    assert "epoch" not in capsys.readouterr().err  # no training line was printed
    assert _untouched(student, before)


def test_a_misspelt_keyword_is_also_a_type_error_and_names_its_close_matches(loader):
    with pytest.raises(TypeError, match=r"distill\(\) got an unexpected keyword 'epoch'; did you mean 'epochs'"):
        kdprune.distill(_cnn(), _cnn(seed=1), loader, epoch=1)
    with pytest.raises(TypeError, match=r"retrain\(\) got an unexpected keyword 'test_loader'"):
        kdprune.retrain(_cnn(), None, loader, epochs=1, test_loader=loader)


@pytest.mark.parametrize("case, message", [
    ("student 5 outputs", "student has 5 outputs but train_data has label [5-9]"),
    ("teacher 100 outputs", "the models disagree on the number of classes: student has 10 outputs, teacher has 100"),
    ("dict batches", "train_data yields dict batches"),
    ("uint8 inputs", "train_data: the inputs are uint8; models take float images"),
    ("rgb data, 1-channel model", "student: its first convolution takes 1 input channels, train_data has 3"),
    ("float labels", "the labels must be a 1-d integer tensor"),
    ("broken forward", "student fails on a batch of train_data"),
])
def test_one_batch_goes_through_student_and_teacher_first(case, message, capsys):
    x, y = _digits()
    student, teacher = _cnn(), _cnn(seed=1)
    data = DataLoader(TensorDataset(x, y), batch_size=64)
    if case == "student 5 outputs":
        student = _cnn(outputs=5)
    elif case == "teacher 100 outputs":
        teacher = _cnn(outputs=100)
    elif case == "dict batches":
        data = [{"image": x[:64], "label": y[:64]}]
    elif case == "uint8 inputs":
        data = DataLoader(TensorDataset((x * 255).to(torch.uint8), y), batch_size=64)
    elif case == "rgb data, 1-channel model":
        data = DataLoader(TensorDataset(x.expand(-1, 3, -1, -1).contiguous(), y), batch_size=64)
    elif case == "float labels":
        data = DataLoader(TensorDataset(x, y.float()), batch_size=64)
    elif case == "broken forward":
        student = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(3, 10))  # wrong flattened size
    before = _snapshot(student)
    with pytest.raises(UserError, match=message) as e:
        kdprune.prune(student, teacher, data, 0.5, distill_epochs=1, epochs=1)
    assert "\n" not in str(e.value)
    assert "epoch" not in capsys.readouterr().err and _untouched(student, before)


def test_prune_channels_checks_its_arguments_before_scoring(loader):
    for kwargs, message in [(dict(target_macs="1x"), "above 1x"), (dict(target_macs=2, round_to=0), "round_to"),
                            (dict(target_macs=2, floor=1.0), "floor"), (dict(), "exactly one target"),
                            (dict(target_macs=2, criterion="l3"), "criterion: expected one of")]:
        with pytest.raises(UserError, match=message):
            kdprune.prune_channels(_cnn(), loader, teacher=_cnn(seed=1), **kwargs)


def test_the_api_retrains_on_the_clis_default_schedule():
    from kdprune.experiments.config import RunConfig, build_config
    from kdprune.methods.context import retrain_spec

    for overrides, api in [({}, kdprune.retrain_optim()),
                           ({"retrain_schedule": "finetune"}, kdprune.retrain_optim("finetune")),
                           ({"retrain_schedule": "lr-rewind", "student_epochs": 10, "retrain_epochs": 4},
                            kdprune.retrain_optim("lr-rewind", epochs=4, train_epochs=10))]:
        cli = retrain_spec(build_config(RunConfig, overrides))
        assert (api.lr, api.schedule, api.start_fraction, api.momentum, api.weight_decay) == \
               (cli.lr, cli.schedule, cli.start_fraction, cli.momentum, cli.weight_decay), overrides
    assert RunConfig().retrain_schedule == "restart"
    import inspect

    for fn in (kdprune.prune, kdprune.retrain):
        assert inspect.signature(fn).parameters["retrain_schedule"].default == "restart"


def test_tensor_loader_is_exported_and_a_test_loader_takes_the_training_statistics():
    g = torch.Generator().manual_seed(0)
    train_x = torch.randint(0, 128, (64, 3, 8, 8), dtype=torch.uint8, generator=g)
    test_x = torch.randint(128, 256, (32, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.zeros(64, dtype=torch.long)
    train = kdprune.TensorLoader(train_x, y, 16, train=True)
    test = kdprune.TensorLoader(test_x, y[:32], 16, stats=train)
    assert test.stats == train.stats
    own = kdprune.TensorLoader(test_x, y[:32], 16)
    assert own.stats != train.stats  # what the snippet used to do: the test split's own statistics
    xb = next(iter(test))[0]
    mean = torch.tensor(train.stats[0]).view(1, 3, 1, 1) * 255
    std = torch.tensor(train.stats[1]).view(1, 3, 1, 1) * 255
    torch.testing.assert_close(xb, (test_x[:16].float() - mean) / std)
    with pytest.raises(UserError, match="not both"):
        kdprune.TensorLoader(test_x, y[:32], 16, stats=train, mean=[0.5] * 3, std=[0.2] * 3)


def test_yaml_errors_give_the_line_and_column(run_cli, tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("epochs: 2\n  lr: 0.1\n")
    code, _, err = run_cli("train", "--config", bad)
    assert code == 2 and f"{bad}:2:5: not valid YAML: mapping values are not allowed here" in err
    sweep = tmp_path / "s.yaml"
    sweep.write_text("out: x\ngrid:\n  seed: [0]\n base:\n  sparsity: [0.5]\n")
    code, _, err = run_cli("sweep", sweep, "--dry-run")
    assert code == 2 and f"{sweep}:4:2: not valid YAML" in err and "line 1" in err


def _nan_run(run_cli, tmp_path):
    out = tmp_path / "t"
    assert run_cli("train", "--epochs", "1", "--batch-size", "128", "--out", out)[0] == 0
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4000:] = b"\xff" * 4000  # overwritten in place: the last tensors' bytes become NaN
    weights.write_bytes(bytes(data))
    return out


def test_non_finite_weights_warn_in_inspect_and_stop_export(run_cli, tmp_path):
    out = _nan_run(run_cli, tmp_path)
    code, stdout, err = run_cli("inspect", out)
    assert code == 0 and "warning: NaN or infinite values in" in err and "warning: NaN" in stdout
    assert "layers.2.2.conv2.weight" in err  # the layer names (safetensors stores the tensors sorted by name)
    for fmt in ("onnx", "dense", "sparse"):
        code, _, err = run_cli("export", out, "--format", fmt)
        assert code == 2 and "refusing to export: NaN or infinite values" in err, fmt
    assert not list(out.glob("model.onnx")) and not list(out.glob("model.dense*"))


@pytest.mark.slow
def test_the_onnx_check_fails_on_a_nan_difference(tmp_path):
    class NaNOut(nn.Module):  # finite weights, NaN outputs in PyTorch and ONNX Runtime alike
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return torch.sqrt(self.fc(x.flatten(1)) * 0 - 1)

    with pytest.raises(UserError, match="differs from PyTorch by nan"):
        kdprune.export(NaNOut(), tmp_path / "m.onnx", format="onnx", input_shape=(1, 2, 2))
    assert not (tmp_path / "m.onnx").exists()
