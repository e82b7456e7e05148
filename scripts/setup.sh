# Sourced by scripts/quickstart and scripts/test: create .venv and install kdx into it, once.
# Idempotent: pip runs again only when pyproject.toml changes (a stamp holds its hash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${KDX_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "kdx: creating virtual environment in $VENV" >&2
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.kdx-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "kdx: installing kdx and its dependencies into $VENV (first time: several minutes)" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]" >&2
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
# The flag rows kdx's parsers read instead of importing torch (explorer/cli/flags.py): derived now, once per
# source change, so that the first bad flag a user types is answered as fast as the rest.
"$VENV/bin/python" -c "from explorer.cli.flags import flag_rows; flag_rows()"
