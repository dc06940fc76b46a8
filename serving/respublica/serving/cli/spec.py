"""`respublica render`, `respublica crd`, `respublica validate`: the ModelDeployment file, offline.

Exit codes: 0 fine; 1 the spec has problems (each printed on its own line); 2 the input is not a
ModelDeployment to work on (no such file, not YAML, another kind) or the command cannot run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from respublica.operator.api.models import ModelDeployment

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


def render_command(
    file: FileOption,
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", "-n", help="Namespace for a file that names none (default: default)."),
    ] = None,
    ray_image: Annotated[
        str | None,
        typer.Option(help="Ray + vLLM image of the head and replicas (a spec's own image still wins)."),
    ] = None,
    image_registry: Annotated[
        str | None,
        typer.Option(help="Registry that replaces the default images' registry, e.g. a local mirror."),
    ] = None,
    gateway_namespace: Annotated[
        str | None,
        typer.Option(help="Namespace of the respublica gateway, admitted to the Serve port."),
    ] = None,
) -> None:
    """Print, as multi-document YAML, the Kubernetes objects the operator creates for a ModelDeployment.

    Pass the same image and gateway settings the operator runs with to see exactly what it will create.
    """
    import dataclasses

    import yaml

    from respublica.operator.api.load import InputError, SpecError, load_file
    from respublica.operator.render import RenderOptions, render

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
    options = RenderOptions()
    overrides: dict[str, Any] = {"image_registry": image_registry, "gateway_namespace": gateway_namespace}
    if ray_image:
        overrides.update(ray_image=ray_image, downloader_image=ray_image)
    options = dataclasses.replace(options, **{k: v for k, v in overrides.items() if v is not None})
    objects: list[dict[str, Any]] = []
    for model in models:
        objects.extend(render(_in_namespace(model, namespace, file), options))
    typer.echo(yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True), nl=False)


def crd_command() -> None:
    """Print the ModelDeployment CustomResourceDefinition (kubectl apply -f - installs it)."""
    from respublica.operator.api.crd import crd_yaml

    typer.echo(crd_yaml(), nl=False)


def validate_command(file: FileOption) -> None:
    """Check a ModelDeployment file and print every problem at once ("ok: <name>" when there is none)."""
    from respublica.operator.api.load import InputError, read_text, validate_text

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
