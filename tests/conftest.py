import os

import torch

# Triton's interpreter must be chosen before triton is imported; only without a GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
