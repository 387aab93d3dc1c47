"""On-disk dtypes and compressors of the activation arrays, and the bytes of a shard's file.

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


class ShardEncoder:
    """The bytes of the file Zarr writes for one whole shard of `array` holding given rows, encoded in memory.

    Every chunk is stored, one of zeros alone too: Zarr's default leaves such chunks out, which costs a
    comparison of every chunk with zeros, a pass over the shard; activations are never all zeros. The
    in-memory array is made once, since making it costs about as much as encoding a small shard; one
    encoder serves one thread at a time.
    """

    def __init__(self, array, rows: int):
        import zarr
        from zarr.storage import MemoryStore

        self._files: dict = {}
        self._shard = zarr.create_array(
            MemoryStore(self._files),
            shape=(rows, *array.shape[1:]),
            chunks=array.chunks,
            shards=array.shards,
            dtype=array.dtype,
            filters=array.filters,
            serializer=array.serializer,
            compressors=array.compressors,
            fill_value=array.fill_value,
            config={"write_empty_chunks": True},
        )
        self._key = self._shard.metadata.encode_chunk_key((0,) * array.ndim)

    def __call__(self, data: np.ndarray):
        self._shard[:] = data
        return self._files.pop(self._key)  # taken out, so the next shard is encoded afresh, not merged into this one
