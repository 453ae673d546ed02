"""The settings of the whole process, in one place (nanochat calls its own `compute_init`).

The command line's entry points call `init_process()` once, before they compute. A library user
calls it as well to run as fast as the command line does; without it, tinygpt leaves the
process as it found it: no library function changes a setting of the whole process.

What it sets, and why:
- glibc's malloc keeps freed memory (devices.keep_freed_cpu_memory): an eager training step
  frees and takes the same large buffers again, and then reuses the last step's pages;
- TF32 matrix products on CUDA: float32 weights at close to bfloat16 speed;
- torch's CPU threads, to the cores that other processes leave idle (threads.ThreadPolicy). The
  policy it returns is the one to hand to `train_new`, `resume` or a sampling loop, which fit it
  to their work and look at the load again as they go.

Ctrl-C and SIGTERM are handled by a training itself, while it runs (lifecycle.StopSignals):
only on the main thread, where Python delivers signals; a training run from another thread
takes none and runs to its end.
"""

from __future__ import annotations

import torch

from .devices import keep_freed_cpu_memory
from .threads import ThreadPolicy


def init_process() -> ThreadPolicy:
    """Set what the module docstring lists; returns the process's CPU thread policy."""
    keep_freed_cpu_memory()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return ThreadPolicy()
