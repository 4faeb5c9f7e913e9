"""Flow matching on the linear (rectified / OT) path, with optional minibatch OT coupling.

Flow-matching papers run time from noise (0) to data (1); genflow runs every process from data
(t = 0) to noise (t = 1). With s = 1 - t_paper, Lipman et al.'s path
mu = t x1, std = 1 - (1 - sigma_min) t becomes

    x_s = (1 - s) x0 + (sigma_min + (1 - sigma_min) s) eps,

and the velocity genflow learns, dx_s/ds, is the negative of the paper's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from genflow.processes.base import GaussianPath, PathCoefficients
from genflow.utils import check_choice

COUPLINGS = ("independent", "ot")


def ot_pairing(x0: Tensor, noise: Tensor) -> Tensor:
    """Indices ``perm`` such that (x0[i], noise[perm[i]]) is an exact minibatch OT plan.

    Squared-Euclidean cost, uniform weights, solved by POT's network simplex (``ot.emd``, as in
    Tong et al. 2024). For equal batch sizes the simplex returns a vertex of the Birkhoff
    polytope, i.e. a permutation, so no pair is drawn twice.
    """
    import ot  # POT; imported here so plain diffusion users never load it

    a = x0.detach().reshape(x0.shape[0], -1).double().cpu()
    b = noise.detach().reshape(noise.shape[0], -1).double().cpu()
    cost = torch.cdist(a, b) ** 2
    n = a.shape[0]
    plan = ot.emd(np.full(n, 1.0 / n), np.full(n, 1.0 / n), cost.numpy(), numItermax=max(100_000, 50 * n * n))
    perm = torch.from_numpy(plan.argmax(axis=1))
    if len(torch.unique(perm)) != n:  # pragma: no cover - a degenerate, non-vertex solution
        from scipy.optimize import linear_sum_assignment

        perm = torch.from_numpy(linear_sum_assignment(cost.numpy())[1])
    return perm.to(noise.device)


class FlowMatching(GaussianPath):
    """Conditional flow matching (Lipman et al. 2023; Liu et al. 2023; Tong et al. 2024).

    Args:
        coupling: ``"independent"`` noise/data pairs, or ``"ot"`` for exact minibatch optimal
            transport pairing (shorter, straighter paths).
        sigma_min: noise left at the data end (Lipman et al.'s sigma_min; 0 gives rectified flow).
        prediction: ``"velocity"``, the flow ODE's velocity dx_t/dt in genflow's time.
    """

    predictions = ("velocity",)
    loss_space = "velocity"
    has_reverse_sde = False

    def __init__(self, coupling: str = "independent", sigma_min: float = 0.0, prediction: str = "velocity") -> None:
        super().__init__(prediction)
        check_choice(coupling, COUPLINGS, "coupling")
        if not 0.0 <= sigma_min < 1.0:
            raise ValueError(f"sigma_min must lie in [0, 1); got {sigma_min!r}")
        self.coupling = coupling
        self.sigma_min = float(sigma_min)

    def coefficients(self, t: Tensor) -> PathCoefficients:
        k = 1.0 - self.sigma_min
        return PathCoefficients(
            alpha=1.0 - t,
            sigma=self.sigma_min + k * t,
            d_alpha=torch.full_like(t, -1.0),
            d_sigma=torch.full_like(t, k),
        )

    def couple(self, x0: Tensor, noise: Tensor) -> Tensor:
        if self.coupling == "independent":
            return noise
        return noise[ot_pairing(x0, noise)]

    def __repr__(self) -> str:
        return f"FlowMatching(coupling={self.coupling!r}, sigma_min={self.sigma_min}, prediction={self.prediction!r})"
