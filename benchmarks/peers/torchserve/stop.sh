#!/usr/bin/env bash
# Stop the TorchServe that run.sh started, and wait until its processes are gone.
set -euo pipefail

TS_HOME="${TS_HOME:-/tmp/ts-bench}"
TS_VENV="${TS_VENV:-/work/ts-venv}"

cd "$TS_HOME" 2>/dev/null || cd /tmp
"$TS_VENV/bin/torchserve" --stop || true
for _ in $(seq 60); do
    if ! pgrep -f 'org.pytorch.serve.ModelServer' >/dev/null && ! pgrep -f 'ts/model_service_worker.py' >/dev/null; then
        echo "TorchServe stopped" >&2
        exit 0
    fi
    sleep 1
done
echo "TorchServe processes are still there:" >&2
pgrep -af 'org.pytorch.serve.ModelServer|ts/model_service_worker.py' >&2 || true
exit 1
