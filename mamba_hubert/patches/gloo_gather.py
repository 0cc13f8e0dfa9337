"""`all_gather_list` off NCCL, for multi-process training on CPU (gloo) (fairseq-fixed 0.12.3.1).

fairseq's trainer syncs HuBERT's logging outputs (which cannot simply be summed) with
`fairseq.distributed.utils.all_gather_list`, which stages the pickled data in a `torch.cuda.ByteTensor`
buffer and all-reduces it: on a machine without CUDA a multi-process gloo run dies at its first update
("TypeError: type torch.cuda.ByteTensor not available").

`install()` puts a wrapper in its place that, for groups whose backend is not NCCL, gathers the objects with
`torch.distributed.all_gather_object` (gloo sends CPU tensors); NCCL groups and TPUs keep fairseq's function.
"""

from typing import Any

import torch.distributed as dist
from fairseq import utils
from fairseq.distributed import utils as distributed_utils

_fairseq_all_gather_list = distributed_utils.all_gather_list


def all_gather_list(data: Any, group: Any = None, max_size: int = 16384) -> list:
    """fairseq's `all_gather_list(data, group, max_size)`: every rank's `data` (CUDA tensors moved to CPU), in
    rank order. Off NCCL there is no fixed buffer, so `max_size` bounds nothing there."""
    if distributed_utils.use_xla():
        return _fairseq_all_gather_list(data, group=group, max_size=max_size)
    if group is None:
        group = distributed_utils.get_global_group()
    if dist.get_backend(group) == dist.Backend.NCCL:
        return _fairseq_all_gather_list(data, group=group, max_size=max_size)
    gathered = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, utils.move_to_cpu(data), group=group)
    return gathered


def install() -> None:
    """Makes fairseq's `all_gather_list` work on gloo (see the module docstring); idempotent."""
    distributed_utils.all_gather_list = all_gather_list
