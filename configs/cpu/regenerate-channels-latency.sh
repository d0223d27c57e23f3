#!/usr/bin/env bash
# Runs the CPU CIFAR-10 latency-target sweep (configs/cpu/cifar10-channels-latency.yaml) and writes its report
# into docs/channels-latency-cifar10/, every model re-timed on this machine in ONNX Runtime and in PyTorch eager
# (batch 64). Interrupt it at any time; running it again resumes where it stopped. Latency is measured while
# the sweep runs: run nothing else on the machine (JOBS=1 by default, one worker of THREADS threads).
set -euo pipefail
cd "$(dirname "$0")/../.."
kdprune=${KDPRUNE:-.venv/bin/kdprune}
python=${PYTHON:-.venv/bin/python}
if [ ! -f data/cifar-10-batches-py/test_batch ]; then
  if [ -f ../shared/data/make_cifar10.py ]; then
    $python ../shared/data/make_cifar10.py data
  else
    echo "no data/cifar-10-batches-py/: download it (https://www.cs.toronto.edu/~kriz/cifar.html) or set download: true" >&2
    exit 2
  fi
fi
# a run whose latency target proves out of reach as measured fails alone (one FAILED line); report the rest
$kdprune sweep configs/cpu/cifar10-channels-latency.yaml --jobs "${JOBS:-1}" --threads "${THREADS:-2}" || \
  echo "some runs failed (FAILED lines above); the report covers the others" >&2
out=docs/channels-latency-cifar10
$kdprune --threads "${THREADS:-2}" report --sweep configs/cpu/cifar10-channels-latency.yaml --out "$out/onnxruntime" \
    --latency 64 --latency-runtime onnxruntime
$kdprune --threads "${THREADS:-2}" report --sweep configs/cpu/cifar10-channels-latency.yaml --out "$out/torch" --latency 64
