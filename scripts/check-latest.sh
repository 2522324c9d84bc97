#!/usr/bin/env bash
# Would a newcomer who installs tonight's releases still get a green suite?
#   bash scripts/check-latest.sh            # the fast lane (pytest -m "not slow")
#   bash scripts/check-latest.sh --full     # the whole suite
# Builds .venv-latest with no constraints (the newest release of every dependency, torch kept at
# the CPU pin), runs the tests there, and prints the versions that differ from constraints.txt.
# Run it before every submission; when it is green, scripts/freeze-constraints.sh .venv-latest
# moves the tested set forward.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-latest
rm -rf "$venv"
CORD_VENV=$venv CORD_CONSTRAINTS=none bash scripts/setup.sh --dev
echo "check-latest: versions that differ from constraints.txt:"
"$venv/bin/python" -m pip freeze 2>/dev/null | grep -v -e '^-e ' -e '^#' | LC_ALL=C sort -f > "$venv/freeze.txt"
grep -v '^#' constraints.txt | sed -e 's/==.*//' | while read -r name; do
  pinned=$(grep -i "^$name==" constraints.txt | head -1)
  now=$(grep -i "^$name==" "$venv/freeze.txt" | sed -e 's/+.*//' | head -1)
  [ -n "$now" ] && [ "$now" != "$pinned" ] && echo "  $pinned -> ${now#*==}"
done || true
if [ "${1:-}" = "--full" ]; then
  "$venv/bin/python" -m pytest -q
else
  "$venv/bin/python" -m pytest -q -m "not slow"
fi
