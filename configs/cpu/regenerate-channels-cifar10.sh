#!/usr/bin/env bash
# Runs the CPU CIFAR-10 channel-pruning sweep and writes its report, with latency measured on this machine,
# into docs/channels-cifar10/. Interrupt it at any time; running it again resumes where it stopped.
# Needs data/cifar-10-batches-py/ (see regenerate-cifar10.sh). When the CIFAR-10 benchmark has already
# trained its teacher and students (runs/cifar10-cpu/shared/), they are reused (hard links), not retrained.
set -euo pipefail
cd "$(dirname "$0")/../.."
kdprune=${KDPRUNE:-.venv/bin/kdprune}
if [ ! -f data/cifar-10-batches-py/test_batch ]; then
  echo "no data/cifar-10-batches-py/: run configs/cpu/regenerate-cifar10.sh's first step, or download it" >&2
  exit 2
fi
mkdir -p runs/cifar10-channels/shared
for stage in runs/cifar10-cpu/shared/teacher-* runs/cifar10-cpu/shared/student-*; do
  [ -d "$stage" ] || continue
  finished=1
  for sub in "$stage"/*/; do [ -f "$sub/metrics.json" ] || finished=0; done
  dest=runs/cifar10-channels/shared/$(basename "$stage")
  if [ "$finished" = 1 ] && [ ! -e "$dest" ]; then cp -al "$stage" "$dest"; fi
done
$kdprune sweep configs/cpu/cifar10-channels.yaml --jobs "${JOBS:-2}"
$kdprune --threads "${LATENCY_THREADS:-2}" report runs/cifar10-channels/runs --out docs/channels-cifar10 --latency 64 --latency-nchw  # its runs were timed in NCHW, the layout of their training
