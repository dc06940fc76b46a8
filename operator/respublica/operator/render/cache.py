"""The model cache: a PersistentVolumeClaim, filled once by a download Job, shared by the replicas.

Replicas then read the weights from the volume with the hub switched off, instead of each one
downloading them at start. The Job's name carries a digest of what it downloads: a Job's pod
template cannot change, so a new revision gets a new Job (into its own directory of the cache).
"""

from __future__ import annotations

import hashlib

from respublica.api.models import ModelDeployment
from respublica.operator.render.common import (
    Obj,
    container_security_context,
    image_ref,
    metadata,
    pod_security_context,
    pull_secrets,
    usage_stats_env,
)
from respublica.operator.render.kinds import CACHE_CLAIM, DOWNLOAD_JOB
from respublica.operator.render.options import RenderOptions
from respublica.operator.render.storage import (
    CACHE_VOLUME,
    COMPLETE_MARKER,
    cache_claim_name,
    cache_model_path,
    hf_repository,
)

COMPONENT = "model-cache"

# Downloads one repository at one revision, then writes the marker the replicas wait for. Arguments
# come from argv, never spliced into the code.
DOWNLOAD_SCRIPT = """\
import pathlib, sys
from huggingface_hub import snapshot_download
repo, revision, dest, marker = sys.argv[1:5]
done = pathlib.Path(dest, marker)
if not done.exists():
    snapshot_download(repo_id=repo, revision=revision, local_dir=dest)
    done.write_text(revision + "\\n")
print(f"{repo}@{revision} is in {dest}")
"""


def download_job_name(md: ModelDeployment) -> str:
    what = f"{md.spec.model.source}@{md.spec.model.revision}"
    return f"{md.metadata.name}-download-{hashlib.sha256(what.encode()).hexdigest()[:8]}"


def cache_objects(md: ModelDeployment, options: RenderOptions) -> list[Obj]:
    """The cache claim and its download Job; nothing when the spec asks for no cache."""
    cache = md.spec.cache
    if cache is None:
        return []
    claim_spec: Obj = {
        "accessModes": [cache.access_mode],
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class_name is not None:
        claim_spec["storageClassName"] = cache.storage_class_name
    claim: Obj = {
        **CACHE_CLAIM.type_meta(),
        "metadata": metadata(md, cache_claim_name(md), COMPONENT),
        "spec": claim_spec,
    }
    return [claim, _download_job(md, options)]


def _download_job(md: ModelDeployment, options: RenderOptions) -> Obj:
    env: list[Obj] = [
        *usage_stats_env(),
        # Non-root with no writable home: keep the hub's bookkeeping on the scratch volume.
        {"name": "HF_HOME", "value": "/tmp/hf-home"},
    ]
    if options.hf_token_secret:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": options.hf_token_secret, "key": "token", "optional": True}
                },
            }
        )
    container: Obj = {
        "name": "download",
        "image": image_ref(options.downloader_image, options),
        "imagePullPolicy": options.image_pull_policy,
        "command": ["python", "-c", DOWNLOAD_SCRIPT],
        "args": [
            hf_repository(md),
            str(md.spec.model.revision),
            cache_model_path(md, options),
            COMPLETE_MARKER,
        ],
        "env": env,
        "resources": {
            "requests": {"cpu": "500m", "memory": "1Gi"},
            "limits": {"cpu": "2", "memory": "4Gi"},
        },
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": CACHE_VOLUME, "mountPath": options.cache_mount_path},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    pod_spec: Obj = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(options),
        "containers": [container],
        "volumes": [
            {"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": cache_claim_name(md)}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    secrets = pull_secrets(options)
    if secrets:
        pod_spec["imagePullSecrets"] = secrets
    meta = metadata(md, download_job_name(md), COMPONENT)
    return {
        **DOWNLOAD_JOB.type_meta(),
        "metadata": meta,
        "spec": {
            "backoffLimit": options.download_backoff_limit,
            "template": {"metadata": {"labels": dict(meta["labels"])}, "spec": pod_spec},
        },
    }
