"""M: an LSTM over [z_t, a_t] with a factorised mixture head for z_{t+1}, plus reward and
done heads, which the dream needs to hand out rewards and end episodes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodels.config import MDNRNNConfig
from worldmodels.models.mdn import MixtureHead, MixtureParams

# (h, c): each (B, hidden) for step(), (1, B, hidden) for forward()
LSTMState = tuple[Tensor, Tensor]


class MDNRNN(nn.Module):
    def __init__(self, config: MDNRNNConfig | None = None):
        super().__init__()
        self.config = c = config or MDNRNNConfig()
        self.lstm = nn.LSTM(c.z_size + c.action_size, c.hidden_size, batch_first=True)
        self.mdn = MixtureHead(c.hidden_size, c.z_size, c.gaussians)
        self.reward = nn.Linear(c.hidden_size, 1)
        self.done = nn.Linear(c.hidden_size, 1)

    def heads(self, h: Tensor) -> tuple[MixtureParams, Tensor, Tensor]:
        """LSTM output (..., hidden) -> (mixture for z_{t+1}, reward, done logit)."""
        return self.mdn(h), self.reward(h).squeeze(-1), self.done(h).squeeze(-1)

    def forward(self, z: Tensor, action: Tensor, state: LSTMState | None = None):
        """Sequences z (B, T, Z), action (B, T, A) -> (MixtureParams (B, T, Z, K),
        reward (B, T), done_logit (B, T), final state)."""
        out, state = self.lstm(torch.cat([z, action], -1), state)
        return (*self.heads(out), state)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> LSTMState:
        zeros = torch.zeros(batch, self.config.hidden_size, device=device)
        return zeros, zeros.clone()

    def step(self, z: Tensor, action: Tensor, state: LSTMState) -> LSTMState:
        """One LSTM step for a batch: z (B, Z), action (B, A), state (h, c) each (B, H).

        Same weights as forward(), without nn.LSTM's per-call overhead on the dream's hot path."""
        h, c = state
        gates = F.linear(torch.cat([z, action], -1), self.lstm.weight_ih_l0, self.lstm.bias_ih_l0)
        gates = gates + F.linear(h, self.lstm.weight_hh_l0, self.lstm.bias_hh_l0)
        i, f, g, o = gates.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c
