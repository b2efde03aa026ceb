#!/usr/bin/env bash
# Installs everything Tributary needs on a Debian machine with Python 3.11+, Java 17+ and Maven:
#   - Debian packages that are missing (Redis, PostgreSQL, Prometheus), with apt-get when run as root
#   - a virtual environment in .venv with every package of the workspace (uv, locked versions)
#   - Triton Inference Server (CPU, from PyPI's nvidia-pytriton) in .tributary/triton/venv
#   - the Kafka broker jars from Maven Central (deploy/kafka.sh fetch)
# Safe to run again: each step is skipped when already done.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"
say() { echo "install: $*" >&2; }
die() { say "error: $*"; exit 1; }

# command -> Debian package that provides it
declare -A DEBIAN=(
  [redis-server]=redis-server
  [/usr/lib/postgresql/*/bin/postgres]=postgresql
  [prometheus]=prometheus
)

missing=()
for cmd in "${!DEBIAN[@]}"; do
  if [[ "$cmd" == /* ]]; then
    # shellcheck disable=SC2086
    compgen -G $cmd >/dev/null || missing+=("${DEBIAN[$cmd]}")
  else
    command -v "$cmd" >/dev/null || missing+=("${DEBIAN[$cmd]}")
  fi
done
if ((${#missing[@]})); then
  say "Debian packages to install: ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || die "apt-get could not install ${missing[*]}"
  # The packages' own services are not used: tests and the stack start their own instances.
  for svc in redis-server postgresql prometheus; do
    $sudo service "$svc" stop >/dev/null 2>&1 || true
  done
fi

python="${PYTHON:-python3}"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python 3.11 or newer is required ($python is $("$python" --version 2>&1))"

# uv lives in its own small environment so that `uv sync` never removes itself from .venv.
uv=".tributary/bootstrap/bin/uv"
if [[ ! -x "$uv" ]]; then
  say "bootstrapping uv"
  "$python" -m venv .tributary/bootstrap
  .tributary/bootstrap/bin/pip install -q "uv>=0.5" >&2
fi
say "syncing .venv with uv.lock"
UV_PYTHON="$python" "$uv" sync --locked --all-packages --quiet >&2 \
  || die "uv sync failed (if you changed a pyproject.toml, run: $uv lock)"

# Triton Inference Server on CPU for tests, benchmarks and `deploy/tributary up`: the tritonserver
# binary of PyPI's nvidia-pytriton, in its own environment (it pins numpy<2; the workspace does not).
# Its Python backend runs the registry's ONNX files with this environment's onnxruntime (deploy/triton.py).
triton_req="nvidia-pytriton==0.7.0 numpy==1.26.4 onnxruntime==1.31.1"
triton_venv=".tributary/triton/venv"
if [[ ! -f "$triton_venv/.installed" || "$(cat "$triton_venv/.installed")" != "$triton_req" ]]; then
  say "installing Triton ($triton_req) into $triton_venv"
  rm -rf "$triton_venv"
  "$python" -m venv "$triton_venv"
  # shellcheck disable=SC2086
  "$triton_venv/bin/pip" install -q --disable-pip-version-check $triton_req >&2 \
    || die "could not install $triton_req into $triton_venv"
  echo "$triton_req" > "$triton_venv/.installed"
fi

"$here/kafka.sh" fetch
say "done"
