"""The DV365 model (paper 2.3): the user towers of table 1, FSA, the DLRM backbone and the full model.

- ``TOWERS`` / :func:`build_tower` — ``pass_thru``, ``LCE``, ``MLP_d``, ``MLP_t``, ``T-L_d``, ``T-L_t``, ``FSA``,
  each mapping pooled tokens ``[B, N, D]`` to the user embedding ``[B, N_out, D]`` (``dv365.models.towers``,
  ``dv365.models.fsa``)
- :class:`DLRMBackbone` — the backbone simulation network Φ (2.3.1)
- :class:`DV365Model` — pooling + tower + backbone, its loss (eq. 7-8) and parameter groups
- :class:`ModelConfig` (:class:`TowerConfig`, :class:`BackboneConfig`) — dataclasses, ``from_dict`` / ``to_dict``
"""

from .backbone import DLRMBackbone
from .config import BackboneConfig, ModelConfig, ModelConfigError, TowerConfig
from .fsa import FunnelBlock, FunnelSummarization
from .model import DENSE_FEATURES, DV365Model, ModelOutput
from .registry import TOWERS, build_tower
from .towers import (
    EncoderLayer,
    LinearCompression,
    MLPDimWise,
    MLPTokenWise,
    PassThrough,
    SelfAttention,
    TransformerDimWise,
    TransformerTokenWise,
    UserTower,
    tower_arguments,
)

__all__ = [
    "DENSE_FEATURES", "TOWERS", "BackboneConfig", "DLRMBackbone", "DV365Model", "EncoderLayer", "FunnelBlock",
    "FunnelSummarization", "LinearCompression", "MLPDimWise", "MLPTokenWise", "ModelConfig", "ModelConfigError",
    "ModelOutput", "PassThrough", "SelfAttention", "TowerConfig", "TransformerDimWise", "TransformerTokenWise",
    "UserTower", "build_tower", "tower_arguments",
]
