#!/usr/bin/env bash
# Build the image without a Docker engine (buildah, chroot isolation), then run the image's
# own smoke check inside it: sign + verify a bundle, load it, pass parity, serve one predict.
#
#   scripts/build-image.sh                                   # service image, CPU torch
#   TORCH_VARIANT=cu130 IMAGE=localhost/damage-detect:cu130 scripts/build-image.sh
#   TARGET=training IMAGE=localhost/damage-detect-training:latest scripts/build-image.sh
#
# Environment (all optional):
#   IMAGE         tag to build (default localhost/damage-detect:latest)
#   TARGET        Dockerfile stage: runtime (default) or training
#   BASE_IMAGE    the FROM image, e.g. python:3.11-slim-bookworm from a registry. Unset: a
#                 local Debian bookworm base (python3.11) made with debootstrap, once, and
#                 tagged $LOCAL_BASE (REBUILD_BASE=1 makes it again)
#   DEBIAN_MIRROR mirror for debootstrap (default http://deb.debian.org/debian)
#   TORCH_VARIANT, TORCH_INDEX_URL, PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_CERT
#                 passed as build arguments when set (see the Dockerfile)
#   PIP_MOUNTS    host paths mounted read-only at the same path during the build, so the
#                 file:// indexes, find-links directories and CA bundle named above resolve
#   SMOKE         1 (default) runs the smoke check in the built runtime image; 0 skips it
#   REVISION      recorded as the image's revision label (default: git rev-parse HEAD)
#   BUILD_DIR     scratch space for the base root file system (default build/, removed after)
#
# Needs root (or a rootless buildah setup) and: apt-get install -y buildah debootstrap
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/damage-detect:latest}
TARGET=${TARGET:-runtime}
LOCAL_BASE=${LOCAL_BASE:-localhost/debian-bookworm-python3.11:latest}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SMOKE=${SMOKE:-1}
BUILD_DIR=${BUILD_DIR:-build}
REVISION=${REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
START=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$1" "$(($(date +%s) - START))"; }

for tool in buildah $([ -z "${BASE_IMAGE:-}" ] && echo debootstrap); do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install -y buildah debootstrap)" >&2; exit 1; }
done

# Temporary files and working containers, removed however the script ends.
cleanup_paths=() cleanup_containers=()
cleanup() {
  for c in "${cleanup_containers[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "${cleanup_paths[@]}"
}
trap cleanup EXIT

# A minimal Debian bookworm root file system with python3.11 and its venv module, as an
# image: what python:3.11-slim-bookworm gives, made from Debian's packages alone.
make_local_base() {
  local rootfs ctr
  mkdir -p "$BUILD_DIR"
  rootfs=$(mktemp -d "$BUILD_DIR/rootfs.XXXXXX")
  cleanup_paths+=("$rootfs" "$rootfs.tar")
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$DEBIAN_MIRROR"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  tar --numeric-owner -C "$rootfs" -cf "$rootfs.tar" .
  ctr=$(buildah from scratch)
  cleanup_containers+=("$ctr")
  buildah add "$ctr" "$rootfs.tar" /
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd '["python3"]' "$ctr"
  buildah commit "$ctr" "$LOCAL_BASE"
}

if [ -z "${BASE_IMAGE:-}" ]; then
  if [ "${REBUILD_BASE:-0}" = 1 ] || ! buildah inspect --type image "$LOCAL_BASE" >/dev/null 2>&1; then
    step "base image $LOCAL_BASE with debootstrap (Debian bookworm, python3.11)"
    make_local_base
  else
    step "reusing base image $LOCAL_BASE"
  fi
  BASE_IMAGE=$LOCAL_BASE
fi

args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "REVISION=$REVISION")
for name in TORCH_VARIANT TORCH_INDEX_URL PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CERT; do
  [ -n "${!name:-}" ] && args+=(--build-arg "$name=${!name}")
done
for dir in ${PIP_MOUNTS:-}; do
  args+=(--volume "$dir:$dir:ro")
done

step "build $IMAGE (target $TARGET, base $BASE_IMAGE)"
# --format docker keeps HEALTHCHECK (the OCI image format has no field for it).
buildah bud --isolation chroot --format docker --layers --target "$TARGET" "${args[@]}" -t "$IMAGE" .

if [ "$TARGET" = runtime ] && [ "$SMOKE" = 1 ]; then
  step "smoke check inside $IMAGE (buildah run, as the image's user)"
  ctr=$(buildah from "$IMAGE")
  cleanup_containers+=("$ctr")
  buildah run --isolation chroot "$ctr" -- python /opt/app/smoke_check.py
fi

step "done"
buildah images --format '{{.Name}}:{{.Tag}}  {{.Size}}' "$IMAGE"
