"""The training node graph: dataset -> train -> save / loss graph."""

from .dataset_node import F2DTrainingDataset
from .loss_graph_node import F2DLossGraph
from .options_node import F2DTrainingOptions
from .save_node import F2DSaveMapper
from .train_node import F2DTrainMapper

TRAINING_NODES = [F2DTrainingDataset, F2DTrainMapper, F2DTrainingOptions, F2DSaveMapper, F2DLossGraph]
