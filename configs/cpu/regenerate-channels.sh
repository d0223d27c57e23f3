#!/usr/bin/env bash
# Runs the digits channel-pruning sweep and writes its report into docs/channels-digits/ (resumes if interrupted).
set -euo pipefail
cd "$(dirname "$0")/../.."
kdprune=${KDPRUNE:-.venv/bin/kdprune}
$kdprune sweep configs/cpu/digits-channels.yaml --jobs "${JOBS:-2}"
$kdprune --threads "${LATENCY_THREADS:-2}" report runs/channels-digits/runs --out docs/channels-digits --latency 64 --latency-nchw  # its runs were timed in NCHW, the layout of their training
