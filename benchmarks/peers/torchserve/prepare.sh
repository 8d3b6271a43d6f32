#!/usr/bin/env bash
# Build everything TorchServe needs for the comparison, outside the repository:
#   $TS_HOME/export/   weights.pt, images/*.jpg, expected.json (export_weights.py)
#   $TS_HOME/store/    mobilenet.mar (torch-model-archiver)
#   $TS_HOME/config-nobatch.properties, $TS_HOME/config-batch8.properties
#
# Environment (all optional):
#   TS_HOME        where it all goes                        (default /tmp/ts-bench)
#   TS_VENV        TorchServe's own virtualenv              (default /work/ts-venv)
#   PROJECT_PY     the project's python                     (default <repo>/.venv/bin/python)
#   WORKERS        workers (processes) for the model        (default 2)
#   JOB_QUEUE_SIZE TorchServe's per-model request queue     (default 512; TorchServe's own default is 100)
#   REEXPORT       set to 1 to export the weights again even if $TS_HOME/export has them
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
TS_HOME="${TS_HOME:-/tmp/ts-bench}"
TS_VENV="${TS_VENV:-/work/ts-venv}"
PROJECT_PY="${PROJECT_PY:-$repo/.venv/bin/python}"
WORKERS="${WORKERS:-2}"
JOB_QUEUE_SIZE="${JOB_QUEUE_SIZE:-512}"

if [[ ! -x "$TS_VENV/bin/torchserve" ]]; then
    cat >&2 <<EOF
no TorchServe in $TS_VENV; make it with
  python3.11 -m venv $TS_VENV
  $TS_VENV/bin/pip install torchserve torch-model-archiver pyyaml torch==2.14.1 torchvision==0.29.1
EOF
    exit 1
fi

mkdir -p "$TS_HOME/export" "$TS_HOME/store" "$TS_HOME/logs"

if [[ -f "$TS_HOME/export/weights.pt" && -z "${REEXPORT:-}" ]]; then
    echo "reusing $TS_HOME/export (REEXPORT=1 to make it again)" >&2
else
    echo "exporting the benchmark's weights (project venv, ~40 s) ..." >&2
    (cd "$repo" && PYTHONPATH="$repo" "$PROJECT_PY" "$here/export_weights.py" "$TS_HOME/export")
fi

echo "archiving mobilenet.mar ..." >&2
"$TS_VENV/bin/torch-model-archiver" \
    --model-name mobilenet \
    --version 1.0 \
    --serialized-file "$TS_HOME/export/weights.pt" \
    --handler "$here/handler.py" \
    --export-path "$TS_HOME/store" \
    --force

# Shared by both variants. Everything binds to loopback; no token auth; no config
# snapshots; no per-model pip installs; metrics API off, no system-metrics collector.
common="inference_address=http://127.0.0.1:8080
management_address=http://127.0.0.1:8081
metrics_address=http://127.0.0.1:8082
grpc_inference_address=127.0.0.1
grpc_management_address=127.0.0.1
enable_metrics_api=false
disable_system_metrics=true
disable_token_authorization=true
install_py_dep_per_model=false
number_of_gpu=0
default_workers_per_model=$WORKERS
job_queue_size=$JOB_QUEUE_SIZE
model_store=$TS_HOME/store
load_models=mobilenet.mar"

model() { # batch size, max batch delay (ms)
    printf 'models={"mobilenet": {"1.0": {"defaultVersion": true, "marName": "mobilenet.mar", "minWorkers": %s, "maxWorkers": %s, "batchSize": %s, "maxBatchDelay": %s, "responseTimeout": 120}}}\n' \
        "$WORKERS" "$WORKERS" "$1" "$2"
}

{ echo "$common"; model 1 100; } >"$TS_HOME/config-nobatch.properties"
{ echo "$common"; model 8 5; } >"$TS_HOME/config-batch8.properties"

echo "ready: $TS_HOME/store/mobilenet.mar, $TS_HOME/config-{nobatch,batch8}.properties" >&2
