"""What a restoration step asks of the toolkit: the `RestoreSpec` for a step's params and its source image.

The output size, first that applies:
  1. the size the request names ("to 64 by 64 pixels");
  2. its factor ("4x bigger", "x2") times the source's size;
  3. for an upscale, or a restoration that names no degradation, of an image smaller than the model's panel: the
     panel (`toolkit.restore.low_resolution_size`, the rule `ditflow restore --degradation auto` follows too);
  4. the tool's own: 2×/4× for sr2/sr4, the source's size otherwise.
"""
from __future__ import annotations

from PIL import Image

from ditflow.pipelines.loading import info_of
from ditflow.schemas import RestoreSpec
from ditflow.toolkit.restore import low_resolution_size

UPSCALES = ("auto", "sr2", "sr4")  # the degradations an image smaller than the panel is enlarged under


def output_size(image: Image.Image, params: dict, panel: int) -> tuple[int, int] | None:
    """(width, height) a restoration of `image` must return under a step's `params`; None: the tool decides."""
    if params.get("width") and params.get("height"):
        return int(params["width"]), int(params["height"])
    if params.get("scale"):
        f = float(params["scale"])
        return max(1, round(image.width * f)), max(1, round(image.height * f))
    if str(params.get("degradation", "auto")) in UPSCALES:
        return low_resolution_size(image, panel)
    return None


def restore_spec(pipe, image: Image.Image, params: dict, seed: int) -> RestoreSpec:
    """The toolkit spec of a restoration of `image` by the plan step params `params`."""
    size = output_size(image, params, info_of(pipe).panel)
    return RestoreSpec(degradation=str(params.get("degradation", "auto")), seed=seed,
                       width=size[0] if size else None, height=size[1] if size else None)
