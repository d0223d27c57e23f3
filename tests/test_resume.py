"""A run interrupted in any training stage, resumed with --resume, equals the uninterrupted run."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_RUN
from kdprune.experiments.config import RunConfig, build_config
from kdprune.experiments.pipeline import run_pipeline
from kdprune.train import Callback


class Crash(Exception):
    pass


class CrashAt(Callback):
    def __init__(self, stage: str, epoch: int):
        self.stage, self.epoch = stage, epoch

    def on_epoch_end(self, trainer, epoch, metrics):
        if trainer.desc.startswith(self.stage) and epoch == self.epoch:
            raise Crash(f"simulated crash in {trainer.desc} after epoch {epoch + 1}")


def _cfg(out, **kw):
    args = dict(zip(TINY_RUN[::2], TINY_RUN[1::2]))
    overrides = {k.lstrip("-").replace("-", "_"): v for k, v in args.items()}
    overrides.update({"out": str(out), "sparsity": "0.6,0.9", "retrain_epochs": "2", "progress": "false", **kw})
    return build_config(RunConfig, overrides)


@pytest.fixture
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    return out, run_pipeline(_cfg(out))


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_run(tmp_path, reference):
    """Crashed in each stage in turn (teacher, student, retraining), resumed each time: the same run."""
    ref_out, ref_rows = reference
    out = tmp_path / "run"
    for n, stage in enumerate(["teacher", "student", "retrain 0.9 kd"]):
        with pytest.raises(Crash, match=f"in {stage}"):
            run_pipeline(_cfg(out, **({"resume": "true"} if n else {})), callbacks=[CrashAt(stage, 0)])
    rows = run_pipeline(_cfg(out, resume="true"))
    key = lambda r: (r["target_sparsity"], r["regime"])
    assert [(key(r), r["top1"]) for r in rows] == [(key(r), r["top1"]) for r in ref_rows]
    for sub in ("student", "sparsity-0.9/kd", "sparsity-0.6/plain"):
        a = load_file(str(out / sub / "model.safetensors"))
        b = load_file(str(ref_out / sub / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in b), sub
    # results.jsonl holds each result once
    lines = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(key(r) for r in lines) == sorted(key(r) for r in ref_rows)


def test_resume_with_changed_config_is_refused(tmp_path):
    from kdprune.errors import UserError

    out = tmp_path / "run"
    with pytest.raises(Crash):
        run_pipeline(_cfg(out), callbacks=[CrashAt("teacher", 0)])
    with pytest.raises(UserError, match="alpha was 0.9"):
        run_pipeline(_cfg(out, resume="true", alpha="0.5"))
