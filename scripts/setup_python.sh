#!/usr/bin/env bash
# Creates the Python virtual environment .venv (at the project root) for the Python interop
# tests and the example examples/python/dump_activations.py:
#   scripts/setup_python.sh              numpy and safetensors (scripts/requirements-interop.txt)
#   scripts/setup_python.sh --with-torch also torch (CPU) and transformers
#                                        (scripts/requirements-models.txt)
# Environment: PYTHON (the interpreter that creates the environment, default python3),
# CROSSCODER_TORCH_INDEX (where torch comes from: default PyTorch's CPU wheel index; "pypi" for
# PyPI's default wheels, which on Linux x86-64 bring several GB of CUDA libraries).
# Running it again is quick: each requirement file is installed once, then recorded in a stamp
# file holding its SHA-256; a changed file is installed again.
set -euo pipefail
cd "$(dirname "$0")/.."

with_torch=0
for arg in "$@"; do
  case "$arg" in
    --with-torch) with_torch=1 ;;
    -h | --help)
      sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "setup_python.sh: unknown argument '$arg' (accepted: --with-torch, --help)" >&2
      exit 2
      ;;
  esac
done

python=${PYTHON:-python3}
venv=.venv
torch_index=${CROSSCODER_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}

if [[ ! -x "$venv/bin/python" ]]; then
  echo "setup_python.sh: creating $venv with $("$python" --version 2>&1) ($(command -v "$python"))"
  if ! "$python" -m venv "$venv"; then
    rm -rf "$venv"
    echo "setup_python.sh: '$python -m venv' failed; on Debian and Ubuntu install python3-venv" \
      "(apt-get install python3-venv) or set PYTHON to another interpreter" >&2
    exit 1
  fi
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

stamp_of() { echo "$venv/.stamp-$(basename "$1")"; }
hash_of() { sha256sum "$1" | cut -d' ' -f1; }

# True when requirement file $1 was installed as it is now.
installed() {
  local stamp
  stamp=$(stamp_of "$1")
  [[ -f "$stamp" && "$(cat "$stamp")" == "$(hash_of "$1")" ]]
}

# Installs requirement file $1 (extra pip arguments after it) and records it in its stamp.
install_requirements() {
  local file=$1
  shift
  echo "setup_python.sh: installing $file${*:+ (pip install $*)}"
  "${pip[@]}" install --quiet "$@" -r "$file"
  hash_of "$file" >"$(stamp_of "$file")"
}

# True when URL answers within a few seconds (the CPU index is unreachable on some networks,
# where pip would otherwise retry it for minutes).
reachable() {
  "$venv/bin/python" - "$1" <<'EOF'
import sys
import urllib.request

try:
    urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=5)
except Exception:
    sys.exit(1)
EOF
}

interop=scripts/requirements-interop.txt
if installed "$interop"; then
  echo "setup_python.sh: $interop already installed"
else
  install_requirements "$interop"
fi

if ((with_torch)); then
  models=scripts/requirements-models.txt
  if installed "$models"; then
    echo "setup_python.sh: $models already installed"
  elif [[ "$torch_index" != pypi ]] && reachable "$torch_index"; then
    install_requirements "$models" --extra-index-url "$torch_index"
  else
    if [[ "$torch_index" != pypi ]]; then
      echo "setup_python.sh: $torch_index is not reachable; taking torch from the default index" \
        "(on Linux x86-64 its wheels bring CUDA libraries: a download of several GB)"
    fi
    install_requirements "$models"
  fi
fi

echo "setup_python.sh: ready: $venv/bin/python ($("$venv/bin/python" --version 2>&1))"
