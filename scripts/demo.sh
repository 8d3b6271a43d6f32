#!/usr/bin/env bash
# `make demo`: demo data -> train -> export + sign -> import + activate -> serve on 127.0.0.1.
# Re-running reuses what is already there (data, keys, a finished run, the stored bundle).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DEMO=${DEMO_DIR:-demo}
PORT=${DEMO_PORT:-8000}
COUNT=${DEMO_COUNT:-2000}
PRETRAINED=${DEMO_PRETRAINED:-}   # a torchvision mobilenet_v3_small .pth or .safetensors you downloaded
if [ -n "$PRETRAINED" ]; then
  VERSION=${DEMO_VERSION:-demo-1-pretrained} RUN="$DEMO/run-pretrained" CONFIG=configs/finetune.toml
else
  VERSION=${DEMO_VERSION:-demo-1} RUN="$DEMO/run" CONFIG=configs/default.toml
fi
START=$(date +%s)
step() { printf '\n\033[1m== %s\033[0m (%ss)\n' "$1" "$(( $(date +%s) - START ))"; }

# Another server on the port would answer the curls printed below while ours fails to
# bind, so refuse before minutes of training. Checked again just before serving.
port_free() {
  if ! [[ $PORT =~ ^[0-9]+$ ]] || (( 10#$PORT < 1 || 10#$PORT > 65535 )); then
    echo "error: DEMO_PORT=$PORT is not a port number (1-65535)" >&2
    exit 2
  fi
  if timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT" 2>/dev/null; then
    echo "error: port $PORT (DEMO_PORT) on 127.0.0.1 is already in use; stop what listens there or run DEMO_PORT=<free port> make demo" >&2
    exit 1
  fi
}
port_free
[ "${1:-}" = "--check-port" ] && exit 0  # make runs this before installing

step "1/6 demo data: $COUNT synthetic parcel photos"
if [ -d "$DEMO/data/intact" ]; then echo "reusing $DEMO/data"; else
  $PY -m training synth --out "$DEMO/data" --count "$COUNT" --seed 0; fi

step "2/6 signing keys"
if [ -f "$DEMO/keys/private.pem" ]; then echo "reusing $DEMO/keys"; else
  $PY -m model_store keygen --out "$DEMO/keys"; fi

step "3/6 training $CONFIG (progress below; report at $RUN/report.html)"
TRAIN=(--config "$CONFIG" --data "$DEMO/data" --run-dir "$RUN")
# Fewer than ~270 photos leave under 20 a class for val or test: train anyway, with every
# figure marked (the warnings print below), rather than stop a quick look.
(( 10#$COUNT < 270 )) && TRAIN+=(--allow-small-data)
if [ -n "$PRETRAINED" ]; then
  WEIGHTS="$DEMO/pretrained.safetensors"
  case "$PRETRAINED" in
    *.safetensors) cp "$PRETRAINED" "$WEIGHTS" ;;
    *) $PY -m training weights convert "$PRETRAINED" "$WEIGHTS" --architecture mobilenet_v3_small ;;
  esac
  TRAIN+=(--set "model.pretrained=\"$WEIGHTS\"")
fi
if [ -f "$RUN/eval.json" ]; then echo "reusing finished run $RUN"
elif [ -f "$RUN/checkpoints/last.pt" ]; then
  $PY -m training train "${TRAIN[@]}" --resume
else
  $PY -m training train "${TRAIN[@]}"; fi
if [ -n "$PRETRAINED" ] && [ -f "$DEMO/run/eval.json" ]; then
  # What the pretrained start changed, on the same test split: both runs' figures with intervals.
  $PY -c 'import json, sys
from training.progress import figures_line
for run in sys.argv[1:]:
    print(f"{run}: " + figures_line("test", json.load(open(f"{run}/eval.json"))["test"]))' "$DEMO/run" "$RUN"
fi

export MODEL_STORE="$DEMO/store" MODEL_STORE_PUBLIC_KEY="$DEMO/keys/public.pem"
# A store this script did not create (its marker is missing) is someone's own: nothing is
# imported into it or activated in it; the service serves what it has active.
OURS="$DEMO/.store-made-by-make-demo"
if [ ! -e "$DEMO/store" ]; then $PY -m model_store init && touch "$OURS"; fi
step "4/6 export, sign and import bundle $VERSION"
if [ ! -f "$OURS" ]; then echo "leaving $DEMO/store alone: make demo did not create it (no $OURS)"
elif $PY -m model_store list --json | grep -q "\"version\": \"$VERSION\""; then echo "$VERSION already in $DEMO/store"; else
  $PY -m training export --run "$RUN" --key "$DEMO/keys/private.pem" --version "$VERSION" \
    --store "$DEMO/store" --public-key "$DEMO/keys/public.pem"; fi

step "5/6 activate $VERSION (verify + parity first)"
ACTIVE=$($PY -m model_store list | sed -n 's/^\* \([^ ]*\) .*/\1/p')
if [ "$ACTIVE" = "$VERSION" ]; then echo "$VERSION is already active"
elif [ -n "$ACTIVE" ]; then
  # Someone activated another version since: that choice stands (a second `make demo` used to undo it).
  hint=""; [ -f "$OURS" ] && hint=" (to serve $VERSION: MODEL_STORE=$DEMO/store $PY -m model_store activate $VERSION)"
  echo "$DEMO/store serves $ACTIVE; leaving that activation alone$hint"
elif [ -f "$OURS" ]; then $PY -m model_store activate "$VERSION" --reason "make demo"
else echo "error: $DEMO/store has no active version and make demo did not create it; activate one, or use another DEMO_DIR" >&2; exit 1; fi

step "6/6 service on http://127.0.0.1:$PORT"
TOKEN_FILE="$DEMO/admin-token"
[ -f "$TOKEN_FILE" ] || (umask 077 && $PY -c 'import secrets; print(secrets.token_urlsafe(24))' > "$TOKEN_FILE")
export APP_STORE="$DEMO/store" APP_PUBLIC_KEY="$DEMO/keys/public.pem" APP_PORT="$PORT"
APP_ADMIN_TOKEN="$(cat "$TOKEN_FILE")"
export APP_ADMIN_TOKEN
port_free
$PY -m app &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT INT TERM
until curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null; do
  kill -0 $SERVER 2>/dev/null || { echo "the service exited; see the log above" >&2; exit 1; }
  sleep 0.5
done
damaged=("$DEMO"/data/damaged/*.jpg) intact=("$DEMO"/data/intact/*.jpg)
DAMAGED=${damaged[0]} INTACT=${intact[0]}
cat <<MSG

Ready in $(( $(date +%s) - START ))s. Paste into another terminal:

  # one image as the raw body
  curl -s -H 'Content-Type: image/jpeg' --data-binary @$DAMAGED http://127.0.0.1:$PORT/v1/predict

  # several images in one request
  curl -s -F files=@$DAMAGED -F files=@$INTACT http://127.0.0.1:$PORT/v1/predict

  # parity: the bundle's reference images through the serving path (what CI calls)
  curl -s http://127.0.0.1:$PORT/v1/parity

  # management (token in $TOKEN_FILE)
  curl -s -H "Authorization: Bearer \$(cat $TOKEN_FILE)" http://127.0.0.1:$PORT/v1/models

  # health and metrics
  curl -s http://127.0.0.1:$PORT/readyz; curl -s http://127.0.0.1:$PORT/metrics | head

Training report: $RUN/report.html. Stop the service with Ctrl-C.
MSG
wait $SERVER
