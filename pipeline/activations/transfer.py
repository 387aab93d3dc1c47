"""Batches of host rows moved to the training device without stalling it.

Copying from ordinary (pageable) host memory to a GPU makes the host wait until the device has
finished all the work queued before the copy: the device then idles while the host queues the
next step's kernels, on every batch. From page-locked memory the copy is queued like a kernel and
the host goes straight on. PyTorch's caching host allocator keeps each page-locked block until
its copy has completed, so a block is never overwritten mid-copy.
"""

import torch


def batch_to_device(rows: torch.Tensor, index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """rows[index] on `device`, in float32; host rows bound for a GPU go through page-locked memory, asynchronously."""
    if device.type != "cuda" or rows.is_cuda:
        return rows[index].to(device=device, dtype=torch.float32)
    staged = torch.empty((len(index), *rows.shape[1:]), dtype=rows.dtype, pin_memory=True)
    torch.index_select(rows, 0, index, out=staged)
    # Copied in the stored dtype (float16 from a stream: half the bytes), converted on the device.
    return staged.to(device=device, non_blocking=True).float()
