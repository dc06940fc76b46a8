"""The ModelDeployment API (respublica.dev/v1alpha1) as pydantic models.

These models are the source of truth: the CRD's OpenAPI schema is generated from them
(`respublica.api.crd`), so every description here is what `kubectl explain` shows.
Field names are camelCase on the wire, snake_case in Python.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from respublica.api.rules import RULES

GROUP = "respublica.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["md"]

# A ModelDeployment's name prefixes the RayService, its RayCluster (plus a 5-character suffix) and
# KubeRay's services (`-head-svc`, `-serve-svc`), which must stay valid DNS-1035 labels (63 chars).
MAX_NAME_LENGTH = 40
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
TENANT_PATTERN = r"^(\*|[a-z0-9]([-a-z0-9_.]*[a-z0-9])?)$"
SERVED_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"
ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
DIGEST_PATTERN = r"^sha256:[a-f0-9]{64}$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
CPU_PATTERN = r"^[0-9]+(\.[0-9]+|m)?$"
GPU_PRODUCT_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
ENGINE_FLAG_PATTERN = r"^--[A-Za-z0-9]"
ENDPOINT_URL_PATTERN = r"^https?://[^/?#\s]+(/\S*)?$"
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
CONFIG_MAP_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
LABEL_VALUE_MAX = 63

# Every pattern above in words, for messages that say what is allowed rather than quote a regex.
PATTERN_HELP: dict[str, str] = {
    NAME_PATTERN: "lowercase letters, digits and '-', starting with a letter, ending with a letter or digit",
    TENANT_PATTERN: "'*' or a lowercase tenant name (letters, digits, '-', '_', '.')",
    SERVED_NAME_PATTERN: "letters, digits, '.', '_', '-' and '/', starting with a letter or digit",
    ADAPTER_NAME_PATTERN: "letters, digits, '.', '_' and '-', starting with a letter or digit",
    DIGEST_PATTERN: "'sha256:' followed by 64 lowercase hex digits",
    QUANTITY_PATTERN: "a Kubernetes quantity such as 64Gi, 512Mi or 1T",
    CPU_PATTERN: "a CPU quantity such as 8, 0.5 or 500m",
    GPU_PRODUCT_PATTERN: "a node label value such as NVIDIA-H100-80GB-HBM3",
    ENGINE_FLAG_PATTERN: "a vLLM flag starting with '--', e.g. --enable-chunked-prefill",
    ENDPOINT_URL_PATTERN: "an http:// or https:// URL such as http://minio.storage.svc:9000",
    SECRET_NAME_PATTERN: "a Secret name: lowercase letters, digits, '-' and '.'",
    CONFIG_MAP_KEY_PATTERN: "a ConfigMap key: letters, digits, '-', '_' and '.'",
}

EngineFlag = Annotated[str, StringConstraints(min_length=3, max_length=256, pattern=ENGINE_FLAG_PATTERN)]
TenantName = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=TENANT_PATTERN)]
LabelValue = Annotated[str, StringConstraints(max_length=LABEL_VALUE_MAX)]


# The pydantic error type of a broken cross-field rule (see rules.py).
CROSS_FIELD_ERROR = "cross_field_rules"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
        # Like the API server: "3" is not an integer and "yes" is not a boolean.
        strict=True,
    )


ModelTask = Literal["generate", "embed"]


class CaBundleRef(_Model):
    """A PEM bundle of certificate authorities in a ConfigMap of the model's namespace."""

    config_map_name: str = Field(
        min_length=1,
        max_length=253,
        pattern=SECRET_NAME_PATTERN,
        description="The ConfigMap holding the bundle, in the model's namespace.",
    )
    key: str = Field(
        default="ca.crt",
        min_length=1,
        max_length=253,
        pattern=CONFIG_MAP_KEY_PATTERN,
        description="The key of the PEM bundle in the ConfigMap.",
    )


class ModelSpec(_Model):
    """Which weights to serve and the name clients use for them."""

    source: str = Field(
        min_length=1,
        max_length=512,
        description="Where the weights come from: hf://<org>/<name> (a Hugging Face repository, "
        "with `revision` pinned), s3://<bucket>/<folder> (object storage such as MinIO, copied into "
        "spec.cache by the download Job), pvc://<claim>/<path> (a PersistentVolumeClaim in the same "
        "namespace) or file:///<path> (a directory inside the serving image or on the local "
        "machine for `respublica up`), or pkg://<python package>/<path> (a file or directory inside "
        "an installed Python package, for `respublica up` only: a .gguf file is converted into a "
        "Hugging Face directory in the cache on first use). oci:// is not supported yet.",
    )
    revision: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The commit (or tag) of an hf:// source. Required for hf://: sovereign "
        "deployments are reproducible. Not allowed for other schemes.",
    )
    served_name: str = Field(
        min_length=1,
        max_length=128,
        pattern=SERVED_NAME_PATTERN,
        description="The name clients put in the request's `model` field, e.g. `llama-3-8b`. "
        "Letters, digits, `.`, `_`, `-` and `/`.",
    )
    digest: str | None = Field(
        default=None,
        max_length=71,
        pattern=DIGEST_PATTERN,
        description="Optional content digest of the weights, `sha256:<64 hex>`, over the model's "
        "files in a stated order (see docs/model-digest.md). Verified before serving; a "
        "mismatch refuses to serve.",
    )
    secret_ref: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=SECRET_NAME_PATTERN,
        description="A Secret in the model's namespace holding the credential of the source: key "
        "HF_TOKEN for hf:// (gated or private repositories); keys AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY for s3://. Passed to the containers that download "
        "(the cache's download Job, or the Ray workers without a cache); a missing Secret or key keeps "
        "the pod from starting with a clear event. Unset: the operator's hub token, if any.",
    )
    endpoint: str | None = Field(
        default=None,
        max_length=512,
        pattern=ENDPOINT_URL_PATTERN,
        description="For hf://: the hub mirror to download from (set as HF_ENDPOINT), e.g. "
        "https://hf-mirror.agency.example; unset: the operator's mirror (RESPUBLICA_HF_ENDPOINT), else "
        "huggingface.co. For s3://: the S3-compatible service (set as AWS_ENDPOINT_URL_S3; path-style "
        "addressing), e.g. http://minio.storage.svc:9000; unset: AWS S3.",
    )
    ca_bundle: CaBundleRef | None = Field(
        default=None,
        description="Certificate authorities to trust when downloading (an internal mirror's own CA): "
        "mounted read-only in the containers that download and in the Ray pods, and named by "
        "REQUESTS_CA_BUNDLE, SSL_CERT_FILE, CURL_CA_BUNDLE and AWS_CA_BUNDLE. It replaces the image's "
        "trust store for those clients, so include every CA they must trust. Unset: the operator's "
        "bundle (RESPUBLICA_CA_BUNDLE), else the image's own.",
    )
    task: ModelTask = Field(
        default="generate",
        description="What the model serves: generate (chat and text completions) or embed "
        "(/v1/embeddings). Sets vLLM's runner (embed: pooling) and which routes the gateway sends "
        "to the model; the other kind of request gets a 400 from the gateway.",
    )


Dtype = Literal["auto", "float16", "bfloat16", "float32"]
Quantization = Literal["awq", "gptq", "fp8", "bitsandbytes", "gguf", "compressed-tensors", "awq_marlin"]


class EngineSpec(_Model):
    """vLLM engine settings. Typed fields for the common ones, `extraArgs` for the rest."""

    max_model_len: int | None = Field(
        default=None,
        ge=16,
        le=10_000_000,
        description="Maximum context length (prompt plus completion) in tokens. Unset: the "
        "model's own maximum.",
    )
    dtype: Dtype = Field(
        default="auto",
        description="Weight and activation dtype: auto, float16, bfloat16 or float32.",
    )
    quantization: Quantization | None = Field(
        default=None,
        description="Quantization method of the weights (awq, gptq, fp8, bitsandbytes, gguf, "
        "compressed-tensors, awq_marlin). Unset: none, or what the checkpoint declares.",
    )
    tensor_parallel_size: int = Field(
        default=1,
        ge=1,
        le=16,
        description="GPUs one replica shards the model across. Must equal resources.gpus "
        "(1 when gpus is 0): tensor parallelism stays inside one pod.",
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0.0,
        le=0.99,
        description="Fraction of each GPU's memory vLLM may use for weights and KV cache (0 < x <= 0.99).",
    )
    max_num_seqs: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Maximum sequences in one batch. Unset: vLLM's default.",
    )
    enforce_eager: bool = Field(
        default=False,
        description="Disable CUDA graphs (slower, less memory, faster start).",
    )
    extra_args: list[EngineFlag] = Field(
        default_factory=list,
        max_length=64,
        description="Further vLLM engine flags, one per entry with its value after `=`, e.g. "
        "`--enable-chunked-prefill` or `--max-num-batched-tokens=8192` (at most 64, each at most 256 "
        "characters). Flags that have a typed field are rejected.",
    )


class Toleration(_Model):
    """A Kubernetes toleration for the GPU worker pods."""

    key: str | None = Field(default=None, max_length=316, description="The taint key to tolerate.")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (the default)."
    )
    value: str | None = Field(default=None, max_length=LABEL_VALUE_MAX, description="The taint value.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="The taint effect to tolerate; unset tolerates all."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="For NoExecute: how long the pod stays bound after the taint."
    )


class ResourcesSpec(_Model):
    """What one replica of the model needs. A replica is one Ray worker pod."""

    gpus: int = Field(
        default=1,
        ge=0,
        le=16,
        description="GPUs per replica (nvidia.com/gpu), all in one pod. 0 runs on CPU.",
    )
    gpu_product: str | None = Field(
        default=None,
        min_length=1,
        max_length=LABEL_VALUE_MAX,
        pattern=GPU_PRODUCT_PATTERN,
        description="GPU model, matched against the node label nvidia.com/gpu.product "
        "(e.g. NVIDIA-H100-80GB-HBM3).",
    )
    cpu: str = Field(
        default="8",
        max_length=32,
        pattern=CPU_PATTERN,
        description="CPU request and limit of a replica's pod (Kubernetes quantity).",
    )
    memory: str = Field(
        default="64Gi",
        max_length=32,
        pattern=QUANTITY_PATTERN,
        description="Memory request and limit of a replica's pod (Kubernetes quantity).",
    )
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=32,
        description="Extra node labels the replica pods must match.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="Tolerations for the replica pods (e.g. for tainted GPU nodes).",
    )


class ScalingSpec(_Model):
    """Ray Serve autoscaling of the model's replicas; Ray's autoscaler adds or removes GPU pods."""

    min_replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Fewest replicas. 0 scales to zero when idle: the Ray head stays up and "
        "holds the first request while a replica starts.",
    )
    max_replicas: int = Field(default=1, ge=1, le=1000, description="Most replicas.")
    target_ongoing_requests: float = Field(
        default=8.0,
        gt=0,
        le=10_000,
        description="Requests in flight per replica that autoscaling aims for.",
    )
    upscale_delay_seconds: float = Field(
        default=30.0,
        ge=0,
        le=86_400,
        description="How long load must stay high before a replica is added.",
    )
    downscale_delay_seconds: float = Field(
        default=300.0,
        ge=0,
        le=86_400,
        description="How long load must stay low before a replica is removed.",
    )
    downscale_to_zero_delay_seconds: float | None = Field(
        default=None,
        ge=0,
        le=604_800,
        description="How long the last replica stays idle before scaling to zero; only with "
        "minReplicas 0. Unset: downscaleDelaySeconds.",
    )
    wake_timeout_seconds: int = Field(
        default=900,
        ge=60,
        le=7200,
        description="How long a request may wait for a replica to start (a wake from zero: GPU node, "
        "image pull, weights, engine start). Sets Ray Serve LLM's router timeout and the gateway's wait "
        "for this model.",
    )


class RoutingSpec(_Model):
    """How Ray Serve picks a replica for a request."""

    prefix_aware: bool = Field(
        default=False,
        description="Route requests sharing a prompt prefix to the same replica to reuse its KV "
        "cache (Ray Serve's prefix-cache-affinity router). Off: power of two choices.",
    )


class AccessSpec(_Model):
    """Who may call this model through the gateway."""

    tenants: list[TenantName] = Field(
        default_factory=lambda: ["*"],
        max_length=256,
        description='Tenants allowed to call this model; "*" allows every tenant. Entries are "*" or '
        "lowercase tenant names (letters, digits, '-', '_', '.'; at most 63 characters). The tenant's "
        "own allowed models must admit it too.",
    )


class LoraAdapter(_Model):
    """One LoRA adapter, served as `<servedName>:<name>`."""

    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=ADAPTER_NAME_PATTERN,
        description="The adapter's name: its folder under lora.path, and the suffix clients use "
        "(`model: <servedName>:<name>`).",
    )


class LoraSpec(_Model):
    """LoRA adapters that Ray Serve LLM loads on demand from object storage on top of the base model."""

    path: str = Field(
        min_length=1,
        max_length=512,
        description="The object-storage folder holding one subfolder per adapter (named as the adapter): "
        "s3://<bucket>/<path>, gs://<bucket>/<path>, abfss://<container>@<account>.dfs.core.windows.net/"
        "<path> or azure://<container>@<account>.blob.core.windows.net/<path>. Ray Serve LLM downloads "
        "an adapter from there when a request first names it, so only these schemes work; pvc:// and "
        "file:// are rejected. S3-compatible storage in the cluster (MinIO, Ceph) works through s3:// "
        "with endpointUrl.",
    )
    endpoint_url: str | None = Field(
        default=None,
        max_length=512,
        pattern=ENDPOINT_URL_PATTERN,
        description="For s3:// paths only: the URL of an S3-compatible service, e.g. "
        "http://minio.storage.svc:9000 (path-style addressing is used). Set as AWS_ENDPOINT_URL_S3 in "
        "the Ray pods. Unset: AWS S3 itself.",
    )
    credentials_secret: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=SECRET_NAME_PATTERN,
        description="A Secret in the same namespace whose keys become environment variables of the Ray "
        "pods, read by the storage client: for s3:// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(and AWS_DEFAULT_REGION if the service needs one); for abfss:// and azure:// AZURE_CLIENT_ID, "
        "AZURE_TENANT_ID and AZURE_CLIENT_SECRET. Unset: the pods' own cloud identity.",
    )
    adapters: list[LoraAdapter] = Field(
        min_length=1,
        max_length=64,
        description="The adapters clients may call, each a subfolder of path with the same name.",
    )
    max_adapters_per_replica: int = Field(
        default=4, ge=1, le=64, description="Adapters a replica keeps loaded at once."
    )
    max_rank: int = Field(default=16, ge=1, le=512, description="Largest LoRA rank among the adapters.")


class CacheSpec(_Model):
    """A PersistentVolumeClaim that holds the downloaded weights, filled once by a Job."""

    size: str = Field(
        max_length=32,
        pattern=QUANTITY_PATTERN,
        description="Size of the cache volume, e.g. 100Gi.",
    )
    storage_class_name: str | None = Field(
        default=None, max_length=253, description="Storage class of the cache volume; unset: the default."
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany"] = Field(
        default="ReadWriteMany",
        description="ReadWriteMany lets replicas on several nodes share the cache.",
    )


UpgradeStrategy = Literal["NewCluster", "InPlace"]


class UpgradeSpec(_Model):
    """How a change that needs new Ray pods (image, resources, GPU product, revision) is rolled out."""

    strategy: UpgradeStrategy = Field(
        default="NewCluster",
        description="NewCluster: KubeRay starts a second Ray cluster beside the running one and moves "
        "traffic when it serves (no downtime, but the GPUs are held twice meanwhile; a cluster without "
        "spare GPUs never finishes). InPlace: the operator deletes the running Ray cluster and KubeRay "
        "recreates it from the new spec (downtime until it serves, no extra GPUs). Changes to the "
        "engine or Serve settings alone are applied to the running cluster either way.",
    )


class ModelDeploymentSpec(_Model):
    """What to serve, on what, how far it scales, and who may call it."""

    model: ModelSpec = Field(description="Which weights to serve and the name clients use for them.")
    engine: EngineSpec = Field(
        default_factory=EngineSpec,
        description="vLLM engine settings: typed fields for the common ones, extraArgs for the rest.",
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec,
        description="What one replica needs. A replica is one Ray worker pod holding all of its GPUs.",
    )
    scaling: ScalingSpec = Field(
        default_factory=ScalingSpec,
        description="Ray Serve autoscaling of the model's replicas; Ray's autoscaler adds and removes the "
        "worker pods they run in.",
    )
    routing: RoutingSpec = Field(
        default_factory=RoutingSpec, description="How Ray Serve picks a replica for each request."
    )
    access: AccessSpec = Field(
        default_factory=AccessSpec, description="Who may call the model through the gateway."
    )
    lora: LoraSpec | None = Field(
        default=None,
        description="LoRA adapters loaded on demand from object storage (s3://, gs://, abfss://, "
        "azure://) on top of the base model; unset: none.",
    )
    cache: CacheSpec | None = Field(
        default=None,
        description="Download hf:// or s3:// weights once into a volume shared by the replicas. Unset: "
        "the operator's default cache when the model is created at minReplicas 0 (kept while the model "
        "exists, so changing minReplicas never rebuilds the Ray cluster); otherwise each replica "
        "downloads at start.",
    )
    image: str | None = Field(
        default=None,
        max_length=512,
        description="Serving image (Ray + vLLM) for this model; unset: the operator's default.",
    )
    upgrade: UpgradeSpec = Field(
        default_factory=UpgradeSpec,
        description="How changes that need new Ray pods are rolled out: NewCluster (no downtime, GPUs "
        "twice) or InPlace (downtime, no extra GPUs).",
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ModelDeploymentSpec:
        data = self.model_dump(by_alias=True, exclude_none=True)
        broken = [rule.message for rule in RULES if not rule.check(_node(data, rule.where))]
        if broken:
            # One error carrying every broken rule; `api.load` reports them one per line.
            raise PydanticCustomError(CROSS_FIELD_ERROR, "{rules}", {"rules": "\n".join(broken)})
        return self


def _node(data: dict[str, Any], where: tuple[str, ...]) -> Any:
    node: Any = data
    for key in where:
        node = node.get(key) if isinstance(node, dict) else None
    # An absent optional section (lora, cache) breaks none of its own rules.
    return node if node is not None else {}


class ObjectMeta(BaseModel):
    """The part of Kubernetes metadata the API checks; the rest passes through untouched."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        pattern=NAME_PATTERN,
        description=f"The deployment's name (at most {MAX_NAME_LENGTH} characters): it prefixes the "
        "RayService and KubeRay's services, which must stay valid DNS labels.",
    )
    namespace: str | None = Field(default=None, max_length=63, description="The namespace it lives in.")


Phase = Literal["Pending", "Deploying", "Ready", "ScaledToZero", "Degraded", "Failed"]


class Condition(_Model):
    """A Kubernetes-style condition."""

    type: str = Field(max_length=64, description="Ready, Progressing, Degraded or UpgradePending.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", max_length=128, description="CamelCase reason.")
    message: str = Field(default="", max_length=4096, description="What happened and what to do.")
    last_transition_time: str | None = Field(
        default=None, max_length=64, description="When status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(default=None, description="The generation it describes.")


class ReplicaStatus(_Model):
    """Replicas of the model."""

    desired: int = Field(default=0, description="Replicas Ray Serve wants now.")
    ready: int = Field(default=0, description="Replicas serving now.")


class ModelDeploymentStatus(_Model):
    """What the operator observed."""

    phase: Phase | None = Field(
        default=None, description="Pending, Deploying, Ready, ScaledToZero, Degraded or Failed."
    )
    conditions: list[Condition] = Field(
        default_factory=list, max_length=16, description="Ready, Progressing, Degraded, UpgradePending."
    )
    observed_generation: int | None = Field(default=None, description="The spec generation last acted on.")
    replicas: ReplicaStatus | None = Field(default=None, description="Desired and ready replicas.")
    wake_timeout_seconds: int | None = Field(
        default=None, description="How long a request waits for a replica to start (spec.scaling)."
    )
    endpoint: str | None = Field(
        default=None,
        max_length=512,
        description="Base URL of the model's OpenAI-compatible endpoint (KubeRay's Serve service).",
    )


class ModelDeployment(BaseModel):
    """A model served by respublica: vLLM replicas autoscaled by Ray, behind the gateway."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    api_version: Literal["respublica.dev/v1alpha1"] = Field(
        default="respublica.dev/v1alpha1", alias="apiVersion", description="respublica.dev/v1alpha1."
    )
    kind: Literal["ModelDeployment"] = Field(default="ModelDeployment", description="ModelDeployment.")
    metadata: ObjectMeta = Field(description="Standard Kubernetes object metadata.")
    spec: ModelDeploymentSpec = Field(description="What to serve and how.")
    status: ModelDeploymentStatus | None = Field(default=None, description="What the operator observed.")

    def to_dict(self) -> dict[str, Any]:
        """The object as Kubernetes plain data (camelCase, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
