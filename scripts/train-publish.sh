#!/usr/bin/env bash
# The training image's command (compose `training` profile, Kubernetes Job):
# train -> export a signed bundle -> import it into the shared store.
# Activation stays a separate, deliberate step (CLI or API), after someone read the report.
#
# Environment:
#   VERSION       bundle version to publish (required), e.g. 2026.11.1
#   STORE         store location (required): a directory or s3://bucket/prefix
#   SIGNING_KEY   private key PEM that signs the bundle (required)
#   PUBLIC_KEY    trusted public key PEM the store verifies with (required)
#   DATA          ImageFolder data directory (default /work/data)
#   RUN_DIR       run directory (default /work/runs/$VERSION; rerunning resumes it)
#   CONFIG        training config (default configs/default.toml)
#   NPROC         processes for DistributedDataParallel via torchrun (default 1: no torchrun)
#   SYNTH_COUNT   if set and DATA holds no data yet, synthesise this many demo photos first
set -euo pipefail
: "${VERSION:?set VERSION, the bundle version to publish}"
: "${STORE:?set STORE, e.g. s3://models/store}"
: "${SIGNING_KEY:?set SIGNING_KEY, the private key PEM}"
: "${PUBLIC_KEY:?set PUBLIC_KEY, the trusted public key PEM}"
DATA=${DATA:-/work/data}
RUN_DIR=${RUN_DIR:-/work/runs/$VERSION}
CONFIG=${CONFIG:-configs/default.toml}
NPROC=${NPROC:-1}
BUNDLE="$RUN_DIR/bundle-$VERSION"

if [ -n "${SYNTH_COUNT:-}" ] && [ ! -d "$DATA/intact" ]; then
  python -m training synth --out "$DATA" --count "$SYNTH_COUNT" --seed 0
fi

train=(train --config "$CONFIG" --data "$DATA" --run-dir "$RUN_DIR")
if [ -f "$RUN_DIR/eval.json" ]; then
  echo "run $RUN_DIR already finished; publishing it"
else
  [ -f "$RUN_DIR/checkpoints/last.pt" ] && train+=(--resume)
  if [ "$NPROC" -gt 1 ]; then
    # One node: the rendezvous stays on loopback, also where the container's hostname does
    # not resolve (without --local-addr, torchrun connects to that name and times out).
    torchrun --standalone --nproc_per_node "$NPROC" --local-addr 127.0.0.1 -m training "${train[@]}"
  else
    python -m training "${train[@]}"
  fi
fi

if [ -d "$BUNDLE" ]; then
  echo "bundle $BUNDLE already exported"
else
  python -m training export --run "$RUN_DIR" --key "$SIGNING_KEY" --version "$VERSION" --out "$BUNDLE"
fi
# Verifies the signature again, then copies in; an identical bundle already there is a no-op.
python -m model_store import "$BUNDLE" --store "$STORE" --public-key "$PUBLIC_KEY" \
  --reason "trained from $DATA with $CONFIG (run $RUN_DIR)"
echo "published $VERSION to $STORE; activate it with: python -m model_store activate $VERSION --store $STORE --public-key PUBLIC_KEY"
