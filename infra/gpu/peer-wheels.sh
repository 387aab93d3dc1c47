#!/usr/bin/env bash
# Adds to .whl/ (filled by wheels.sh of the host notes) the wheels of EleutherAI's sparsify and what it
# imports that the offline GPU host lacks, so that the benchmark's peer rows run there. SAELens is left
# out: it pulls in TransformerLens, W&B and plotly, more than one call may carry; its rows then say why.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$top/.whl"
plat=(--only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps "${plat[@]}" -d "$top/.whl" \
  "eai-sparsify==1.3.3" einops natsort schedulefree simple-parsing docstring-parser accelerate psutil xxhash
du -sh "$top/.whl"
