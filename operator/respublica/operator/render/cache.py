"""The model cache: a PersistentVolumeClaim, filled once by a download Job, shared by the replicas.

Replicas then read the weights from the volume with the hub switched off, instead of each one
downloading them at start. The Job's name carries a digest of what it downloads: a Job's pod
template cannot change, so a new revision gets a new Job (into its own directory of the cache).

With `spec.model.digest` the download runs as an init container and a second step, `verify`, runs
`respublica digest --expect <digest> --mark <marker> <dir>` in the respublica image: the files are
hashed by the code that defines the digest (respublica.api.model_digest), and only a match writes the
completion marker the replicas wait for. A mismatch exits with MISMATCH_EXIT_CODE, which the Job's
podFailurePolicy turns into a failed Job at once (a retry would hash the same files); the message,
naming both digests, is the container's termination message (FallbackToLogsOnError), read back by
the operator's status (reason DigestMismatch).
"""

from __future__ import annotations

import hashlib

from respublica.api.model_digest import MISMATCH_EXIT_CODE
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
from respublica.operator.render.options import DEFAULT_RESPUBLICA_IMAGE, RenderOptions
from respublica.operator.render.storage import (
    CACHE_VOLUME,
    COMPLETE_MARKER,
    ca_bundle,
    cache_claim_name,
    cache_model_path,
    download_env,
    hf_repository,
)

COMPONENT = "model-cache"
DOWNLOAD_CONTAINER = "download"
VERIFY_CONTAINER = "verify"
# With a digest, the download's own marker: the files are in place but not yet verified. It starts
# with "." so the digest does not cover it.
DOWNLOADED_MARKER = ".respublica-downloaded"

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


# Copies an s3:// folder with pyarrow's S3 filesystem: Ray Serve LLM reads object storage through
# pyarrow.fs (ray/llm/_internal/common/utils/cloud_filesystem/pyarrow_filesystem.py), so every Ray
# LLM image has it; neither boto3's CLI nor `aws` is promised there. The endpoint (path-style, as
# MinIO and Ceph want) and the CA bundle are passed explicitly: pyarrow's S3 client does not read
# AWS_ENDPOINT_URL_S3 or AWS_CA_BUNDLE on every version. Keys come from AWS_ACCESS_KEY_ID and
# AWS_SECRET_ACCESS_KEY (the AWS SDK's own chain).
S3_DOWNLOAD_SCRIPT = """\
import os, pathlib, sys
from urllib.parse import urlparse
import pyarrow.fs as pafs
source, dest, marker = sys.argv[1:4]
done = pathlib.Path(dest, marker)
if not done.exists():
    options = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3")
    if endpoint:
        url = urlparse(endpoint)
        options.update(endpoint_override=url.netloc, scheme=url.scheme,
                       region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    if os.environ.get("AWS_CA_BUNDLE"):
        options["tls_ca_file_path"] = os.environ["AWS_CA_BUNDLE"]
    s3 = pafs.S3FileSystem(**options)
    pathlib.Path(dest).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(source.removeprefix("s3://").strip("/"), dest, source_filesystem=s3,
                    destination_filesystem=pafs.LocalFileSystem())
    done.write_text(source + "\\n")
print(f"{source} is in {dest}")
"""


def download_job_name(md: ModelDeployment) -> str:
    what = f"{md.spec.model.source}@{md.spec.model.revision}"
    if md.spec.model.digest is not None:
        # A new digest is a new check: a Job's pod template cannot change, so it is a new Job.
        what += f"#{md.spec.model.digest}"
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
    env += download_env(md, options)
    ca = ca_bundle(md, options)
    if ca is not None:
        env += ca.env
    digest = md.spec.model.digest
    model_dir = cache_model_path(md, options)
    mounts: list[Obj] = [
        {"name": CACHE_VOLUME, "mountPath": options.cache_mount_path},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    container: Obj = {
        "name": DOWNLOAD_CONTAINER,
        "image": image_ref(options.downloader_image, options),
        "imagePullPolicy": options.image_pull_policy,
        **_download_command(md, model_dir, COMPLETE_MARKER if digest is None else DOWNLOADED_MARKER),
        "env": env,
        "resources": {
            "requests": {"cpu": "500m", "memory": "1Gi"},
            "limits": {"cpu": "2", "memory": "4Gi"},
        },
        "securityContext": container_security_context(),
        # A failed download's last log lines (a 401, a missing revision) become the termination
        # message the operator's status quotes.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [*mounts, *([ca.mount] if ca is not None else [])],
    }
    pod_spec: Obj = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(options),
        "containers": [container],
        "volumes": [
            {"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": cache_claim_name(md)}},
            {"name": "tmp", "emptyDir": {}},
            *([ca.volume] if ca is not None else []),
        ],
    }
    job_spec: Obj = {"backoffLimit": options.download_backoff_limit}
    if digest is not None:
        # Download first (an init container), then verify; only `verify` writes the marker.
        pod_spec["initContainers"] = [container]
        pod_spec["containers"] = [_verify_container(model_dir, digest, mounts, options)]
        job_spec["podFailurePolicy"] = {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": VERIFY_CONTAINER,
                        "operator": "In",
                        "values": [MISMATCH_EXIT_CODE],
                    },
                }
            ]
        }
    secrets = pull_secrets(options)
    if secrets:
        pod_spec["imagePullSecrets"] = secrets
    meta = metadata(md, download_job_name(md), COMPONENT)
    job_spec["template"] = {"metadata": {"labels": dict(meta["labels"])}, "spec": pod_spec}
    return {**DOWNLOAD_JOB.type_meta(), "metadata": meta, "spec": job_spec}


def _download_command(md: ModelDeployment, model_dir: str, marker: str) -> Obj:
    source = md.spec.model.source
    if source.startswith("s3://"):
        return {"command": ["python", "-c", S3_DOWNLOAD_SCRIPT], "args": [source, model_dir, marker]}
    return {
        "command": ["python", "-c", DOWNLOAD_SCRIPT],
        "args": [hf_repository(md), str(md.spec.model.revision), model_dir, marker],
    }


def _verify_container(model_dir: str, digest: str, mounts: list[Obj], options: RenderOptions) -> Obj:
    """`respublica digest --expect`: exactly the computation `respublica digest` prints."""
    return {
        "name": VERIFY_CONTAINER,
        # A configured image (the chart passes its own, already on its registry) is used as given;
        # only the built-in default moves to the override registry.
        "image": (
            image_ref(options.verifier_image, options)
            if options.verifier_image == DEFAULT_RESPUBLICA_IMAGE
            else options.verifier_image
        ),
        "imagePullPolicy": options.image_pull_policy,
        "command": ["respublica"],
        "args": ["digest", "--expect", digest, "--mark", f"{model_dir}/{COMPLETE_MARKER}", model_dir],
        "env": [*usage_stats_env(), {"name": "HOME", "value": "/tmp"}],
        "resources": {
            "requests": {"cpu": "500m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "securityContext": {**container_security_context(), "readOnlyRootFilesystem": True},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [dict(mount) for mount in mounts],
    }
