"""The Helm chart rendered offline (helm-python-sdk: Helm's own Go library, no `helm` binary), and
manifests/operator + manifests/gateway generated from its defaults: one source of truth.

`scripts/manifests` writes the files (`python -m helpers.chart`) and refreshes the chart's copy of the
CRD from manifests/crds/; `--check` only compares, and
tests/charts/test_generated.py fails when they differ from a fresh render.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import helm_python
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "respublica"
MANIFESTS = REPO / "manifests"
RELEASE = "respublica"
NAMESPACE = "respublica-system"
REGENERATE = "scripts/manifests"
# The CRD generated from the models (`respublica crd`), and the chart's byte copy of it.
CRD = MANIFESTS / "crds" / "respublica.dev_modeldeployments.yaml"
CHART_CRD = CHART / "files" / "crds" / CRD.name
# The alerts and dashboards are written once, in manifests/monitoring/ (tests/monitoring checks their
# queries against real scrapes); the chart ships byte copies under files/monitoring/.
MONITORING = MANIFESTS / "monitoring"
CHART_MONITORING = CHART / "files" / "monitoring"


def chart_copies() -> dict[Path, Path]:
    """Each file the chart carries a byte copy of: {source: copy}."""
    copies = {CRD: CHART_CRD, MONITORING / "prometheusrule.yaml": CHART_MONITORING / "prometheusrule.yaml"}
    for dashboard in sorted((MONITORING / "dashboards").glob("*.json")):
        copies[dashboard] = CHART_MONITORING / "dashboards" / dashboard.name
    return copies


def stale_copies() -> list[Path]:
    """The chart's copies that differ from their source, or that have no source any more."""
    copies = chart_copies()
    stale = [
        copy
        for source, copy in copies.items()
        if not copy.exists() or copy.read_bytes() != source.read_bytes()
    ]
    orphans = [p for p in (CHART_MONITORING / "dashboards").glob("*.json") if p not in copies.values()]
    return stale + orphans


# The defaults, plus what plain `kubectl apply -f` needs that `helm install --create-namespace`
# does not: the namespace as an object.
MANIFEST_VALUES: dict[str, Any] = {"namespace": {"create": True}}
# manifests/operator/namespaced/rbac.yaml: the operator's Role for one watched namespace.
NAMESPACED_VALUES: dict[str, Any] = {**MANIFEST_VALUES, "operator": {"watchNamespaces": ["ai"]}}

# Which template goes to which file, in `kubectl apply -f <folder>/` order (names sort). A template
# that renders something and is not listed here (nor in ELSEWHERE) is an error: nothing is dropped.
LAYOUT: dict[str, tuple[str, ...]] = {
    "operator/00-namespace.yaml": ("namespace.yaml",),
    "operator/10-serviceaccount.yaml": ("operator/serviceaccount.yaml",),
    "operator/20-rbac.yaml": ("operator/rbac.yaml",),
    "operator/30-deployment.yaml": ("operator/deployment.yaml",),
    "operator/40-networkpolicy.yaml": ("operator/networkpolicy.yaml",),
    "gateway/00-namespace.yaml": ("namespace.yaml",),
    "gateway/10-serviceaccount.yaml": ("gateway/serviceaccount.yaml",),
    "gateway/20-rbac.yaml": ("gateway/rbac.yaml",),
    "gateway/30-configmap.yaml": ("gateway/configmap.yaml",),
    "gateway/40-deployment.yaml": ("gateway/deployment.yaml",),
    "gateway/50-service.yaml": ("gateway/service.yaml",),
    "gateway/60-autoscaling.yaml": ("gateway/hpa.yaml", "gateway/pdb.yaml"),
    "gateway/70-networkpolicy.yaml": ("gateway/networkpolicy.yaml",),
    "gateway/80-redis.yaml": ("redis/statefulset.yaml", "redis/networkpolicy.yaml"),
}
# Rendered by default but written elsewhere: the CRD is manifests/crds/ (generated from the models
# by `respublica crd`; the chart carries a byte copy, checked by tests/charts).
ELSEWHERE = {"crd.yaml"}
NAMESPACED_FILE = "operator/namespaced/rbac.yaml"
GENERATED_FOLDERS = ("operator", "gateway")


def render(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    upgrade: bool = False,
) -> dict[str, str]:
    """Every template's text by its path under templates/ (empty ones left out)."""
    key = json.dumps(dict(values or {}), sort_keys=True)
    return dict(_render(key, release, namespace, upgrade))


@functools.lru_cache(maxsize=64)
def _render(values: str, release: str, namespace: str, upgrade: bool) -> Mapping[str, str]:
    """One render per distinct input (the tests render the same values many times)."""
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(
            values=json.loads(values),
            name=release,
            namespace=namespace,
            revision=2 if upgrade else 1,
            is_install=not upgrade,
            is_upgrade=upgrade,
        )
        prefix = f"{chart.name}/templates/"
    out = {}
    for path, text in rendered.items():
        assert path.startswith(prefix), path
        if text.strip():
            out[path.removeprefix(prefix)] = text
    return MappingProxyType(out)


def objects(templates: Mapping[str, str]) -> list[dict[str, Any]]:
    """The Kubernetes objects of a render, in template order."""
    return [doc for _, text in sorted(templates.items()) for doc in yaml.safe_load_all(text) if doc]


def _header(values: Mapping[str, Any]) -> str:
    extra = "" if values == MANIFEST_VALUES else f" and {_flat(values)}"
    return (
        f"# Generated from charts/respublica (release {RELEASE}, namespace {NAMESPACE}): its default\n"
        f"# values with namespace.create=true{extra}. Do not edit; regenerate: {REGENERATE}\n"
    )


def _flat(values: Mapping[str, Any], prefix: str = "") -> str:
    parts = []
    for key, value in values.items():
        if key == "namespace" and not prefix:
            continue
        if isinstance(value, Mapping):
            parts.append(_flat(value, f"{prefix}{key}."))
        else:
            parts.append(f"{prefix}{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")
    return ", ".join(parts)


def _join(header: str, texts: list[str]) -> str:
    bodies = [text.strip("\n") + "\n" for text in texts]
    return header + "---\n".join(bodies)


def manifest_files() -> dict[str, str]:
    """What manifests/operator and manifests/gateway should hold: relative path -> text."""
    templates = render(MANIFEST_VALUES)
    listed = {t for ts in LAYOUT.values() for t in ts}
    stray = set(templates) - listed - ELSEWHERE
    if stray:
        raise ValueError(f"templates rendered by default but placed in no file (LAYOUT): {sorted(stray)}")
    files = {}
    for path, names in LAYOUT.items():
        texts = [templates[name] for name in names if name in templates]
        if texts:
            files[path] = _join(_header(MANIFEST_VALUES), texts)
    namespaced = render(NAMESPACED_VALUES)
    files[NAMESPACED_FILE] = _join(_header(NAMESPACED_VALUES), [namespaced["operator/rbac.yaml"]])
    return files


def committed_files() -> dict[str, str]:
    """What manifests/operator and manifests/gateway hold now."""
    return {
        str(path.relative_to(MANIFESTS)): path.read_text()
        for folder in GENERATED_FOLDERS
        for path in sorted((MANIFESTS / folder).rglob("*.yaml"))
    }


def write() -> list[str]:
    """Bring manifests/ in line with the chart, and the chart's CRD copy in line with manifests/crds/;
    the paths changed, added or removed."""
    wanted, current = manifest_files(), committed_files()
    changed = []
    copies = chart_copies()
    for copy in stale_copies():
        source = next((src for src, dst in copies.items() if dst == copy), None)
        if source is None:
            copy.unlink()
            changed.append(f"removed {copy.relative_to(REPO)}")
        else:
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(source.read_bytes())
            changed.append(f"copied {source.relative_to(REPO)} to {copy.relative_to(REPO)}")
    for path in sorted(set(current) - set(wanted)):
        (MANIFESTS / path).unlink()
        changed.append(f"removed {path}")
    for path, text in sorted(wanted.items()):
        if current.get(path) != text:
            (MANIFESTS / path).parent.mkdir(parents=True, exist_ok=True)
            (MANIFESTS / path).write_text(text)
            changed.append(f"wrote {path}")
    return changed


def main(argv: list[str]) -> int:
    if argv not in ([], ["--check"]):
        print(f"usage: {REGENERATE} [--check]", file=sys.stderr)
        return 2
    if argv == ["--check"]:
        wanted, current = manifest_files(), committed_files()
        stale = sorted(p for p in set(wanted) | set(current) if wanted.get(p) != current.get(p))
        for copy in stale_copies():
            print(f"{copy.relative_to(REPO)} is not a copy of its file under manifests/", file=sys.stderr)
            stale.append(str(copy.relative_to(REPO)))
        for path in stale:
            print(f"manifests/{path} differs from the chart's render", file=sys.stderr)
        if stale:
            print(f"regenerate: {REGENERATE}", file=sys.stderr)
        return 1 if stale else 0
    for line in write():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
