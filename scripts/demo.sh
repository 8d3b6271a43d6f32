#!/usr/bin/env bash
# `make demo`: synth data -> train -> export + sign -> import + activate -> serve.
set -euo pipefail
echo "The demo needs the training package and the service, which are not in this release yet." >&2
echo "What works today: the bundle contract and the model store (see README: 'The model store CLI')." >&2
exit 1
