#!/usr/bin/env bash
# Harvest, sweep and fit as three Ray jobs on the cluster of infra/ray/cluster.yaml (`ray up` first: it starts
# the cluster, or only updates it when it is up).
#
#   infra/ray/run.sh OUT_DIR [SWEEP] [key=value ...]
#
# OUT_DIR is on the shared file system (/mnt/shared/runs/<name>): the harvest actors write the store's shards
# there and the arms their run folders. SWEEP is a name in sweeps/ (default quickstart) or a YAML path inside the
# image. Further key=value overrides go to every stage, e.g. model=gpt2 harvest.n_tokens=50000000.
# HARVEST_GPUS sets the number of harvest actors (one GPU each, default 4).
# W&B: export WANDB_API_KEY first; it reaches the jobs' processes through their runtime environment.
set -euo pipefail

usage="usage: infra/ray/run.sh OUT_DIR [SWEEP] [key=value ...]"
out_dir=${1:?$usage}
sweep=${2:-quickstart}
shift $(($# < 2 ? $# : 2))
config=${RAY_CLUSTER_CONFIG:-$(dirname "$0")/cluster.yaml}
port=${RAY_DASHBOARD_LOCAL_PORT:-8265}
address="http://127.0.0.1:$port"
export RAY_AUTH_MODE=token # the client sends ~/.ray/auth_token, the file the nodes received

ray up --yes --disable-usage-stats "$config"

# The dashboard listens on the head's loopback only; reach it through an SSH tunnel for as long as this runs.
ray dashboard --port "$port" "$config" >/dev/null 2>&1 &
tunnel=$!
workdir=$(mktemp -d)
trap 'kill "$tunnel" 2>/dev/null || true; rm -rf "$workdir"' EXIT
for _ in $(seq 60); do
    curl -s -o /dev/null "$address" && break
    sleep 2
done

# The W&B key travels in a file (not on a command line) into the jobs' runtime environment.
runtime_env=()
if [[ -n "${WANDB_API_KEY:-}" ]]; then
    (umask 077 && python3 -c 'import json, os; print(json.dumps({"env_vars": {"WANDB_API_KEY": os.environ["WANDB_API_KEY"]}}))' \
        >"$workdir/runtime_env.json")
    runtime_env=(--runtime-env "$workdir/runtime_env.json")
fi

submit() {
    ray job submit --address "$address" ${runtime_env[@]+"${runtime_env[@]}"} -- "$@"
}

common=("out_dir=$out_dir" "sweep=$sweep" ray.address=auto model.dtype=bfloat16)
submit pipeline harvest "${common[@]}" \
    "harvest.replicas=${HARVEST_GPUS:-4}" harvest.gpus_per_replica=1 harvest.cpus_per_replica=4 "$@"
submit pipeline sweep "${common[@]}" \
    launcher=ray launcher.gpus_per_arm=0.25 launcher.cpus_per_arm=2 "$@"
submit pipeline fit "${common[@]}" "$@"
echo "results: $out_dir/sweep/results.parquet and $out_dir/fit/report.md on the shared file system"
