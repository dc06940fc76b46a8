"""Where a model's weights live inside its pods, and how its pods reach its LoRA adapters."""

from __future__ import annotations

from dataclasses import dataclass, field

from respublica.api.models import ModelDeployment
from respublica.operator.render.common import Obj
from respublica.operator.render.options import RenderOptions

CACHE_VOLUME = "model-cache"
# Written by the download Job once every file is in place; replicas start only when it exists.
COMPLETE_MARKER = ".respublica-complete"


@dataclass(frozen=True)
class ModelStorage:
    """The volumes a replica mounts and the directory the engine reads the weights from."""

    volumes: list[Obj] = field(default_factory=list)
    mounts: list[Obj] = field(default_factory=list)
    # None: the engine fetches the weights itself (hf:// by repository id) or reads a file:// path.
    model_path: str | None = None
    # The weights are on disk: the engine must not reach for the hub at run time.
    offline: bool = False

    @property
    def downloads(self) -> bool:
        """Whether each replica fetches the weights itself (into its container's scratch space)."""
        return not self.offline

    # The cache's completion marker a replica waits for before starting; None without a cache.
    wait_for: str | None = None


def cache_claim_name(md: ModelDeployment) -> str:
    return f"{md.metadata.name}-model-cache"


def hf_repository(md: ModelDeployment) -> str:
    return md.spec.model.source.removeprefix("hf://")


def cache_model_path(md: ModelDeployment, options: RenderOptions) -> str:
    """The directory in the cache volume holding this repository at this revision (hf://), or this
    bucket's folder (s3://)."""
    source = md.spec.model.source
    if source.startswith("s3://"):
        return f"{options.cache_mount_path}/s3/{source.removeprefix('s3://').strip('/')}"
    return f"{options.cache_mount_path}/hf/{hf_repository(md)}/{md.spec.model.revision}"


def _pvc_parts(source: str) -> tuple[str, str]:
    claim, _, path = source.removeprefix("pvc://").partition("/")
    return claim, path.strip("/")


def _claim_volume_name(claim: str) -> str:
    # Claim names may hold dots; volume names are DNS labels.
    return f"pvc-{claim.replace('.', '-')}"[:63].rstrip("-")


def model_storage(md: ModelDeployment, options: RenderOptions) -> ModelStorage:
    spec = md.spec
    volumes: list[Obj] = []
    mounts: list[Obj] = []
    claims: list[str] = []

    def mount_claim(claim: str) -> str:
        mount_path = f"{options.pvc_mount_root}/{claim}"
        if claim not in claims:
            claims.append(claim)
            name = _claim_volume_name(claim)
            volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
            mounts.append({"name": name, "mountPath": mount_path, "readOnly": True})
        return mount_path

    source = spec.model.source
    model_path: str | None = None
    wait_for: str | None = None
    if spec.cache is not None:
        volumes.append({"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": cache_claim_name(md)}})
        mounts.append({"name": CACHE_VOLUME, "mountPath": options.cache_mount_path, "readOnly": True})
        model_path = cache_model_path(md, options)
        wait_for = f"{model_path}/{COMPLETE_MARKER}"
    elif source.startswith("pvc://"):
        claim, path = _pvc_parts(source)
        root = mount_claim(claim)
        model_path = f"{root}/{path}" if path else root
    offline = not source.startswith("hf://") or spec.cache is not None
    return ModelStorage(
        volumes=volumes, mounts=mounts, model_path=model_path, offline=offline, wait_for=wait_for
    )


CA_VOLUME = "ca-bundle"
CA_DIR = "/etc/respublica/ca"
CA_FILE = f"{CA_DIR}/ca.crt"
# Every client that downloads reads one of these: requests (huggingface_hub) REQUESTS_CA_BUNDLE,
# Python's ssl and OpenSSL SSL_CERT_FILE, curl CURL_CA_BUNDLE, botocore AWS_CA_BUNDLE.
CA_ENV = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "AWS_CA_BUNDLE")


@dataclass(frozen=True)
class CaBundle:
    """A CA bundle's volume, its read-only mount, and the variables that point the clients at it."""

    volume: Obj
    mount: Obj
    env: list[Obj]


def ca_bundle(md: ModelDeployment, options: RenderOptions) -> CaBundle | None:
    ref = md.spec.model.ca_bundle
    found = (ref.config_map_name, ref.key) if ref is not None else options.ca_bundle
    if found is None:
        return None
    name, key = found
    return CaBundle(
        volume={"name": CA_VOLUME, "configMap": {"name": name, "items": [{"key": key, "path": "ca.crt"}]}},
        mount={"name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": True},
        env=[{"name": var, "value": CA_FILE} for var in CA_ENV],
    )


# The key of spec.model.secretRef that huggingface_hub reads (huggingface_hub/constants.py HF_TOKEN).
HF_TOKEN_KEY = "HF_TOKEN"


def download_env(md: ModelDeployment, options: RenderOptions) -> list[Obj]:
    """What a container that downloads an hf:// source needs: the hub mirror and the credential.

    huggingface_hub reads HF_ENDPOINT and HF_TOKEN from the environment (huggingface_hub/constants.py),
    and so does vLLM through it. The model's own Secret is not optional: a missing Secret or key stops
    the pod with an event naming it, instead of an anonymous download that answers 401. The operator's
    token Secret (key `token`) stays optional, as it was, for models that need none.
    """
    model = md.spec.model
    env: list[Obj] = []
    if model.source.startswith("s3://"):
        return _s3_env(md)
    endpoint = model.endpoint or options.hf_endpoint
    if endpoint:
        env.append({"name": "HF_ENDPOINT", "value": endpoint})
    if model.secret_ref is not None:
        ref: Obj = {"name": model.secret_ref, "key": HF_TOKEN_KEY, "optional": False}
    elif options.hf_token_secret:
        ref = {"name": options.hf_token_secret, "key": "token", "optional": True}
    else:
        return env
    env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref}})
    return env


def _s3_env(md: ModelDeployment) -> list[Obj]:
    """An s3:// source's endpoint and keys, read by the download Job's pyarrow S3 client."""
    model = md.spec.model
    env: list[Obj] = []
    if model.endpoint is not None:
        env.append({"name": S3_ENDPOINT_ENV, "value": model.endpoint})
    if model.secret_ref is not None:
        env += [
            {
                "name": key,
                "valueFrom": {"secretKeyRef": {"name": model.secret_ref, "key": key, "optional": False}},
            }
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        ]
    return env


# Read by boto3 (which Ray Serve LLM's s3:// loader uses) and by Ray's pyarrow S3 filesystem; the
# S3-specific name leaves any other AWS service the pods might call on its default endpoint.
S3_ENDPOINT_ENV = "AWS_ENDPOINT_URL_S3"


@dataclass(frozen=True)
class AdapterStorageAccess:
    """What a Ray pod needs to reach the LoRA adapters' object storage: env vars and Secrets as env."""

    env: list[Obj] = field(default_factory=list)
    env_from: list[Obj] = field(default_factory=list)


def adapter_storage_access(md: ModelDeployment) -> AdapterStorageAccess:
    """Both the head (its ingress lists the adapters for /v1/models) and the workers (their replicas
    download an adapter when a request first names it) talk to the storage, so both get this."""
    lora = md.spec.lora
    if lora is None:
        return AdapterStorageAccess()
    env: list[Obj] = []
    if lora.endpoint_url is not None:
        env.append({"name": S3_ENDPOINT_ENV, "value": lora.endpoint_url})
    env_from: list[Obj] = []
    if lora.credentials_secret is not None:
        # Not optional: a missing Secret stops the pod with a clear event instead of a replica that
        # fails on its first adapter request.
        env_from.append({"secretRef": {"name": lora.credentials_secret}})
    return AdapterStorageAccess(env=env, env_from=env_from)
