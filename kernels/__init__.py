"""Triton kernels of the ``triton`` backend, installed as ``retrain.kernels``.

* ``train``: fused probe training, several epochs and checkpoints (validation included) per
  launch, and the in-kernel permutation.
* ``validate``: per-probe validation loss (its per-user loop is shared with ``train``).
* ``score``: item scores for recommend.
* ``tower``: the frozen tower and the products shared by the three; ``items``: the item rows
  (bias folded or not) that training and validation gather; ``blocks``: block sizes and the
  training kernel's variants; ``inputs``: the launchers' argument checks.

The modules define ``@triton.jit`` functions at import: set ``TRITON_INTERPRET=1`` before the
first import to run them on the CPU.  They receive tensors and scalars only.
"""
