"""C: a linear map [z, h] -> the world's actions, as a flat parameter vector for CMA-ES.

C's raw outputs go through the world's `squash` (CarRacing: steer = tanh, gas = (tanh + 1)
/ 2, brake = clip(tanh, 0, 1); Take Cover: one tanh). With z 32, h 256 and CarRacing's 3
actions the vector has (32 + 256) * 3 + 3 = 867 entries: the weight matrix row-major, then
the bias.
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


def param_count(z_size: int, hidden_size: int, actions: int = ACTIONS) -> int:
    return (z_size + hidden_size) * actions + actions


class Controllers:
    """B controllers, one per row, from flat parameter vectors (B, P) (or one (P,)): the one
    place the vector is unpacked. `act(obs)` gives row i the actions of controller i on obs[i]."""

    def __init__(self, params: np.ndarray | Tensor, z_size: int, hidden_size: int,
                 device: torch.device | str = "cpu", actions: ActionSpace = CARRACING_ACTIONS):
        params = torch.as_tensor(np.array(params, np.float32), device=device)  # a writable copy
        if params.ndim == 1:  # one vector: one controller
            params = params[None]
        n_in, n_out = z_size + hidden_size, actions.size
        expected = param_count(z_size, hidden_size, n_out)
        if params.ndim != 2 or params.shape[1] != expected:
            raise ValueError(
                f"controller needs {expected} parameters for z {z_size} + h {hidden_size} -> "
                f"{n_out} actions, got shape {tuple(params.shape)}"
            )
        self.squash = actions.squash
        self.weight = params[:, : n_in * n_out].reshape(-1, n_out, n_in).contiguous()
        self.bias = params[:, n_in * n_out :].contiguous()

    def __len__(self) -> int:
        return len(self.weight)

    def subset(self, rows: Tensor) -> Controllers:
        """Controllers rows[0], rows[1], ... as rows 0, 1, ... of a new set."""
        subset = copy.copy(self)
        subset.weight, subset.bias = self.weight[rows], self.bias[rows]
        return subset

    def act(self, obs: Tensor, rows: Tensor | None = None) -> Tensor:
        """obs [z, h] (B, Z + H) -> actions (B, A); obs[i] goes to controller rows[i] (default
        i; a single controller serves every row)."""
        weight, bias = self.weight, self.bias
        if rows is not None:
            weight, bias = weight[rows], bias[rows]
        elif len(self) == 1:
            weight, bias = weight.expand(len(obs), -1, -1), bias.expand(len(obs), -1)
        # A row-wise dot product: 5x faster than a batched matmul of 3 x 288 matrices on CPU.
        return self.squash(torch.linalg.vecdot(weight, obs.unsqueeze(1)).add_(bias))
