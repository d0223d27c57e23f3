"""Compute of the one-shot method vs IMP (20% per round) and COLT (20% per ticket per round), to 90%.

Runs both recipes through ``kdprune run`` on the embedded digits data with the default epoch ratios
scaled down by ``--scale`` (teacher 60, student 60, retrain 30 epochs at scale 1), reads their
results.jsonl and prints, as ratios method / IMP: epochs, images through forward+backward, and wall
seconds; teacher forward passes are listed too. Counts are exact (they scale with epochs), wall time is
as measured. Both with the teacher's training counted, and with a pre-trained teacher (not counted).

    python benchmarks/cost.py [--scale 0.1] [--out /tmp/kdprune-cost]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from kdprune.experiments.config import RunConfig, build_config
from kdprune.experiments.pipeline import run_pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--out", default="/tmp/kdprune-cost")
    args = ap.parse_args()
    e = lambda n: max(1, round(n * args.scale))  # noqa: E731
    common = {"sparsity": "0.9", "retrain": "plain", "teacher_arch": "resnet56", "retrain_schedule": "finetune",
              "colt_heads": "shared", "teacher_epochs": e(60), "student_epochs": e(60),
              "retrain_epochs": e(30), "progress": False}
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    rows = {}
    for method, extra in (("teacher-guided", {}), ("imp", {"rate": 0.2}), ("colt", {"rate": 0.2})):
        run_pipeline(build_config(RunConfig, {**common, **extra, "method": method, "out": str(root / method)}))
        rows[method] = json.loads((root / method / "results.jsonl").read_text().splitlines()[0])
    ours, imp, colt = rows["teacher-guided"], rows["imp"], rows["colt"]
    teacher = json.loads((root / "teacher-guided" / "teacher" / "metrics.json").read_text())
    print(f"digits, ResNet-20 student (ResNet-56 teacher), 90% sparsity, epochs teacher/student/retrain = "
          f"{common['teacher_epochs']}/{common['student_epochs']}/{common['retrain_epochs']}, IMP 20%/round")
    head = f"{'':26s} {'method':>10s} {'IMP':>10s} {'COLT':>10s} {'/IMP':>7s} {'/COLT':>7s}"
    print(head)
    for k in ("total_epochs", "images_fwd_bwd", "total_wall_seconds"):
        print(f"{k:26s} {ours[k]:10.1f} {imp[k]:10.1f} {colt[k]:10.1f} {ours[k] / imp[k]:7.3f} {ours[k] / colt[k]:7.3f}")
    print(f"{'teacher_forwards':26s} {ours['teacher_forwards']:10d} {imp['teacher_forwards']:10d} {colt['teacher_forwards']:10d}")
    pre = {k: ours[k] - teacher[src] for k, src in (("total_epochs", "epochs"), ("images_fwd_bwd", "images_fwd_bwd"),
                                                    ("total_wall_seconds", "wall_seconds"))}
    print("with a pre-trained teacher (its training not counted):")
    for k, v in pre.items():
        print(f"{k:26s} {v:10.1f} {imp[k]:10.1f} {colt[k]:10.1f} {v / imp[k]:7.3f} {v / colt[k]:7.3f}")
    print(f"top-1 at 90%: method {ours['top1']:.2f}, IMP {imp['top1']:.2f}, COLT {colt['top1']:.2f} "
          f"(targets for compute: method <= 1/5 of IMP, <= 1/3 of COLT)")


if __name__ == "__main__":
    main()
