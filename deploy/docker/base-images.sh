#!/usr/bin/env bash
# Local stand-ins for the upstream images compose.yml names, made from Debian's
# packages, for machines that cannot pull from a registry (`make base-images`).
#
#   llmgw-local/python:3.11        python:3.11-slim-bookworm: Debian 12's Python 3.11
#                                  (mmdebstrap + docker import); the images' run stage.
#   llmgw-local/python-build:3.11  the same plus this machine's pip configuration, its CA
#                                  bundle and its local wheel folder (the CPU torch), so
#                                  pip in a build stage resolves exactly as pip here does.
#   llmgw-local/redis:7.0          redis:7.4-alpine's role, Debian's redis-server.
#   llmgw-local/prometheus:2.42    prom/prometheus's role, Debian's prometheus.
#
# Grafana has no Debian package, so it has no stand-in: the local compose run
# leaves that one service out (compose.yml keeps it). Each image is made only
# when absent; FORCE=1 remakes them. Tags are what `make compose-up LOCAL_IMAGES=1`
# passes to compose.yml.
set -euo pipefail
cd "$(dirname "$0")"

say() { printf 'base-images: %s\n' "$*" >&2; }
have() { [[ -z "${FORCE:-}" ]] && docker image inspect "$1" >/dev/null 2>&1; }

command -v docker >/dev/null || { say "needs docker (Debian: apt-get install docker.io)"; exit 1; }
docker info >/dev/null 2>&1 || { say "no Docker engine reachable (start dockerd)"; exit 1; }

PY=llmgw-local/python:3.11
if ! have "$PY"; then
  command -v mmdebstrap >/dev/null || { say "needs mmdebstrap (Debian: apt-get install mmdebstrap)"; exit 1; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  say "making $PY from Debian bookworm with mmdebstrap (about 30 s)"
  mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-venv,python-is-python3,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    bookworm "$tmp/rootfs.tar"
  docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tmp/rootfs.tar" "$PY" >/dev/null
  rm -rf "$tmp"
  trap - EXIT
fi

BUILD=llmgw-local/python-build:3.11
if ! have "$BUILD"; then
  say "making $BUILD (this machine's pip configuration, CA bundle and wheel folder)"
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  cert=$(pip3 config get global.cert 2>/dev/null || python3 -m pip config get global.cert 2>/dev/null || echo /etc/ssl/certs/ca-certificates.crt)
  cp "$cert" "$ctx/ca-certificates.crt"
  mkdir -p "$ctx/wheels"
  links=$(python3 -m pip config get global.find-links 2>/dev/null || true)
  for dir in $links; do [[ -d "$dir" ]] && cp "$dir"/*.whl "$ctx/wheels/" 2>/dev/null || true; done
  cp python-build.Dockerfile "$ctx/Dockerfile"
  docker build --quiet --build-arg BASE="$PY" -t "$BUILD" "$ctx" >/dev/null
  rm -rf "$ctx"
  trap - EXIT
fi

for name in redis prometheus; do
  tag=$(sed -n 's/^# tag: //p' "$name.Dockerfile")
  if ! have "$tag"; then
    say "making $tag from Debian's package"
    docker build --quiet --build-arg BASE="$PY" -t "$tag" -f "$name.Dockerfile" . >/dev/null
  fi
done
say "ready: $(docker image ls --format '{{.Repository}}:{{.Tag}} ({{.Size}})' 'llmgw-local/*' | paste -sd ' ')"
