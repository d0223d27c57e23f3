#!/usr/bin/env bash
# Runs the CPU benchmark sweep and writes its report into docs/cpu-benchmark/ (resumes if interrupted).
set -euo pipefail
cd "$(dirname "$0")/../.."
kdprune=${KDPRUNE:-.venv/bin/kdprune}
$kdprune sweep configs/cpu/digits-all-methods.yaml --jobs 2
$kdprune report runs/cpu-benchmark/runs --out docs/cpu-benchmark
