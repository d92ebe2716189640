"""normkit: normalization layers for deep learning, with Rust kernels.

- ``normkit.torch``: drop-in ``torch.nn`` modules (needs PyTorch);
- ``normkit.functional``: the same ops over NumPy arrays;
- ``python -m normkit.bench``: ``torch.nn`` against ``normkit.torch``.
"""

from ._normkit import Saved, backward, forward, signature, simd_level

__all__ = ["Saved", "backward", "forward", "signature", "simd_level"]
