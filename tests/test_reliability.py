"""Crash safety and hostile input: kill -9 then --resume, fuzzed configs, a full disk, bad data."""

import errno
import json
import os
import pickle
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from conftest import TINY_RUN, write_cifar10
from kdprune.errors import UserError
from kdprune.experiments.config import RunConfig, build_config

ARGS = ["run", *TINY_RUN, "--sparsity", "0.5,0.9", "--retrain-epochs", "3", "--student-epochs", "4"]


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "kdprune", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


STAGE_LINES = ("teacher resnet20: epoch 1/", "student resnet20 (KD): epoch 1/", "retrain 0.9 kd: epoch 1/")


@pytest.mark.slow
def test_kill_9_in_each_stage_then_resume_equals_uninterrupted(tmp_path):
    """Killed right after the first epoch of each stage in turn (told by the progress line the run prints then,
    not by polling for its checkpoint, which the stage deletes when it ends), resumed each time, the run ends
    equal to the uninterrupted reference."""
    ref = _cli(*ARGS, "--out", tmp_path / "ref")
    ref_out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0
    for n, stage_line in enumerate(STAGE_LINES):
        p = _cli(*ARGS, "--out", tmp_path / "run", *(["--resume"] if n else []))
        seen = []
        for line in p.stderr:  # one line per epoch when stderr is not a terminal
            seen.append(line)
            if line.startswith(stage_line):
                break
        assert seen and seen[-1].startswith(stage_line), "".join(seen[-5:])
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert p.returncode == -signal.SIGKILL
    again = _cli(*ARGS, "--out", tmp_path / "run", "--resume")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    key = lambda r: (r["target_sparsity"], r["regime"])
    got = sorted((key(r), r["top1"]) for r in map(json.loads, (tmp_path / "run" / "results.jsonl").read_text().splitlines()))
    want = sorted((key(r), r["top1"]) for r in map(json.loads, (tmp_path / "ref" / "results.jsonl").read_text().splitlines()))
    assert got == want  # bit-identical on the CPU, and no row lost or doubled
    for sub in ("student", "sparsity-0.9/kd"):
        a, b = (load_file(str(tmp_path / d / sub / "model.safetensors")) for d in ("run", "ref"))
        assert all(torch.equal(a[k], b[k]) for k in b)
    assert not list((tmp_path / "run").rglob("*.tmp"))  # no half-written file left behind


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 500), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.lists(st.floats(-1, 2), max_size=4))
_KEYS = st.sampled_from(["sparsity", "alpha", "temperature", "teacher_epochs", "batch_size", "method", "retrain",
                         "dataset", "arch", "rate", "score_form", "nesterov", "data_dir", "no_such_key", "seed"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_KEYS, _VALUES, max_size=5))
def test_fuzzed_config_is_valid_or_one_user_error(overrides):
    try:
        cfg = build_config(RunConfig, overrides)
    except UserError as e:
        assert "\n" not in str(e) and str(e)
        return
    assert all(0 < s < 1 for s in cfg.sparsity) and 0 <= cfg.alpha <= 1 and cfg.batch_size > 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="-abcdefghijklmnopqrstuvwxyz0123456789.,=", max_size=14), max_size=4))
def test_fuzzed_command_line_never_crashes(tmp_path_factory, argv):
    from kdprune.cli import main

    out = tmp_path_factory.mktemp("fuzz")
    # "run" with random extra words: it must fail cleanly (2) before training, or be a listing (0)
    code = main(["run", *argv, "--teacher-epochs", "0", "--student-epochs", "0", "--retrain-epochs", "0",
                 "--sparsity", "0.5", "--retrain", "plain", "--out", str(out / "o")]) if argv else 0
    assert code in (0, 2)


@pytest.mark.slow
def test_full_disk_is_one_line_and_keeps_finished_stages(tmp_path, run_cli, monkeypatch):
    import kdprune.io as kio

    real = kio.save_tensors
    calls = {"n": 0}

    def failing(path, *a, **k):
        calls["n"] += 1
        if "student" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr("kdprune.train.stage.save_tensors", failing)
    code, _, err = run_cli(*ARGS[:1], *TINY_RUN, "--sparsity", "0.5", "--out", tmp_path / "r")
    errors = [l for l in err.splitlines() if l.startswith("kdprune: error:")]
    assert code == 2 and len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in err
    assert (tmp_path / "r" / "teacher" / "model.safetensors").is_file()  # the finished stage is kept
    assert not (tmp_path / "r" / "student" / "metrics.json").exists()


def test_labels_out_of_range_and_empty_dataset(tmp_path):
    from kdprune.data import load_dataset

    folder = write_cifar10(tmp_path)
    with open(folder / "test_batch", "rb") as f:
        d = pickle.load(f, encoding="bytes")
    d[b"labels"][0] = 10
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(d, f, protocol=2)
    with pytest.raises(UserError, match=r"labels must lie in \[0, 9\], found \[0, 10\]"):
        load_dataset("cifar10", str(folder))
    d[b"labels"], d[b"data"] = [], np.zeros((0, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(d, f, protocol=2)
    with pytest.raises(UserError, match="test split is empty"):
        load_dataset("cifar10", str(folder))


def test_unwritable_out_is_one_line(tmp_path, run_cli, monkeypatch):
    # the tests run as root, who may write anywhere: simulate the refusal the OS gives other users
    from pathlib import Path

    real = Path.mkdir

    def refuse(self, *a, **k):
        if "locked" in str(self):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", refuse)
    code, _, err = run_cli("run", *TINY_RUN, "--out", tmp_path / "locked" / "run")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot write to --out" in err


@pytest.mark.slow
def test_scores_lost_in_a_crash_are_recomputed_identically(tmp_path):
    """A crash after scoring but before its files are written: the resumed run scores again, identically."""
    from kdprune.experiments.pipeline import run_pipeline

    args = dict(zip(TINY_RUN[::2], TINY_RUN[1::2]))
    over = {k.lstrip("-").replace("-", "_"): v for k, v in args.items()}
    cfg = build_config(RunConfig, {**over, "out": str(tmp_path / "r"), "sparsity": "0.9", "retrain_epochs": "0"})
    run_pipeline(cfg)
    first = load_file(str(tmp_path / "r" / "sparsity-0.9" / "kd" / "masks.safetensors"))
    scores = load_file(str(tmp_path / "r" / "scores.safetensors"))
    for name in ("scores.safetensors", "scores.json", "metrics.json"):
        (tmp_path / "r" / name).unlink()
    import shutil

    shutil.rmtree(tmp_path / "r" / "sparsity-0.9")
    run_pipeline(build_config(RunConfig, {**over, "out": str(tmp_path / "r"), "sparsity": "0.9",
                                          "retrain_epochs": "0", "resume": "true"}))
    again = load_file(str(tmp_path / "r" / "scores.safetensors"))
    assert all(torch.equal(scores[k], again[k]) for k in scores)
    masks = load_file(str(tmp_path / "r" / "sparsity-0.9" / "kd" / "masks.safetensors"))
    assert all(torch.equal(first[k], masks[k]) for k in first)


def test_atomic_writes_leave_no_temporary_and_the_usual_mode(tmp_path):
    import os

    from kdprune.io import write_text

    old = os.umask(0o022)
    os.umask(old)
    write_text(tmp_path / "a.md", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["a.md"]
    assert (tmp_path / "a.md").stat().st_mode & 0o777 == 0o666 & ~old  # not mkstemp's 0600


@pytest.mark.slow
def test_resume_removes_the_temporaries_a_kill_left(tmp_path, run_cli):
    """kill -9 between writing a temporary and renaming it leaves the temporary; --resume removes it."""
    out = tmp_path / "r"
    args = ["run", *TINY_RUN, "--sparsity", "0.5", "--retrain", "plain", "--out", out]
    assert run_cli(*args)[0] == 0
    for f in (out / ".results.jsonl.abc123.tmp", out / "student" / ".checkpoint.pt.sha256.x1y2z3.tmp"):
        f.write_text("half")
    code, _, err = run_cli(*args, "--resume")
    assert code == 0, err
    assert not list(out.rglob("*.tmp")) and (out / "results.jsonl").is_file()


@pytest.mark.parametrize("killed_at", [1, 2])  # the sidecar write before the rename, or the one after it
def test_a_kill_between_a_checkpoint_and_its_checksum_leaves_a_checkpoint_that_loads(tmp_path, monkeypatch, killed_at):
    """The checkpoint is renamed in place and its sidecar written around that rename: stopped at either write,
    the folder holds a checkpoint its sidecar accepts (it once refused a good new checkpoint beside the old
    digest), and it is the old state or the new one."""
    import kdprune.checkpoint as ck

    path = tmp_path / "checkpoint.pt"
    ck.save_checkpoint(path, {"epoch": 0})
    real, calls = ck.write_text, []

    def stop_at_nth(*args, **kwargs):
        calls.append(args)
        if len(calls) == killed_at:
            raise KeyboardInterrupt  # the process dies here
        return real(*args, **kwargs)

    monkeypatch.setattr(ck, "write_text", stop_at_nth)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(path, {"epoch": 1})
    monkeypatch.setattr(ck, "write_text", real)
    assert ck.load_checkpoint(path)["epoch"] == (0 if killed_at == 1 else 1)
    path.write_bytes(path.read_bytes()[:-3])  # a truncated file is still refused
    with pytest.raises(UserError, match="corrupt"):
        ck.load_checkpoint(path)
