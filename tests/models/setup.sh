#!/usr/bin/env bash
# The model test tools (tests/src/tools.rs MODEL_TOOLS): ONNX Runtime, which
# scores the ONNX files Plexus exports, onnx, whose checker validates them,
# LightGBM and scikit-learn, the centralised baseline of plexus-bench
# trees, and skl2onnx and onnxmltools, which export the models plexus-onnx's
# tests load, pinned in tests/models/requirements.txt.
#
#   tests/models/setup.sh --install   create the venv and install the tools if missing or out of date
#   tests/models/setup.sh             check that the venv is complete
#
# The venv lives in ${PLEXUS_MODEL_TOOLS:-~/.cache/plexus-model-tools}. On
# success the last line on stdout is the venv's python (the tests take it
# from PLEXUS_MODEL_PYTHON); everything else goes to stderr. Without a
# complete venv the script says how to install it and exits 1.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
requirements="$here/requirements.txt"
TOOLS="${PLEXUS_MODEL_TOOLS:-$HOME/.cache/plexus-model-tools}"
PY="$TOOLS/bin/python"
STAMP="$TOOLS/.plexus-model-stamp"

wanted="$(sha256sum "$requirements" | cut -c1-64)"

have_tools() {
    [ -x "$PY" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$wanted" ] &&
        "$PY" -c 'import onnx, onnxruntime, numpy, lightgbm, sklearn, skl2onnx, onnxmltools' 2>/dev/null
}

if [ "${1:-}" = "--install" ]; then
    shift
    if ! have_tools; then
        echo "installing the model test tools into $TOOLS" >&2
        mkdir -p "$TOOLS"
        [ -x "$PY" ] || python3 -m venv "$TOOLS"
        rm -f "$STAMP"
        "$PY" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
        echo "$wanted" >"$STAMP"
    fi
fi

if ! have_tools; then
    echo "the model test tools are not installed in $TOOLS (or not as tests/models/requirements.txt pins them); run tests/models/setup.sh --install (or set PLEXUS_MODEL_TOOLS)" >&2
    exit 1
fi

echo "$PY"
