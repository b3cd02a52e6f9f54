#!/usr/bin/env bash
# Tests the Python client (clients/python) in its own venv:
#   - pip installs ./clients/python (with the [test] extras when installing)
#   - pytest -q clients/python/tests: unit tests (a mocked coordinator, a
#     local HTTPS server) and, with PLEXUS_BIN (a plexus binary built with
#     the demo feature) or PLEXUS_CONNECT (a running demo's connect.json),
#     the live tests against `plexus demo --serve`
#
#   clients/python/check.sh --install   create the venv and install the test tools if missing, then test
#   clients/python/check.sh             test (the venv must exist)
#
# The venv lives in ${PLEXUS_CLIENT_TOOLS:-~/.cache/plexus-client-tools}/python.
# Without it the script says so and exits 77 (skipped); under CI=true it
# fails instead, and the live tests fail rather than skip without
# PLEXUS_BIN, so CI never passes by skipping.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

TOOLS="${PLEXUS_CLIENT_TOOLS:-$HOME/.cache/plexus-client-tools}"
VENV="$TOOLS/python"
PY="$VENV/bin/python"

have_tools() {
    [ -x "$PY" ] && "$PY" -c "
import importlib.util, sys
mods = ['pytest', 'httpx', 'pandas', 'statsmodels', 'lifelines', 'nbclient', 'ipykernel', 'cryptography', 'matplotlib']
sys.exit(any(importlib.util.find_spec(m) is None for m in mods))" 2>/dev/null
}

started=$(date +%s)

if [ "${1:-}" = "--install" ]; then
    shift
    if ! have_tools; then
        echo "installing the client's test tools into $VENV"
        mkdir -p "$TOOLS"
        python3 -m venv "$VENV"
        "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
        "$PY" -m pip install --quiet --disable-pip-version-check "./clients/python[test]"
    fi
fi

if ! have_tools; then
    echo "skipped: the client's test tools are not installed in $VENV; run clients/python/check.sh --install (or set PLEXUS_CLIENT_TOOLS)"
    if [ "${CI:-}" = "true" ]; then
        echo "(CI=true: the Python client must be tested)"
        exit 1
    fi
    exit 77
fi

echo "== pip install ./clients/python"
"$PY" -c "import setuptools" 2>/dev/null || "$PY" -m pip install --quiet --disable-pip-version-check setuptools
# This tree's client, not whatever the venv held (reinstalled when its files
# changed); no build isolation, so no package index is needed.
stamp="$(find clients/python/src clients/python/pyproject.toml -type f ! -name '*.pyc' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-64)"
if [ "$(cat "$VENV/.plexus-client-stamp" 2>/dev/null)" != "$stamp" ]; then
    "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall ./clients/python
    rm -rf clients/python/build clients/python/src/*.egg-info
    echo "$stamp" >"$VENV/.plexus-client-stamp"
fi
"$PY" -c "import plexus, sys; print('plexus-client', plexus.__version__, 'on Python', sys.version.split()[0])"

echo "== pytest clients/python/tests"
if [ -n "${PLEXUS_BIN:-}" ]; then
    echo "live tests with PLEXUS_BIN=$PLEXUS_BIN"
elif [ -n "${PLEXUS_CONNECT:-}" ]; then
    echo "live tests with PLEXUS_CONNECT=$PLEXUS_CONNECT"
else
    echo "no PLEXUS_BIN or PLEXUS_CONNECT: the live tests $([ "${CI:-}" = "true" ] && echo fail || echo are skipped)"
fi
export MPLBACKEND=Agg
set +e
"$PY" -m pytest -q -rxs -p no:cacheprovider clients/python/tests "$@"
status=$?
set -e
echo "clients/python/check.sh: $(($(date +%s) - started)) s"
exit $status
