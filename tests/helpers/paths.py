"""Where the repository's files are, for tests that read them."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLES_DIR = REPO / "manifests" / "samples"
SAMPLES = sorted(SAMPLES_DIR.glob("*.yaml"))
CRD_FILE = REPO / "manifests" / "crds" / "respublica.dev_modeldeployments.yaml"
