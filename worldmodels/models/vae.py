"""V: the convolutional VAE that compresses a 64x64x3 frame to a latent z (Ha & Schmidhuber)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from worldmodels.config import VAEConfig


class ConvVAE(nn.Module):
    """Encoder conv 32-64-128-256 (k4 s2) -> 1024 -> mu, logvar; decoder 1024 -> deconv
    128-64-32-3 (k5,5,6,6 s2) -> sigmoid. Frames go in as uint8 (B, 64, 64, 3) or as
    float (B, 3, 64, 64) in [0, 1]."""

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = config or VAEConfig()
        z = self.config.z_size
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, stride=2), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 128, 4, stride=2), nn.ReLU(),
            nn.Conv2d(128, 256, 4, stride=2), nn.ReLU(),
            nn.Flatten(),
        )
        self.fc_mu = nn.Linear(1024, z)
        self.fc_logvar = nn.Linear(1024, z)
        self.fc_decode = nn.Linear(z, 1024)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(1024, 128, 5, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 5, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 6, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(32, 3, 6, stride=2), nn.Sigmoid(),
        )

    @staticmethod
    def to_input(frames: Tensor) -> Tensor:
        """uint8 (B, 64, 64, 3) -> float (B, 3, 64, 64) in [0, 1]; float input passes through."""
        if frames.dtype == torch.uint8:
            return frames.permute(0, 3, 1, 2).float().div_(255.0)
        return frames

    def encode(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(self.to_input(frames))
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: Tensor) -> Tensor:
        """z (B, Z) -> frames (B, 3, 64, 64) in [0, 1]."""
        return self.decoder(self.fc_decode(z).view(-1, 1024, 1, 1))

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(frames)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar

    def loss(self, frames: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(total, reconstruction, kl), each the batch mean of a per-image sum.

        KL has the free-bits floor max(KL, kl_tolerance * z_size) per image."""
        x = self.to_input(frames)
        recon, mu, logvar = self(x)
        rec = (recon - x).square().flatten(1).sum(-1).mean()
        kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(-1)
        kl = kl.clamp_min(self.config.kl_tolerance * self.config.z_size).mean()
        return rec + kl, rec, kl
