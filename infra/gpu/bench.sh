#!/usr/bin/env bash
# The whole benchmark in one call on the offline GPU host: installs the carried wheels into a fresh
# folder, runs `python -m pipeline.bench all`, and leaves bench.json, bench.log and packages.txt in $OUT.
#   OUT=DIR bash infra/gpu/bench.sh [pipeline.bench options, e.g. --device cpu --steps 3]
# The wheels are those `wheels.sh` of the host notes puts in .whl/ (no Ray: the benchmark needs none);
# WHEELS names another folder, SITE the install folder (default: a new one), PYTHON the interpreter.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:?set OUT to the folder the results go to}
wheels=${WHEELS:-$top/.whl}
python=${PYTHON:-python3}
site=${SITE:-$(mktemp -d)}
mkdir -p "$out"
compgen -G "$wheels/*.whl" >/dev/null || { echo "bench.sh: no wheels in $wheels; run wheels.sh of the host notes" >&2; exit 2; }
"$python" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$wheels"/*.whl
export PYTHONPATH="$top:$site${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled HF_HUB_OFFLINE=1
"$python" -m pip list --path "$site" > "$out/packages.txt" 2>&1 || true
(command -v nvidia-smi >/dev/null && nvidia-smi >> "$out/packages.txt") || true
"$python" -m pipeline.bench all --out "$out/bench.json" "$@" 2>&1 | tee "$out/bench.log"
