"""Test-session set-up: without a CUDA GPU, Triton kernels run under the interpreter."""
import os

import torch

if not torch.cuda.is_available():
    # Must be set before any @triton.jit function is defined (retrain.kernels is imported lazily).
    os.environ.setdefault("TRITON_INTERPRET", "1")
