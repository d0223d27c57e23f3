#!/usr/bin/env bash
# Runs the CPU CIFAR-10 benchmark (three tiers, one sweep folder) and writes its report into
# docs/cifar10-cpu-benchmark/. Interrupt it at any time; running it again resumes where it stopped.
# Needs the CIFAR-10 python release in data/cifar-10-batches-py/: with internet, kdprune's --download
# fetches it (set download: true); in this project's workplace ../shared/data/make_cifar10.py writes it.
set -euo pipefail
cd "$(dirname "$0")/../.."
kdprune=${KDPRUNE:-.venv/bin/kdprune}
if [ ! -f data/cifar-10-batches-py/test_batch ]; then
  if [ -f ../shared/data/make_cifar10.py ]; then
    python3 ../shared/data/make_cifar10.py data
  else
    echo "no data/cifar-10-batches-py/: download it (https://www.cs.toronto.edu/~kriz/cifar.html) or set download: true" >&2
    exit 2
  fi
fi
for tier in 1-oneshot 2-baselines 3-options; do
  $kdprune sweep "configs/cpu/cifar10-$tier.yaml" --jobs "${JOBS:-2}"
done
$kdprune report runs/cifar10-cpu/runs --out docs/cifar10-cpu-benchmark
