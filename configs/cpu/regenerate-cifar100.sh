#!/usr/bin/env bash
# Runs the CPU CIFAR-100 benchmark: the shared teacher, the dense CE reference student, then the sweep tiers
# (configs/cpu/cifar100-[0-9]*.yaml, in order), and writes the report into docs/cifar100-cpu-benchmark/.
# Interrupt it at any time; running it again resumes where it stopped (every step is --resume).
# Needs the CIFAR-100 python release in data/cifar-100-python/: with internet, kdprune's --download fetches
# it; in this project's workplace ../shared/data/make_cifar100.py writes it (lossless, about 15 s).
set -euo pipefail
cd "$(dirname "$0")/../.."
kdprune=${KDPRUNE:-.venv/bin/kdprune}
python=${PYTHON:-.venv/bin/python}
if [ ! -f data/cifar-100-python/test ]; then
  if [ -f ../shared/data/make_cifar100.py ]; then
    $python ../shared/data/make_cifar100.py data
  else
    echo "no data/cifar-100-python/: download it (https://www.cs.toronto.edu/~kriz/cifar.html) or run" \
         "kdprune train --config configs/cpu/cifar100-teacher.yaml --download" >&2
    exit 2
  fi
fi
$kdprune --threads "${THREADS:-2}" train --config configs/cpu/cifar100-teacher.yaml --resume
$kdprune --threads "${THREADS:-2}" train --config configs/cpu/cifar100-ce-student.yaml --resume
shopt -s nullglob
tiers=(configs/cpu/cifar100-[0-9]*.yaml)
for tier in "${tiers[@]}"; do
  $kdprune sweep "$tier" --jobs "${JOBS:-2}"
done
if [ ${#tiers[@]} -gt 0 ]; then  # each tier's own runs (a run folder may also hold runs of a tier's earlier grid)
  $kdprune report "${tiers[@]/#/--sweep=}" --out docs/cifar100-cpu-benchmark
fi
