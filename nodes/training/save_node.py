"""Save F2D Mapper: the trained mapper as `.safetensors` (settings in its metadata) plus the workflow beside it."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ...f2d_core.atomic_io import atomic_write
from ...f2d_core.checkpoints import save_f2d_safetensors
from ...f2d_core.training.mapper_output import check_mapper_destination, run_of
from ..model_paths import F2D_FOLDER
from ..sockets import F2DTrainedMapperSocket, TrainedMapper

log = logging.getLogger(__name__)


class F2DSaveMapper(io.ComfyNode):
    """Save F2D Mapper."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DSaveMapper",
            display_name="Save F2D Mapper",
            category="face2diffusion/training",
            description="Saves the trained mapper to models/face2diffusion/<name>.safetensors (pick it as "
            "mapper_file in Load MSID Encoder) with the run's settings in its metadata, and this workflow as "
            "<name>.workflow.json beside it.",
            inputs=[
                F2DTrainedMapperSocket.Input("trained_mapper", tooltip="From Train F2D Mapper."),
                io.String.Input("name", default="f2d_mapper_trained", tooltip="File name (no extension)."),
                io.Boolean.Input(
                    "overwrite",
                    default=False,
                    optional=True,
                    tooltip="Replace an existing mapper of this name saved by another run. The same run continued "
                    "(same run_name, more steps) replaces its own mapper without it. A file that is not a mapper of "
                    "this pack is never replaced.",
                ),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Where the mapper was written.")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, trained_mapper: TrainedMapper, name: str, overwrite: bool = False) -> io.NodeOutput:
        stem = re.sub(r"[^\w\-.]", "_", name).strip("._") or "f2d_mapper_trained"
        folder = Path(folder_paths.get_folder_paths(F2D_FOLDER)[0])
        note = check_mapper_destination(folder / f"{stem}.safetensors", overwrite, run_of(trained_mapper.settings))
        metadata = {
            "contents": "mapper",
            "trained_steps": str(trained_mapper.step),
            "final_loss": f"{trained_mapper.losses[-1]:.6g}" if trained_mapper.losses else "",
            "training_settings": trained_mapper.settings,
            "dataset_report": trained_mapper.dataset_report,
        }
        path = save_f2d_safetensors(folder / f"{stem}.safetensors", mapper=trained_mapper.mapper, metadata=metadata)
        workflow = {"workflow": (cls.hidden.extra_pnginfo or {}).get("workflow"), "prompt": cls.hidden.prompt}
        atomic_write(
            folder / f"{stem}.workflow.json",
            lambda tmp: tmp.write_text(json.dumps(workflow, indent=1), encoding="utf-8"),
        )
        if note:
            log.info("Save F2D Mapper: %s", note)
        return io.NodeOutput(str(path), ui={"text": [str(path)]})
