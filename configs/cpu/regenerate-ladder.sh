#!/usr/bin/env bash
# Runs the teacher-strength ladder (configs/cpu/teacher-ladder-[123].yaml, in order), the ladder again with both
# seeds under retrained teachers (teacher-ladder-seeds-cifar10.yaml and -cifar100.yaml), its scoring variants
# (configs/cpu/teacher-ladder-scoring.yaml and teacher-ladder-scoring-cifar10.yaml) and the training-length
# sweep (configs/cpu/cifar10-long.yaml), and writes their reports into docs/teacher-ladder/. Interrupt it at
# any time; running it again resumes where it stopped. JOBS workers (default 1), of 1 thread each for the
# ladder and 2 for the others.
# Needs CIFAR-10 and CIFAR-100 in data/: with internet, set download: true in the YAML files; in this
# project's workplace ../shared/data/make_cifar10.py and make_cifar100.py write them.
set -euo pipefail
cd "$(dirname "$0")/../.."
kdprune=${KDPRUNE:-.venv/bin/kdprune}
python=${PYTHON:-.venv/bin/python}
for pair in "cifar-10-batches-py/test_batch make_cifar10.py" "cifar-100-python/test make_cifar100.py"; do
  set -- $pair
  if [ ! -f "data/$1" ]; then
    if [ -f "../shared/data/$2" ]; then
      $python "../shared/data/$2" data
    else
      echo "no data/$1: download it (https://www.cs.toronto.edu/~kriz/cifar.html) or set download: true" >&2
      exit 2
    fi
  fi
done
# the CIFAR-100 benchmark's teacher, which the ladder uses as its strongest CIFAR-100 teacher
$kdprune --threads "${THREADS:-2}" train --config configs/cpu/cifar100-teacher.yaml --resume
parts=(configs/cpu/teacher-ladder-[0-9]*.yaml)
for part in "${parts[@]}"; do
  $kdprune sweep "$part" --jobs "${JOBS:-1}" --threads 1
done
$kdprune report "${parts[@]/#/--sweep=}" --ladder --out docs/teacher-ladder
# the whole ladder again, both seeds under one set of retrained teachers (2 threads a worker, as its rows ran)
$kdprune sweep configs/cpu/teacher-ladder-seeds-cifar10.yaml --jobs "${JOBS:-1}" --threads 2
$kdprune sweep configs/cpu/teacher-ladder-seeds-cifar100.yaml --jobs "${JOBS:-1}" --threads 2
$kdprune report --sweep configs/cpu/teacher-ladder-seeds-cifar10.yaml --sweep configs/cpu/teacher-ladder-seeds-cifar100.yaml \
  --ladder --out docs/teacher-ladder/two-seeds
# part 3 of the issue: three scoring variants beside the paper's method and magnitude on the strongest teachers
$kdprune sweep configs/cpu/teacher-ladder-scoring.yaml --jobs "${JOBS:-1}" --threads 1
$kdprune report --sweep configs/cpu/teacher-ladder-scoring.yaml --out docs/teacher-ladder/scoring
# the committed rows of these two ran with 2 threads a worker
$kdprune sweep configs/cpu/teacher-ladder-scoring-cifar10.yaml --jobs "${JOBS:-1}" --threads 2
$kdprune report --sweep configs/cpu/teacher-ladder-scoring-cifar10.yaml --out docs/teacher-ladder/scoring-cifar10
$kdprune sweep configs/cpu/cifar10-long.yaml --jobs "${JOBS:-1}" --threads 2
# beside the CPU CIFAR-10 benchmark's rows at the usual length (its committed results.csv)
$kdprune report docs/cifar10-cpu-benchmark/results.csv --sweep configs/cpu/cifar10-long.yaml --out docs/teacher-ladder/training-length
