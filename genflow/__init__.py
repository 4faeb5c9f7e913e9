"""genflow: diffusion models, score SDEs and continuous normalizing flows on one Gaussian path.

    from genflow.processes import VPSDE
    from genflow.nets import MLP
    process, net = VPSDE(), MLP(dim=2, time_scale=1000.0)
    loss = process.loss(net, x0)          # denoising score matching, lambda = sigma^2
"""

from genflow import nets, processes, testing
from genflow.utils import append_dims

__version__ = "0.1.0"

__all__ = ["__version__", "append_dims", "nets", "processes", "testing"]

from genflow import samplers  # noqa: E402
from genflow.samplers import encode, sample  # noqa: E402

__all__ += ["encode", "sample", "samplers"]

from genflow import likelihood  # noqa: E402
from genflow.likelihood import bits_per_dim, log_likelihood  # noqa: E402

__all__ += ["bits_per_dim", "likelihood", "log_likelihood"]
