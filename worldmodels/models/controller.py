"""C: a linear map [z, h] -> 3 actions, as a flat parameter vector for CMA-ES.

steer = tanh, gas = (tanh + 1) / 2, brake = clip(tanh, 0, 1). With z 32 and h 256 the
vector has (32 + 256) * 3 + 3 = 867 entries: the weight matrix row-major, then the bias.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

ACTIONS = 3


def param_count(z_size: int, hidden_size: int) -> int:
    return (z_size + hidden_size) * ACTIONS + ACTIONS


def squash(raw: Tensor) -> Tensor:
    """Raw outputs (..., 3) -> CarRacing actions (..., 3)."""
    t = torch.tanh(raw)
    return torch.stack([t[..., 0], (t[..., 1] + 1) / 2, t[..., 2].clamp(0, 1)], -1)


class Controller:
    """One controller, from and to its flat parameter vector."""

    def __init__(self, params: np.ndarray, z_size: int, hidden_size: int):
        params = np.asarray(params, dtype=np.float32)
        n_in = z_size + hidden_size
        if params.shape != (param_count(z_size, hidden_size),):
            raise ValueError(
                f"controller needs {param_count(z_size, hidden_size)} parameters for z {z_size} "
                f"+ h {hidden_size}, got shape {params.shape}"
            )
        self.weight = torch.from_numpy(params[: n_in * ACTIONS].reshape(ACTIONS, n_in).copy())
        self.bias = torch.from_numpy(params[n_in * ACTIONS :].copy())

    @property
    def params(self) -> np.ndarray:
        return np.concatenate([self.weight.numpy().ravel(), self.bias.numpy()])

    def act(self, z: Tensor, h: Tensor) -> Tensor:
        """z (..., Z), h (..., H) -> actions (..., 3)."""
        return squash(torch.cat([z, h], -1) @ self.weight.T + self.bias)

