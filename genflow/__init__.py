"""genflow: diffusion models, score SDEs and continuous normalizing flows on one Gaussian path.

    from genflow.processes import VPSDE
    from genflow.nets import MLP
    process, net = VPSDE(), MLP(dim=2, time_scale=1000.0)
    loss = process.loss(net, x0)          # denoising score matching, lambda = sigma^2
"""

import sys as _sys

from genflow import threads as _threads

# Before torch loads, or OpenMP never reads it: threads that spin only briefly at barriers before
# they sleep (a busy machine; genflow/threads.py). A value already set, or torch imported first, wins.
_threads.default_wait_policy(imported="torch" in _sys.modules)

from genflow import nets, processes, testing  # noqa: E402
from genflow.utils import append_dims

__version__ = "0.1.0"

__all__ = ["__version__", "append_dims", "nets", "processes", "testing"]

from genflow import samplers  # noqa: E402
from genflow.samplers import encode, sample  # noqa: E402

__all__ += ["encode", "sample", "samplers"]

from genflow import likelihood  # noqa: E402
from genflow.likelihood import bits_per_dim, log_likelihood  # noqa: E402

__all__ += ["bits_per_dim", "likelihood", "log_likelihood"]
