"""Make randomly initialised models numerically meaningful for parity checks."""

from __future__ import annotations

import torch
from torch import nn

THREADS = 2  # fixed: a batch statistic is a parallel sum whose last bits depend on the thread count, and the whole
# int8 export follows from them; two exports side by side (one thread each otherwise) must match one alone


def estimate_batchnorm_stats(model: nn.Module, images_nchw: torch.Tensor, batch_size: int = 16) -> int:
    """Set every BatchNorm's running mean/var to the statistics of `images_nchw`; return how many were set.

    A random model whose BatchNorms still hold mean 0 / var 1 collapses to a constant output (its last bias),
    which makes parity metrics meaningless. Re-estimated statistics keep activations at unit scale, so the
    logits depend on the image the way a trained model's do. Weights are untouched.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        with torch.no_grad():
            for start in range(0, len(images_nchw), batch_size):
                model(images_nchw[start : start + batch_size])
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return len(norms)
