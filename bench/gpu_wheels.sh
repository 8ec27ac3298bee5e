#!/usr/bin/env bash
# Wheels a GPU node needs for bench/gpu_check.sh beyond what its image holds (torch, numpy, pandas, pyarrow,
# pyyaml, safetensors, wrapt, typing-extensions): the Delta reader and its two dependencies, for CPython 3.12
# on x86-64 Linux, into .whl/ (gitignored).  Versions are the ones this project's environment resolved.
#
#   bash bench/gpu_wheels.sh
#   # then, on the node:  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   #                     PYTHONPATH=/tmp/site bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf .whl && mkdir .whl
for name in deltalake arro3-core deprecated; do
  version=$("$PY" -m pip show "$name" | sed -n 's/^Version: //p')
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$name==$version"
done
ls -l .whl
