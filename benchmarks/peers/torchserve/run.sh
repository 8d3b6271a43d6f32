#!/usr/bin/env bash
# Start TorchServe with one variant and wait until a JPEG gets a 200; print the URL.
#
#   bash benchmarks/peers/torchserve/run.sh nobatch    # batch size 1
#   bash benchmarks/peers/torchserve/run.sh batch8     # batch size 8, max batch delay 5 ms
#
# Runs prepare.sh first if its outputs are missing (same environment variables).
# Stop with stop.sh. Logs go to $TS_HOME/logs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TS_HOME="${TS_HOME:-/tmp/ts-bench}"
TS_VENV="${TS_VENV:-/work/ts-venv}"
variant="${1:-}"
case "$variant" in
    nobatch | batch8) ;;
    *)
        echo "usage: $0 nobatch|batch8" >&2
        exit 2
        ;;
esac

config="$TS_HOME/config-$variant.properties"
if [[ ! -f "$config" || ! -f "$TS_HOME/store/mobilenet.mar" ]]; then
    bash "$here/prepare.sh"
fi

url=http://127.0.0.1:8080/predictions/mobilenet
if curl -s -o /dev/null --max-time 2 http://127.0.0.1:8080/ping; then
    echo "something already answers on 127.0.0.1:8080; run stop.sh first" >&2
    exit 1
fi

export PATH="$TS_VENV/bin:$PATH"
export LOG_LOCATION="$TS_HOME/logs" METRICS_LOCATION="$TS_HOME/logs"
# TorchServe writes ./logs relative to where it starts: start it in TS_HOME, not the repo.
cd "$TS_HOME"
torchserve --start --ts-config "$config" --model-store "$TS_HOME/store" \
    --ncs --disable-token-auth >"$TS_HOME/logs/torchserve-start.out" 2>&1

image="$TS_HOME/export/images/00.jpg"
deadline=$((SECONDS + 180))
while ((SECONDS < deadline)); do
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X POST \
        -H 'Content-Type: image/jpeg' --data-binary "@$image" "$url" || true)"
    if [[ "$code" == 200 ]]; then
        echo "TorchServe ($variant) answers: $(curl -s -X POST -H 'Content-Type: image/jpeg' --data-binary "@$image" "$url" | tr -d ' \n')" >&2
        echo "$url"
        exit 0
    fi
    sleep 1
done
echo "TorchServe did not answer 200 in 180 s; see $TS_HOME/logs (stopping it)" >&2
torchserve --stop >&2 || true
exit 1
