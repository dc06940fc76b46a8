"""The ConfigMap that carries the Grafana dashboards, rendered from manifests/monitoring/dashboards/*.json.

Grafana's dashboard sidecar (kiwigrid/k8s-sidecar, as the grafana and kube-prometheus-stack charts
run it) loads every ConfigMap labelled `grafana_dashboard: "1"`; `grafana_folder` is the folder
annotation those charts set (`sidecar.dashboards.folderAnnotation`). The JSON files are the source;
`python tests/helpers/dashboards_configmap.py` rewrites the ConfigMap and the tests check it is current.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "manifests" / "monitoring"
DASHBOARDS = MONITORING / "dashboards"
CONFIGMAP = MONITORING / "dashboards-configmap.yaml"

HEADER = """\
# Generated from manifests/monitoring/dashboards/*.json by `python tests/helpers/dashboards_configmap.py`;
# edit the JSON files and rerun it. Grafana's dashboard sidecar loads ConfigMaps labelled
# grafana_dashboard: "1" (set its search namespace to include this one, or copy it to Grafana's).
apiVersion: v1
kind: ConfigMap
metadata:
  name: respublica-dashboards
  namespace: respublica-system
  labels:
    grafana_dashboard: "1"
    app.kubernetes.io/name: respublica
    app.kubernetes.io/component: monitoring
    app.kubernetes.io/part-of: respublica
  annotations:
    grafana_folder: respublica
data:
"""


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def render() -> str:
    parts = [HEADER]
    for path in dashboard_files():
        parts.append(f"  {path.name}: |\n")
        for line in path.read_text().splitlines():
            parts.append(f"    {line}\n" if line else "\n")
    return "".join(parts)


if __name__ == "__main__":
    CONFIGMAP.write_text(render())
    sys.stdout.write(f"wrote {CONFIGMAP.relative_to(REPO)}\n")
