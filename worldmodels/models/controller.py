"""C: a linear map [z, h] (or [z, h, c]) -> the world's actions, as a flat parameter vector
for CMA-ES.

C's raw outputs go through the world's `squash` (CarRacing: steer = tanh, gas = (tanh + 1)
/ 2, brake = clip(tanh, 0, 1); Take Cover: one tanh). With z 32, h 256 and CarRacing's 3
actions the vector has (32 + 256) * 3 + 3 = 867 entries: the weight matrix row-major, then
the bias. A controller that `sees_cell` also reads M's LSTM cell state c, as the paper's Take
Cover agent did (z 64 + h 512 + c 512 -> 1 action: 1,089 entries); its matrix's columns are
[z, h, c].
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor

from worldmodels.env.carracing import ACTIONS as CARRACING_ACTIONS
from worldmodels.env.game import ActionSpace

# CarRacing's, the default world's (also what older code and tests import from here).
ACTIONS = CARRACING_ACTIONS.size
ACTION_LOW, ACTION_HIGH = CARRACING_ACTIONS.low, CARRACING_ACTIONS.high


def param_count(z_size: int, hidden_size: int, actions: int = ACTIONS,
                sees_cell: bool = False) -> int:
    return (z_size + hidden_size * (2 if sees_cell else 1)) * actions + actions


class Controllers:
    """B controllers, one per row, from flat parameter vectors (B, P) (or one (P,)): the one
    place the vector is unpacked. `act(obs, cell=c)` gives row i the actions of controller i
    on obs[i] (and c[i])."""

    def __init__(self, params: np.ndarray | Tensor, z_size: int, hidden_size: int,
                 device: torch.device | str = "cpu", actions: ActionSpace = CARRACING_ACTIONS,
                 sees_cell: bool = False):
        params = torch.as_tensor(np.array(params, np.float32), device=device)  # a writable copy
        if params.ndim == 1:  # one vector: one controller
            params = params[None]
        n_obs, n_out = z_size + hidden_size, actions.size
        n_in = n_obs + (hidden_size if sees_cell else 0)
        expected = param_count(z_size, hidden_size, n_out, sees_cell)
        if params.ndim != 2 or params.shape[1] != expected:
            cell = f" + c {hidden_size}" if sees_cell else ""
            raise ValueError(
                f"controller needs {expected} parameters for z {z_size} + h {hidden_size}{cell} "
                f"-> {n_out} actions, got shape {tuple(params.shape)}"
            )
        self.squash = actions.squash
        matrix = params[:, : n_in * n_out].reshape(-1, n_out, n_in)
        # [z, h] and c apart: C reads them where they already are, without a copy per step.
        self.weight = matrix[:, :, :n_obs].contiguous()
        self.weight_cell = matrix[:, :, n_obs:].contiguous() if sees_cell else None
        self.bias = params[:, n_in * n_out :].contiguous()

    def __len__(self) -> int:
        return len(self.weight)

    def subset(self, rows: Tensor) -> Controllers:
        """Controllers rows[0], rows[1], ... as rows 0, 1, ... of a new set."""
        subset = copy.copy(self)
        subset.weight, subset.bias = self.weight[rows], self.bias[rows]
        if self.weight_cell is not None:
            subset.weight_cell = self.weight_cell[rows]
        return subset

    def act(self, obs: Tensor, rows: Tensor | None = None, cell: Tensor | None = None) -> Tensor:
        """obs [z, h] (B, Z + H) and M's cell state (B, H) -> actions (B, A); row i goes to
        controller rows[i] (default i; a single controller serves every row). `cell` is read
        only by a controller that sees it."""
        weights = [(self.weight, obs)]
        if self.weight_cell is not None:
            if cell is None:
                raise ValueError("this controller reads M's cell state: pass cell")
            weights.append((self.weight_cell, cell))
        bias = self.bias
        if rows is not None:
            weights, bias = [(w[rows], x) for w, x in weights], bias[rows]
        elif len(self) == 1:
            weights = [(w.expand(len(obs), -1, -1), x) for w, x in weights]
            bias = bias.expand(len(obs), -1)
        # A row-wise dot product: 5x faster than a batched matmul of 3 x 288 matrices on CPU.
        # The first product is the output buffer: the dream's step allocates nothing more.
        (weight, x), *rest = weights
        out = torch.linalg.vecdot(weight, x.unsqueeze(1)).add_(bias)
        for weight, x in rest:
            out.add_(torch.linalg.vecdot(weight, x.unsqueeze(1)))
        return self.squash(out)
