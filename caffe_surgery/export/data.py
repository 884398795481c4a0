"""Data layers: their tops that the exported graph reads become graph inputs."""
from .context import LayerContext
from .registry import DATA_TYPES, converter


@converter(*sorted(DATA_TYPES))
def data_layer(ctx: LayerContext) -> None:
    """Declare every used top as a graph input named after its blob (labels only when read)."""
    for top in ctx.layer.tops:
        if top in ctx.builder.used:
            ctx.builder.add_input(top)
