"""Lints and renders the Plexus Helm charts offline (helm-python-sdk, the Helm
SDK with no cluster) and writes each rendered manifest set and node/coordinator
config to OUT for kubernetes-validate and the Rust tests. Run by
deploy/check.sh with the tools' Python."""

import json
import pathlib
import sys

import helm_python as helm

HERE = pathlib.Path(__file__).resolve().parent

# (chart, case name, values, expected to render?)
CASES = [
    ("plexus-coordinator", "default", None, True),
    (
        "plexus-coordinator",
        "ha-postgres",
        {
            "replicaCount": 2,
            "database": {
                "url": "postgres://plexus@db.example:5432/plexus?sslmode=verify-full",
                "passwordSecret": {"name": "plexus-db", "key": "password"},
            },
            "service": {"type": "LoadBalancer"},
        },
        True,
    ),
    # Two coordinators cannot share a SQLite file: the chart refuses.
    ("plexus-coordinator", "ha-sqlite-refused", {"replicaCount": 2}, False),
    ("plexus-node", "default", None, True),
    (
        "plexus-node",
        "metrics-review",
        {
            "config": {
                "id": "hospital-b",
                "coordinator": {"serverName": "coordinator.network.example"},
                "policy": {
                    "review": ["*"],
                    "studies": {
                        "aaa-outcomes": {
                            "definitionHashes": ["ab" * 32],
                            "analyses": ["count", "summary"],
                        }
                    },
                },
            },
            "metrics": {"service": {"enabled": True}},
        },
        True,
    ),
]


def main() -> int:
    out = pathlib.Path(sys.argv[1])
    failures = 0
    for chart_name, case, values, renders in CASES:
        path = HERE / chart_name
        what = f"{chart_name} ({case})"
        report = helm.lint(str(path), values, strict=True)
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        if renders and (problems or report.get("errors")):
            print(f"helm lint {what}: {json.dumps(report, indent=2)}")
            failures += 1
        chart = helm.Chart.load(str(path))
        try:
            manifests = chart.render(values, name="plexus", namespace="plexus", is_install=True)
        except helm.HelmError as e:
            if renders:
                print(f"helm template {what}: {e}")
                failures += 1
            else:
                print(f"ok   {what}: refused as it should be ({str(e).splitlines()[0][:160]})")
            continue
        if not renders:
            print(f"helm template {what}: rendered, but the chart should refuse these values")
            failures += 1
            continue
        dest = out / chart_name / case
        dest.mkdir(parents=True, exist_ok=True)
        count = 0
        for name, text in sorted(manifests.items()):
            if not name.endswith(".yaml") or not text.strip():
                continue
            (dest / pathlib.Path(name).name).write_text(text)
            count += 1
            # The rendered config files, for the Rust test that parses them.
            import yaml  # kubernetes-validate depends on PyYAML

            doc = yaml.safe_load(text)
            if doc and doc.get("kind") == "ConfigMap":
                for key, body in doc.get("data", {}).items():
                    if key.endswith(".toml"):
                        (dest / key).write_text(body)
        print(f"ok   {what}: lint clean, {count} manifests rendered into {dest}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
