"""`respublica render`, `respublica crd`, `respublica validate`: the ModelDeployment file, offline.

Exit codes: 0 fine; 1 the spec has problems (each printed on its own line); 2 the input is not a
ModelDeployment to work on (no such file, not YAML, another kind) or the command cannot run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from respublica.api.models import ModelDeployment

FileOption = Annotated[
    str,
    typer.Option(
        "--file", "-f", help="The ModelDeployment YAML file (several documents allowed); - reads stdin."
    ),
]

EXIT_INVALID = 1
EXIT_INPUT = 2


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command("render")(render_command)
    app.command("crd")(crd_command)
    app.command("validate")(validate_command)


def _setting(help_text: str) -> Any:
    return typer.Option(help=help_text)


Text = str | None


def render_command(
    file: Annotated[
        str | None,
        typer.Option(
            "--file", "-f", help="The ModelDeployment YAML file (several documents allowed); - reads stdin."
        ),
    ] = None,
    diff: Annotated[
        bool,
        typer.Option(
            "--diff",
            help="Take two files, OLD and NEW, and tell for each model what applying NEW over OLD does: "
            "builds a new Ray cluster, recreates it in place, changes only Serve, or only scaling.",
        ),
    ] = False,
    paths: Annotated[list[str] | None, typer.Argument(help="With --diff: OLD.yaml NEW.yaml.")] = None,
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", "-n", help="Namespace for a file that names none (default: default)."),
    ] = None,
    ray_image: Annotated[
        Text, _setting("Ray + vLLM image of the head and replicas (a spec's own image still wins).")
    ] = None,
    downloader_image: Annotated[
        Text, _setting("Image of the cache download Job (needs huggingface_hub); default: the Ray image.")
    ] = None,
    verifier_image: Annotated[
        Text,
        _setting(
            "The respublica image, whose `respublica digest --expect` checks spec.model.digest in the "
            "download Job (default: ghcr.io/respublica-dev/respublica at this version)."
        ),
    ] = None,
    image_registry: Annotated[
        Text, _setting("Registry that replaces the default images' registry, e.g. a local mirror.")
    ] = None,
    image_pull_policy: Annotated[Text, _setting("Always, IfNotPresent or Never.")] = None,
    image_pull_secrets: Annotated[
        Text, _setting("Secrets for pulling the images, comma-separated (in each model's namespace).")
    ] = None,
    gateway_namespace: Annotated[
        Text, _setting("Namespace of the respublica gateway, admitted to the Serve port.")
    ] = None,
    gateway_labels: Annotated[
        Text, _setting("Labels of the gateway's pods (key=value,...), admitted to the Serve port.")
    ] = None,
    kuberay_namespace: Annotated[
        Text,
        _setting(
            "Namespace of the KubeRay operator, admitted to the head's dashboard and Serve ports "
            "(default: kuberay-system)."
        ),
    ] = None,
    kuberay_labels: Annotated[
        Text, _setting("Labels of the KubeRay operator's pods (key=value,...).")
    ] = None,
    monitoring_namespace: Annotated[
        Text,
        _setting("Namespace of Prometheus, admitted to the Ray pods' metrics port (default: monitoring)."),
    ] = None,
    hf_token_secret: Annotated[
        Text, _setting("Secret (key `token`) with a Hugging Face token for gated repositories.")
    ] = None,
    hf_endpoint: Annotated[
        Text, _setting("Hugging Face hub mirror (HF_ENDPOINT) for hf:// downloads; spec.model.endpoint wins.")
    ] = None,
    ca_bundle: Annotated[
        Text, _setting("ConfigMap[/key] (default key ca.crt) with CAs to trust when downloading.")
    ] = None,
    default_cache_size: Annotated[
        Text,
        _setting(
            "Size of the cache a downloaded model without spec.cache gets when created at minReplicas "
            "0 (default 200Gi); none: no default cache."
        ),
    ] = None,
    default_cache_storage_class: Annotated[
        Text, _setting("Storage class of that default cache (default: the cluster's default class).")
    ] = None,
    default_cache_access_mode: Annotated[
        Text, _setting("ReadWriteMany, ReadWriteOnce or ReadOnlyMany (default ReadWriteMany).")
    ] = None,
) -> None:
    """Print, as multi-document YAML, the Kubernetes objects the operator creates for a ModelDeployment.

    Each setting is also read from the operator's variable of the same name (--ray-image:
    RESPUBLICA_RAY_IMAGE); a flag wins. With the operator's settings this prints exactly what it creates
    for a model it is creating: with no cluster to ask, each model is rendered as if it had no
    RayService yet, so a downloaded model at minReplicas 0 without spec.cache gets the default cache.
    With --diff, NEW is rendered as the operator would render it over OLD's RayService.
    """
    import os

    import yaml

    from respublica.api.load import InputError, SpecError, load_file
    from respublica.operator.render import RenderError, render
    from respublica.operator.render.configure import OptionError, render_options

    if diff and (file is not None or len(paths or []) != 2):
        _fail("--diff takes two files: respublica render --diff OLD.yaml NEW.yaml", EXIT_INPUT)
    if not diff and (file is None or paths):
        _fail("pass the file with -f FILE (or compare two with --diff OLD.yaml NEW.yaml)", EXIT_INPUT)
    flags = {
        "ray-image": ray_image,
        "downloader-image": downloader_image,
        "verifier-image": verifier_image,
        "image-registry": image_registry,
        "image-pull-policy": image_pull_policy,
        "image-pull-secrets": image_pull_secrets,
        "gateway-namespace": gateway_namespace,
        "gateway-labels": gateway_labels,
        "kuberay-namespace": kuberay_namespace,
        "kuberay-labels": kuberay_labels,
        "monitoring-namespace": monitoring_namespace,
        "hf-token-secret": hf_token_secret,
        "hf-endpoint": hf_endpoint,
        "ca-bundle": ca_bundle,
        "default-cache-size": default_cache_size,
        "default-cache-storage-class": default_cache_storage_class,
        "default-cache-access-mode": default_cache_access_mode,
    }
    try:
        options = render_options(os.environ, flags)
    except OptionError as error:
        _fail(str(error), EXIT_INPUT)
    if diff:
        assert paths is not None
        _print_diff(paths[0], paths[1], namespace, options)
        return
    assert file is not None
    try:
        models = load_file(file)
    except InputError as error:
        _fail(str(error), EXIT_INPUT)
    except SpecError as error:
        for line in str(error).splitlines():
            typer.echo(line, err=True)
        _fail(
            f"{file}: not rendered; fix the problems above (`respublica validate -f {file}` lists them)",
            EXIT_INVALID,
        )
    objects: list[dict[str, Any]] = []
    for model in models:
        try:
            objects.extend(render(_in_namespace(model, namespace, file), options))
        except RenderError as error:
            _fail(f"{file}: {model.metadata.name}: {error}", EXIT_INVALID)
    typer.echo(yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True), nl=False)


def _rendered_rayservices(
    file: str, namespace: str | None, options: Any, running: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Each model's rendered RayService in a file, by name; bad input or a spec that cannot render exits.

    `running`: the RayServices by name that the operator would find (the old file's), which decide
    the default cache as they would on the cluster (operator/render/default_cache.py); a model
    without one is rendered as being created."""
    from respublica.api.load import InputError, SpecError, load_file
    from respublica.operator.render import RenderError, render
    from respublica.operator.render.default_cache import live_facts

    try:
        models = load_file(file)
    except InputError as error:
        _fail(str(error), EXIT_INPUT)
    except SpecError as error:
        for line in str(error).splitlines():
            typer.echo(line, err=True)
        _fail(f"{file}: not compared; fix the problems above", EXIT_INVALID)
    found: dict[str, dict[str, Any]] = {}
    for model in models:
        try:
            live = live_facts((running or {}).get(model.metadata.name))
            objects = render(_in_namespace(model, namespace, file), options, live)
        except RenderError as error:
            _fail(f"{file}: {model.metadata.name}: {error}", EXIT_INVALID)
        found[model.metadata.name] = next(o for o in objects if o["kind"] == "RayService")
    return found


def _print_diff(old_file: str, new_file: str, namespace: str | None, options: Any) -> None:
    """One line per model: what applying NEW over OLD does (operator/upgrade_plan.py)."""
    from respublica.operator.upgrade_plan import plan

    old = _rendered_rayservices(old_file, namespace, options)
    new = _rendered_rayservices(new_file, namespace, options, running=old)
    for name in sorted({*old, *new}):
        if name not in old:
            typer.echo(f"{name}: new: creates its Ray cluster")
        elif name not in new:
            typer.echo(f"{name}: removed from {new_file}: not deleted by applying it (kubectl delete does)")
        else:
            found = plan(old[name], new[name])
            typer.echo(f"{name}: {found.kind}: {found.message}")


def crd_command() -> None:
    """Print the ModelDeployment CustomResourceDefinition (kubectl apply -f - installs it)."""
    from respublica.api.crd import crd_yaml

    typer.echo(crd_yaml(), nl=False)


def validate_command(file: FileOption) -> None:
    """Check a ModelDeployment file and print every problem at once ("ok: <name>" when there is none)."""
    from respublica.api.load import InputError, read_text, validate_text

    try:
        results = validate_text(read_text(file), file)
    except InputError as error:
        _fail(str(error), EXIT_INPUT)
    for result in results:
        if result.ok:
            typer.echo(f"ok: {result.name}")
            continue
        count = len(result.problems)
        typer.echo(f"invalid: {result.name} ({count} problem{'s' if count != 1 else ''})")
        for problem in result.problems:
            typer.echo(f"  - {problem}")
    if not all(result.ok for result in results):
        raise typer.Exit(EXIT_INVALID)


def _in_namespace(model: ModelDeployment, namespace: str | None, file: str) -> ModelDeployment:
    """The model with its namespace settled like `kubectl apply -n` does: the file's, else the flag's."""
    declared = model.metadata.namespace
    if declared and namespace and declared != namespace:
        _fail(
            f"{file}: {model.metadata.name} declares namespace {declared!r} but --namespace is "
            f"{namespace!r}; drop one of them",
            EXIT_INPUT,
        )
    if declared:
        return model
    copy = model.model_copy(deep=True)
    copy.metadata.namespace = namespace or "default"
    return copy


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
