"""normkit's kernels as drop-in ``torch.nn`` modules.

``LayerNorm``, ``RMSNorm``, ``BatchNorm1d/2d/3d``, ``GroupNorm`` and
``InstanceNorm1d/2d/3d`` subclass their ``torch.nn`` namesakes (same
arguments, parameters, buffers, ``state_dict`` keys); ``DyT``, ``Derf``, ``AdaIN``,
``AdaLayerNorm``, ``AdaRMSNorm``, ``SwitchNorm``, ``BatchRenorm`` and
``weight_norm`` add what ``torch.nn`` lacks. :func:`replace_norms` swaps a
model's ``torch.nn`` norms in place. CPU tensors only: a tensor on another
device raises ``ValueError`` naming it.
"""

from .adaptive import (
    AdaIN,
    AdaLayerNorm,
    AdaRMSNorm,
    BatchRenorm,
    Derf,
    DyT,
    SwitchNorm,
    weight_norm,
)
from .norms import (
    DROP_IN,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    RMSNorm,
    replace_norms,
)

__all__ = [
    "AdaIN",
    "AdaLayerNorm",
    "AdaRMSNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchRenorm",
    "DROP_IN",
    "Derf",
    "DyT",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "RMSNorm",
    "SwitchNorm",
    "replace_norms",
    "weight_norm",
]
