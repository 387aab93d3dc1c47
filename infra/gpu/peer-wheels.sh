#!/usr/bin/env bash
# Adds to .whl/ (filled by wheels.sh of the host notes) the wheels of the benchmark's peers, EleutherAI's sparsify
# and SAELens, and of what they import that the offline GPU host lacks, so that every peer row runs there.
# They are installed without their declared dependencies, so only what the peers' training steps import is
# carried (SAELens's plotting and data set extras are not); the pinned versions are the ones rehearsed on the
# host's Python and packages. About 28 MB in all with wheels.sh's, within what one call may carry.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$top/.whl"
plat=(--only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
sparsify=("eai-sparsify==1.3.3" einops natsort schedulefree simple-parsing docstring-parser accelerate psutil xxhash)
# transformer-lens imports wandb, and wandb imports opentelemetry's API and SDK, as they are imported.
saelens=("sae-lens==6.54.12" "transformer-lens==3.2.1" better-abc jaxtyping typeguard "wandb==0.31.0" protobuf
         platformdirs opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions
         requests urllib3 certifi charset-normalizer)
python3 -m pip download -q --no-deps "${plat[@]}" -d "$top/.whl" "${sparsify[@]}" "${saelens[@]}"
du -sh "$top/.whl"
