# syntax=docker/dockerfile:1
# The damage-detection service image, and a training image for the compose `training`
# profile and the Kubernetes Job.
#
#   docker build -t damage-detect .                                   # service, CPU torch
#   docker build -t damage-detect:cu130 --build-arg TORCH_VARIANT=cu130 .   # service, CUDA torch
#   docker build -t damage-detect-training --target training .        # training
#
# Without a Docker engine: scripts/build-image.sh (buildah, optionally on a debootstrap base).
#
# Build arguments:
#   BASE_IMAGE       a Debian-based image with Python 3.11 (python3 and its venv module)
#   TORCH_VARIANT    cpu (default; no CUDA libraries) or a CUDA tag of the PyTorch
#                    index such as cu130 (several GB; the NVIDIA libraries come as wheels,
#                    the host needs only the driver and the NVIDIA container toolkit)
#   TORCH_INDEX_URL  where torch and torchvision come from; derived from TORCH_VARIANT.
#                    https://pypi.org/simple gives PyPI's default build (CUDA on x86_64)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_CERT
#                    passed to pip as they are, for a mirror, a local wheel directory or
#                    the CA bundle of a TLS-intercepting proxy (mount those into the build;
#                    scripts/build-image.sh does with PIP_MOUNTS). Builder stage only.
#   REVISION         the source revision, recorded as an image label

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder: a venv in /opt/venv
FROM ${BASE_IMAGE} AS builder
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_FIND_LINKS=
ARG PIP_CERT=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=120 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
# torch first, from the variant's index, in its own layer (it changes far less often than
# the code): pyproject pins the same versions, so the project's install below keeps these
# wheels instead of fetching PyPI's default (CUDA) build.
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==2.14.1" "torchvision==0.29.1"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY model_store ./model_store
COPY app ./app
COPY training ./training
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/dist . \
    && pip install --no-cache-dir /tmp/dist/damage_detect-*.whl \
    && python -c "import torch, torchvision, app.main, training.cli; print('torch', torch.__version__)"

# ---------------------------------------------------------------- base: what both images share
FROM ${BASE_IMAGE} AS base
ARG REVISION=unknown
LABEL org.opencontainers.image.title="damage-detect" \
      org.opencontainers.image.description="Parcel damage detection: signed model bundles, model store, service" \
      org.opencontainers.image.revision="${REVISION}"
# A fixed uid/gid, so Kubernetes' runAsUser/fsGroup and volume ownership can name it.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/app \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache
COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 deploy/entrypoint.sh /usr/local/bin/entrypoint
ENTRYPOINT ["/usr/local/bin/entrypoint"]

# ---------------------------------------------------------------- training (--target training)
FROM base AS training
WORKDIR /opt/app
COPY configs ./configs
COPY --chmod=0755 scripts/train-publish.sh ./train-publish.sh
# Data, runs and bundles live under /work: mount a volume there (it starts owned by app).
RUN mkdir /work && chown app:app /work
USER 10001:10001
# OMP_NUM_THREADS is left to torch (all cores) for one process; torchrun sets it per rank.
CMD ["/opt/app/train-publish.sh"]

# ---------------------------------------------------------------- runtime: the service (default)
FROM base AS runtime
WORKDIR /opt/app
COPY scripts/smoke_check.py ./smoke_check.py
# APP_HOST: listen on the container's interfaces (the process default stays loopback).
# Throughput comes from APP_WORKERS inference processes (default: one per CPU core), so
# each one runs single-threaded; oversubscribing cores only adds latency.
ENV APP_HOST=0.0.0.0 \
    APP_PORT=8000 \
    APP_DEVICE=cpu \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1
USER 10001:10001
EXPOSE 8000
# Liveness only (the process answers); readiness is /readyz, for load balancers.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:' + os.environ.get('APP_PORT', '8000') + '/healthz', timeout=4)"]
CMD ["python", "-m", "app"]
