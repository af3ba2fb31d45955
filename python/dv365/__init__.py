"""dv365: the model and pipeline layer of DV365 (data, slicing spec, user towers, backbone, export, CLI)."""

__version__ = "0.1.0"
