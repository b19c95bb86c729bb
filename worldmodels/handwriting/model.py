"""Unconditional handwriting model (Graves 2013, section 4): LSTM -> bivariate MDN + end-of-stroke.

The output layer is the shared `BivariateHead` from `worldmodels.models.mdn`, so the NLL and
the biased sampling are the same code the World Models M uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from worldmodels.errors import require_finite
from worldmodels.handwriting.data import START_TOKEN, Batch, denormalise
from worldmodels.models.mdn import BivariateHead, BivariateParams

State = tuple[Tensor, Tensor]


@dataclass
class HandwritingConfig:
    hidden_size: int = 256
    """LSTM units per layer (Graves: 400)."""
    layers: int = 2
    """Stacked LSTM layers (Graves: 3)."""
    components: int = 20
    """Bivariate Gaussians in the output mixture."""
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    grad_clip: float = 1.0
    clip: float = 10.0
    """Normalised offsets are clipped to +-clip standard deviations (outliers)."""
    max_train_drawings: int = 0
    """Train on this many training drawings (a seeded subset); 0 means all."""
    valid_fraction: float = 0.05
    """Held-out fraction for sources with no validation split (IAM XML)."""
    seed: int = 0
    scale_x: float = 1.0
    """Std of dx in the training data, set by training: offsets are divided by it."""
    scale_y: float = 1.0
    """Std of dy in the training data, set by training."""
    typical_points: int = 32
    """Median points per training drawing: the default length of a sample."""
    data: str = ""
    """The training data (absolute path; "" means the bundled Omniglot strokes)."""

    @property
    def scale(self) -> tuple[float, float]:
        return (self.scale_x, self.scale_y)


class HandwritingModel(nn.Module):
    def __init__(self, config: HandwritingConfig):
        super().__init__()
        self.config = config
        self.lstm = nn.LSTM(3, config.hidden_size, num_layers=config.layers, batch_first=True)
        self.head = BivariateHead(config.hidden_size, config.components)

    def forward(self, inputs: Tensor, state: State | None = None) -> tuple[BivariateParams, State]:
        """inputs (B, T, 3) normalised stroke-3 -> mixture params per step, final LSTM state."""
        features, state = self.lstm(inputs, state)
        return self.head(features), state

    def point_nll(self, batch: Batch) -> Tensor:
        """NLL in nats of every target point (B, T); padded points are zeroed by the mask."""
        params, _ = self(batch.inputs)
        return params.nll(batch.targets) * batch.mask

    def loss(self, batch: Batch) -> Tensor:
        """Masked mean NLL in nats per point."""
        return self.point_nll(batch).sum() / batch.mask.sum()


@torch.no_grad()
def sample(model: HandwritingModel, n: int, points: int, bias: float = 0.0,
           temperature: float = 1.0, seed: int = 0) -> list[np.ndarray]:
    """`n` drawings of `points` points each, in data units (stroke-3, last point lifts the pen).
    The generator lives on the model's device, so a seed's drawings differ between devices."""
    require_finite("bias", bias, at_least=0)
    require_finite("temperature", temperature, above=0)
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    x = torch.tensor(START_TOKEN, device=device).expand(n, 1, 3).contiguous()
    state = None
    out = torch.empty(n, points, 3, device=device)
    for t in range(points):
        params, state = model(x, state)
        point = params.sample(tau=temperature, bias=bias, generator=generator)  # (n, 1, 3)
        out[:, t] = point[:, 0]
        x = point
    out[:, -1, 2] = 1.0  # the drawing ends: close its last stroke
    return [denormalise(d, model.config.scale) for d in out.cpu().numpy()]
