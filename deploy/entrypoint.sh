#!/bin/sh
# Image entrypoint: turn secrets mounted as files into the variables the code reads, then
# exec the command (so it is PID 1 and gets the orchestrator's signals).
#   APP_ADMIN_TOKEN_FILE       -> APP_ADMIN_TOKEN
#   AWS_ACCESS_KEY_ID_FILE     -> AWS_ACCESS_KEY_ID
#   AWS_SECRET_ACCESS_KEY_FILE -> AWS_SECRET_ACCESS_KEY
# Setting both NAME and NAME_FILE is an error: one source of truth per secret.
set -eu
for name in APP_ADMIN_TOKEN AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; do
  eval "file=\${${name}_FILE:-}"
  [ -n "$file" ] || continue
  eval "direct=\${${name}:-}"
  if [ -n "$direct" ]; then
    echo "error: both $name and ${name}_FILE are set; set one" >&2
    exit 2
  fi
  if [ ! -r "$file" ]; then
    echo "error: ${name}_FILE=$file is not a readable file" >&2
    exit 2
  fi
  value=$(cat "$file")  # drops the trailing newline editors add
  export "$name=$value"
  unset "${name}_FILE"
done
exec "$@"
