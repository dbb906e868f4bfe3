"""The ComfyUI node layer: thin V3 nodes that translate ComfyUI types for f2d_core."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .add_person import F2DAddPerson
from .apply_tokens import F2DApplyTokens
from .best_of_n import F2DBestOfN
from .clip_score import F2DCLIPScore
from .encode_face import F2DEncodeFace
from .evaluation_paths import register_evaluation_folders
from .expression_reference import F2DExpressionReference
from .face_files import F2DLoadFace, F2DSaveFace
from .face_masks import F2DFaceMasks
from .face_similarity import F2DFaceSimilarity
from .freecure_sampler import F2DFreeCureSampler
from .load_encoder import F2DLoadMSIDEncoder
from .model_paths import register_model_folders
from .norm_match import F2DNormMatch
from .pooled_source import F2DPooledSource
from .region_layout import F2DRegionLayout
from .scoring_loaders import F2DLoadCLIPScorer, F2DLoadFaceRecognizer
from .training import TRAINING_NODES
from .widget_values import with_linked_value_checks

NODES: list[type[io.ComfyNode]] = [
    F2DLoadMSIDEncoder,
    F2DEncodeFace,
    F2DExpressionReference,
    F2DApplyTokens,
    F2DPooledSource,
    F2DNormMatch,
    F2DSaveFace,
    F2DLoadFace,
    F2DRegionLayout,
    F2DFaceMasks,
    F2DAddPerson,
    *TRAINING_NODES,
    F2DLoadFaceRecognizer,
    F2DFaceSimilarity,
    F2DLoadCLIPScorer,
    F2DCLIPScore,
    F2DBestOfN,
    F2DFreeCureSampler,
]
for _node in NODES:
    with_linked_value_checks(_node)  # linked widget values are checked (or a seed folded) when a node runs


class Face2DiffusionExtension(ComfyExtension):
    """Registers the pack's model folders and nodes."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        register_evaluation_folders()
        register_model_folders()  # before ComfyUI reads the schemas, whose file lists need the folders
        return NODES
