"""The distributed path on the CPU with the gloo backend and two processes."""

import json
import os
import socket
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import pytest

from kdprune.data import TensorLoader, load_dataset
from kdprune.losses import CrossEntropy
from kdprune.models import create_model
from kdprune.pruning import prunable_parameters
from kdprune.pruning.criteria import loss_gradient_scores

GLOBAL_BATCH = 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scores(rank: int, world: int):
    torch.manual_seed(0)
    ds = load_dataset("digits")
    model = create_model("resnet20", 10, 1)
    loader = TensorLoader(ds.train_x, ds.train_y, GLOBAL_BATCH // world, mean=[0.3], std=[0.3], train=True,
                          seed=5, rank=rank, world_size=world, pad=2, flip=True)  # each rank: its share of one draw
    return loss_gradient_scores(model, prunable_parameters(model), iter(loader), CrossEntropy(), num_batches=3)


def _worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(_scores(rank, world), os.path.join(out_dir, f"scores{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_scores_identical_on_ranks_and_equal_to_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    s0 = torch.load(tmp_path / "scores0.pt")
    s1 = torch.load(tmp_path / "scores1.pt")
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    single = _scores(0, 1)  # one process, the same global batch of 64
    for k in single:
        torch.testing.assert_close(s0[k], single[k], rtol=1e-4, atol=1e-9)


def _run(args, env=None):
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def _net():
    """A small CNN without BatchNorm: under DDP a training step is then exactly the single-process step on the
    global batch (BatchNorm's batch statistics are per rank, so with it DDP is close, not equal, by design)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))


def _steps(rank: int, world: int, channels_last: bool):
    """Three SGD steps (momentum, Nesterov, weight decay) of the engine on 50%-masked weights, global batch 64."""
    from kdprune.pruning import MaskSet, global_masks
    from kdprune.train import OptimSpec, Trainer

    ds = load_dataset("digits")
    x, y = ds.train_x[:3 * GLOBAL_BATCH], ds.train_y[:3 * GLOBAL_BATCH]
    loader = TensorLoader(x, y, GLOBAL_BATCH // world, mean=[0.3], std=[0.3], train=True, seed=5, rank=rank,
                          world_size=world, pad=2, flip=True)  # each rank: its share of the global batch's draw
    model = _net()
    masks = MaskSet(global_masks({k: p.detach().abs() for k, p in prunable_parameters(model).items()}, 0.5))
    trainer = Trainer(model, CrossEntropy(), OptimSpec(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                                       schedule="constant"), 1, loader, None, masks=masks,
                      progress=False, channels_last=channels_last)
    trainer._train_epoch(0)
    plain = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    return {k: v.detach().contiguous().clone() for k, v in plain.state_dict().items()}, masks.digest()


def _step_worker(rank, world, port, out_dir, channels_last):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(_steps(rank, world, channels_last), os.path.join(out_dir, f"steps{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "nchw"])
def test_ddp_training_steps_equal_the_single_process_steps(tmp_path, channels_last):
    mp.spawn(_step_worker, args=(2, _free_port(), str(tmp_path), channels_last), nprocs=2, join=True)
    (w0, d0), (w1, d1) = (torch.load(tmp_path / f"steps{r}.pt") for r in (0, 1))
    assert d0 == d1  # identical masks on both ranks
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # DDP keeps the replicas identical, bit for bit
    single, d = _steps(0, 1, channels_last)
    assert d == d0
    before = _net().state_dict()
    for k in single:
        assert not torch.equal(single[k], before[k]), k  # the steps did change every tensor
        # the same three steps up to float summation order (gradients averaged over ranks vs one batch)
        torch.testing.assert_close(w0[k], single[k], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_torchrun_run_keeps_ranks_identical_and_prunes_like_one_process(tmp_path):
    common = ["run", "--device", "cpu", "--teacher-arch", "resnet20", "--teacher-epochs", "1", "--student-epochs",
              "1", "--retrain-epochs", "1", "--batch-size", "64", "--score-batches", "4", "--sparsity", "0.5,0.9",
              "--retrain", "plain"]
    ddp = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(_free_port()), "-m", "kdprune", *common, "--out", str(tmp_path / "ddp")],
               env={"OMP_NUM_THREADS": "1", "KDPRUNE_DIST_BACKEND": "gloo"})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("| 90.00% |") == 1  # rank 0 alone prints the table
    single = _run([sys.executable, "-m", "kdprune", *common, "--out", str(tmp_path / "one")])
    assert single.returncode == 0, single.stderr[-3000:]
    rows = [json.loads(l) for l in (tmp_path / "ddp" / "results.jsonl").read_text().splitlines()]
    ref = [json.loads(l) for l in (tmp_path / "one" / "results.jsonl").read_text().splitlines()]
    assert [(r["target_sparsity"], r["regime"]) for r in rows] == [(0.5, "plain"), (0.9, "plain")]
    for s in ("0.5", "0.9"):
        pruned = json.loads((tmp_path / "ddp" / f"sparsity-{s}" / "pruned.json").read_text())
        hashes = pruned["mask_sha256_per_rank"]
        assert len(hashes) == 2 and hashes[0] == hashes[1]
    for r, q in zip(rows, ref):
        assert r["achieved_sparsity"] == q["achieved_sparsity"]
        assert r["images_fwd_bwd"] == q["images_fwd_bwd"]  # every rank's shard counted once, as one process
    # No accuracy comparison: BatchNorm statistics are per rank under DDP, so after a few epochs the two runs
    # differ by an amount that depends on the CPU's instruction set (11.9 points at 90% on an AVX2 EPYC).
    # What DDP must guarantee is tested exactly above (identical ranks, the single-process step).


@pytest.mark.slow
def test_torchrun_sweep_runs_each_grid_point_on_all_ranks_and_records_once(tmp_path):
    import sqlite3

    f = tmp_path / "sweep.yaml"
    f.write_text(f"""out: {tmp_path / 'out'}
grid:
  method: [magnitude, snip]
base:
  sparsity: [0.5, 0.9]
  teacher_arch: resnet20
  teacher_epochs: 1
  student_epochs: 1
  retrain_epochs: 1
  batch_size: 64
  score_batches: 2
  retrain: plain
""")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "kdprune", "sweep", str(f)]
    env = {"OMP_NUM_THREADS": "1", "KDPRUNE_DIST_BACKEND": "gloo"}
    r = _run(cmd, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("2 runs: 0 done, 2 to run") == 1  # rank 0 alone logs
    con = sqlite3.connect(str(tmp_path / "out" / "results.sqlite"))
    keys = [(a, b) for a, b in con.execute("SELECT run, target_sparsity FROM results")]
    assert len(keys) == 4 == len(set(keys))
    for pruned in (tmp_path / "out" / "runs").rglob("pruned.json"):
        hashes = json.loads(pruned.read_text())["mask_sha256_per_rank"]
        assert len(hashes) == 2 and hashes[0] == hashes[1], pruned
    cmd[6] = str(_free_port())
    again = _run(cmd, env)
    assert again.returncode == 0 and "2 runs: 2 done, 0 to run" in again.stdout, again.stderr[-3000:]


def _unwritable_worker(rank, world, port, out_dir):
    from pathlib import Path

    from kdprune.errors import UserError
    from kdprune.experiments.config import RunConfig, build_config
    from kdprune.experiments.outdir import prepare_out

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        if rank == 0:  # only rank 0 (the writer) meets the refusal; root may write anywhere, so simulate it
            def refuse(self, *a, **k):
                raise PermissionError(13, "Permission denied", str(self))

            Path.mkdir = refuse
        cfg = build_config(RunConfig, {"out": os.path.join(out_dir, "locked", "run")})
        try:
            prepare_out(cfg, "run", rank == 0)
            verdict = "no error"
        except UserError as e:
            verdict = str(e)
        with open(os.path.join(out_dir, f"verdict{rank}.txt"), "w") as f:
            f.write(verdict)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_user_error_on_rank_0_reaches_every_rank(tmp_path):
    """Rank 0 cannot write --out: every rank raises the same one-line error instead of waiting at a barrier."""
    mp.spawn(_unwritable_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    v0, v1 = ((tmp_path / f"verdict{r}.txt").read_text() for r in (0, 1))
    assert v0 == v1 and v0.startswith("cannot write to --out")
