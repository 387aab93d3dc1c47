"""On-disk dtypes and compressors of the activation arrays.

bfloat16 has no Zarr dtype, so its bits are stored as uint16 and the logical dtype is kept in the
array's attributes; the round trip is exact.
"""

import numpy as np
import torch

from pipeline.config.schema import CODECS  # noqa: F401 - the compressors `compressors` knows, declared with store.codec

# logical dtype -> (Zarr dtype on disk, torch dtype the bits are viewed as)
DTYPES = {
    "float32": ("float32", torch.float32),
    "float16": ("float16", torch.float16),
    "bfloat16": ("uint16", torch.bfloat16),
}


def compressors(codec: str):
    import zarr.codecs

    if codec == "zstd":
        return zarr.codecs.ZstdCodec(level=3)
    if codec == "blosc-zstd":
        return zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
    return None


def encode(acts: torch.Tensor, dtype: str) -> np.ndarray:
    """A [rows, d] tensor as the numpy array stored on disk."""
    logical = DTYPES[dtype][1]
    x = acts.detach().to("cpu", logical).contiguous()
    return x.view(torch.uint16).numpy() if dtype == "bfloat16" else x.numpy()


def decode(stored: np.ndarray, dtype: str) -> torch.Tensor:
    """Stored rows back as a tensor of the logical dtype (a view for bfloat16, no copy)."""
    x = torch.from_numpy(np.ascontiguousarray(stored))
    return x.view(torch.bfloat16) if dtype == "bfloat16" else x
