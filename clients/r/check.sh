#!/usr/bin/env bash
# Builds and checks the R package: R CMD build, R CMD check --no-manual
# (which runs the testthat tests), failing on any ERROR or WARNING.
#
#   clients/r/check.sh [--install]
#
# --install (or CI=true) first installs the Debian packages it needs when
# they are missing (apt-get, as root). Live tests run when PLEXUS_BIN names
# a plexus binary with `demo --serve`; without it they are skipped, or fail
# when CI=true.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
packages=(r-base-core r-cran-httr2 r-cran-jsonlite r-cran-generics r-cran-survival
          r-cran-testthat r-cran-withr r-cran-processx r-cran-openssl openssl)
install=false
for arg in "$@"; do
  case "$arg" in
    --install) install=true ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "check.sh: unknown argument $arg (use --install)" >&2; exit 2 ;;
  esac
done
[[ "${CI:-}" == "true" ]] && install=true

start=$SECONDS
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if ! $install; then
    echo "check.sh: missing Debian packages: ${missing[*]}; run with --install (as root) or apt-get install them" >&2
    exit 1
  fi
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "== installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
  echo "== installed in $((SECONDS - start)) s"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/plexus-r-check.XXXXXX")"
echo "== R CMD build (in $work)"
cd "$work"
R CMD build --no-build-vignettes "$here"
tarball=$(ls plexus_*.tar.gz)

if [[ -n "${PLEXUS_BIN:-}" ]]; then
  echo "== live tests with PLEXUS_BIN=$PLEXUS_BIN"
else
  echo "== PLEXUS_BIN is not set: live tests are skipped$([[ "${CI:-}" == "true" ]] && echo ", and fail since CI=true")"
fi
echo "== R CMD check --no-manual $tarball"
status=0
_R_CHECK_FORCE_SUGGESTS_=false R CMD check --no-manual "$tarball" || status=$?

log=plexus.Rcheck/00check.log
rout=$(ls plexus.Rcheck/tests/testthat.Rout* 2>/dev/null | head -1 || true)
if [[ -n "$rout" ]]; then
  echo "== testthat ($rout)"
  # The summary line and every skip, failure and warning with its reason.
  sed -n '/^> test_check/,/^> proc.time/p' "$rout" | sed '1d;$d' | tail -n 120
fi
warnings=$(grep -cE '\.\.\. (WARNING|ERROR)$' "$log" || true)
notes=$(grep -cE '\.\.\. NOTE$' "$log" || true)
echo "== R CMD check: $warnings errors or warnings, $notes notes; log $work/$log"
grep -A12 -E '\.\.\. (WARNING|ERROR|NOTE)$' "$log" || true
echo "== check.sh took $((SECONDS - start)) s"
if ((status != 0 || warnings > 0)); then
  echo "check.sh: FAILED" >&2
  exit 1
fi
echo "check.sh: OK"
