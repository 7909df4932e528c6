#!/bin/sh
# ctest's launcher for the Python tests:  run_python_test.sh PYTHON TEST.py [ARGS...]
# Runs TEST.py with PYTHON (the project's .venv interpreter) when it exists; otherwise exits 77,
# which ctest reports as SKIPPED. A test exits 77 itself when a package it needs is missing.
python=$1
shift
if [ ! -x "$python" ]; then
  echo "skipped: $python does not exist: run scripts/setup_python.sh to enable the Python tests"
  exit 77
fi
exec "$python" "$@"
