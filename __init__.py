"""Face2Diffusion for ComfyUI: a face photo becomes two words (S*) any SD1.x checkpoint understands."""

WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    """ComfyUI's V3 entry point."""
    from .nodes import Face2DiffusionExtension

    return Face2DiffusionExtension()
