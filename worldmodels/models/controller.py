"""C: a linear map [z, h] -> 3 actions, as a flat parameter vector for CMA-ES; and CarRacing's
action bounds, which every policy (C, the data policies, the dream's action space) shares.

steer = tanh, gas = (tanh + 1) / 2, brake = clip(tanh, 0, 1). With z 32 and h 256 the
vector has (32 + 256) * 3 + 3 = 867 entries: the weight matrix row-major, then the bias.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

ACTIONS = 3
ACTION_LOW = np.array([-1.0, 0.0, 0.0], np.float32)  # steer, gas, brake
ACTION_HIGH = np.array([1.0, 1.0, 1.0], np.float32)


def param_count(z_size: int, hidden_size: int) -> int:
    return (z_size + hidden_size) * ACTIONS + ACTIONS


def squash(raw: Tensor) -> Tensor:
    """Raw outputs (..., 3) -> CarRacing actions (..., 3)."""
    t = torch.tanh(raw)
    return torch.stack([t[..., 0], (t[..., 1] + 1) / 2, t[..., 2].clamp(0, 1)], -1)


class Controllers:
    """B controllers, one per row, from flat parameter vectors (B, P) (or one (P,)): the one
    place the vector is unpacked. `act(obs)` gives row i the actions of controller i on obs[i]."""

    def __init__(self, params: np.ndarray | Tensor, z_size: int, hidden_size: int,
                 device: torch.device | str = "cpu"):
        params = torch.as_tensor(np.array(params, np.float32), device=device)  # a writable copy
        if params.ndim == 1:  # one vector: one controller
            params = params[None]
        n_in = z_size + hidden_size
        if params.ndim != 2 or params.shape[1] != param_count(z_size, hidden_size):
            raise ValueError(
                f"controller needs {param_count(z_size, hidden_size)} parameters for z {z_size} "
                f"+ h {hidden_size}, got shape {tuple(params.shape)}"
            )
        self.weight = params[:, : n_in * ACTIONS].reshape(-1, ACTIONS, n_in).contiguous()
        self.bias = params[:, n_in * ACTIONS :].contiguous()

    def __len__(self) -> int:
        return len(self.weight)

    def act(self, obs: Tensor, rows: Tensor | None = None) -> Tensor:
        """obs [z, h] (B, Z + H) -> actions (B, 3); obs[i] goes to controller rows[i] (default i;
        a single controller serves every row)."""
        weight, bias = self.weight, self.bias
        if rows is not None:
            weight, bias = weight[rows], bias[rows]
        elif len(self) == 1:
            weight, bias = weight.expand(len(obs), -1, -1), bias.expand(len(obs), -1)
        # A row-wise dot product: 5x faster than a batched matmul of 3 x 288 matrices on CPU.
        return squash(torch.linalg.vecdot(weight, obs.unsqueeze(1)).add_(bias))

