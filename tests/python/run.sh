#!/usr/bin/env bash
# Runs the Python (grpcio) client test suite against the claims-ledger binary.
#
#   tests/python/run.sh [pytest args...]
#
# Environment:
#   CLAIMS_LEDGER_BIN   server binary (default: <repo>/target/debug/claims-ledger; build it first)
#   CLAIMS_LEDGER_VENV  virtualenv to use/create (default: <repo>/.venv-py)
#   PYTHON              interpreter used to create the venv (default: python3)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${CLAIMS_LEDGER_VENV:-$repo/.venv-py}"
req="$repo/tests/python/requirements.txt"

if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
  # Keep the venv out of git even though the repo's .gitignore does not list it.
  printf '*\n' > "$venv/.gitignore"
fi

# Reinstall only when requirements.txt changed since the last install.
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  printf '%s\n' "$want" > "$stamp"
fi

cd "$repo"
set +e
"$venv/bin/python" -m pytest -q tests/python "$@"
status=$?
set -e
exit "$status"
