#!/bin/sh
# A Python virtual environment with DuckDB for `plexus-bench peers`, in
# ~/.cache/plexus-bench-tools/python (PLEXUS_BENCH_TOOLS overrides the folder).
set -eu
tools="${PLEXUS_BENCH_TOOLS:-$HOME/.cache/plexus-bench-tools}"
if ! "$tools/python/bin/python" -c 'import duckdb' 2>/dev/null; then
    python3 -m venv "$tools/python"
    "$tools/python/bin/pip" install --quiet 'duckdb==2.0.1'
fi
"$tools/python/bin/python" -c 'import duckdb; print("DuckDB", duckdb.__version__, "in", "'"$tools"'/python")'
