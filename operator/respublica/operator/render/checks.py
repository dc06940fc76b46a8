"""What render refuses: a spec that would render into pods that cannot work on a cluster.

The API's rules (api/rules.py) hold for every place a ModelDeployment runs; these depend on the
operator's options, so they live here and render raises `RenderError` before building anything.
"""

from __future__ import annotations

from respublica.api.models import ModelDeployment
from respublica.operator.render.options import DEFAULT_RAY_IMAGE, RenderOptions


class RenderError(ValueError):
    """A spec render cannot turn into working objects; the message names the field and the fix."""


def check_renderable(md: ModelDeployment, options: RenderOptions) -> None:
    # `gpus: 0` is fine locally (`respublica up` runs vLLM's CPU build), but on a cluster the default
    # image is Ray's CUDA LLM image: its vLLM cannot start without a GPU. Refuse rather than deploy
    # pods that crash; an operator configured with its own Ray image (a CPU build) is trusted.
    if md.spec.resources.gpus == 0 and not md.spec.image and options.ray_image == DEFAULT_RAY_IMAGE:
        raise RenderError(
            "spec.resources.gpus is 0 but the default serving image is a CUDA build of vLLM, which "
            "needs a GPU: set spec.image to a Ray Serve LLM image with vLLM's CPU build (or run the "
            "operator with RESPUBLICA_RAY_IMAGE / render with --ray-image set to one)"
        )
    # pkg:// names a Python package installed beside `respublica up` (the bundled samples): no pod
    # of a cluster has it. Refuse here, with the way out, rather than fail inside the engine mapping.
    if md.spec.model.source.startswith("pkg://"):
        raise RenderError(
            f"spec.model.source {md.spec.model.source!r} names a Python package on the machine that runs "
            "`respublica up`; a cluster cannot read it: serve the files from hf://, s3:// (with "
            "spec.cache) or pvc://"
        )
    # On a cluster the digest is checked once, by the model cache's download Job, before the marker the
    # replicas wait for is written. Without a cache nothing would check it: refuse rather than promise.
    # file:// and pkg:// name files inside an image or a package, which the image's build pins.
    source = md.spec.model.source
    if md.spec.model.digest is not None and md.spec.cache is None and source.startswith(("hf://", "pvc://")):
        fix = (
            "add spec.cache so the files are hashed before any replica reads them"
            if source.startswith("hf://")
            else "pvc:// weights are not hashed on a cluster: remove the digest, or serve them as hf:// "
            "with spec.cache"
        )
        raise RenderError(
            "spec.model.digest is verified on a cluster by the model cache's download Job, and this "
            f"spec has no spec.cache: {fix} (`respublica up` verifies a digest on one machine)"
        )
