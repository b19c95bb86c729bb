"""M: an LSTM over [z_t, a_t] with a mixture head for z_{t+1} (factorised per dimension as in
the paper, or joint: `config.mixture`), plus reward and done heads, which the dream needs to
hand out rewards and end episodes.

Dropout (config.dropout = p > 0), as in "Dropout's Dream Land" (Wellmer and Kwok, 2021):
variational masks on the LSTM's input [z, a] and on its recurrent state h, one mask per
sequence held for all its steps (scaled by 1 / (1 - p)). The dream draws one mask per
rollout the same way, so every dream is a slightly different plausible M. With p = 0 the
model is the plain nn.LSTM, exactly as before dropout existed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodels.config import MDNRNNConfig, check_fields
from worldmodels.models.masked_lstm import MaskedLSTM
from worldmodels.models.mdn import JointMixtureParams, MixtureParams, mixture_head

# (h, c): each (B, hidden) for step(), (1, B, hidden) for forward()
LSTMState = tuple[Tensor, Tensor]
# (input mask (B, Z + A), hidden mask (B, H)): 0 or 1 / (1 - p), held across a sequence
DropoutMasks = tuple[Tensor, Tensor]


def dropout_mask(shape: tuple[int, ...], rate: float, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> Tensor:
    """Inverted-dropout mask: each entry 0 with probability `rate`, else 1 / (1 - rate)."""
    keep = torch.rand(shape, generator=generator, device=device) >= rate
    return keep.float() / (1.0 - rate)


class MDNRNN(nn.Module):
    def __init__(self, config: MDNRNNConfig | None = None):
        super().__init__()
        self.config = c = config or MDNRNNConfig()
        check_fields(c, "M's config", "mdnrnn")  # also one built in code
        self.lstm = nn.LSTM(c.z_size + c.action_size, c.hidden_size, batch_first=True)
        self.mdn = mixture_head(c.mixture, c.hidden_size, c.z_size, c.gaussians)
        self.reward = nn.Linear(c.hidden_size, 1)
        self.done = nn.Linear(c.hidden_size, 1)

    def heads(self, h: Tensor) -> tuple[MixtureParams | JointMixtureParams, Tensor, Tensor]:
        """LSTM output (..., hidden) -> (mixture for z_{t+1}, reward, done logit)."""
        return self.mdn(h), self.reward(h).squeeze(-1), self.done(h).squeeze(-1)

    def forward(self, z: Tensor, action: Tensor, state: LSTMState | None = None,
                masks: DropoutMasks | None = None):
        """Sequences z (B, T, Z), action (B, T, A) -> (mixture params over (B, T),
        reward (B, T), done_logit (B, T), final state (h, c) each (1, B, H)).

        With `masks` (training with dropout) MaskedLSTM runs the recurrence with the masks
        applied at every step; without, nn.LSTM runs it."""
        x = torch.cat([z, action], -1)
        if masks is None:
            out, state = self.lstm(x, state)
            return (*self.heads(out), state)
        input_mask, hidden_mask = masks
        lstm = self.lstm
        # The input half of every step's gates in one matmul; only h @ W_hh is sequential.
        x_gates = F.linear(x * input_mask.unsqueeze(1), lstm.weight_ih_l0,
                           lstm.bias_ih_l0 + lstm.bias_hh_l0)
        if state is None:
            h, c = self.initial_state(len(z), z.device)
        else:
            h, c = state[0][0], state[1][0]
        out, h, c = MaskedLSTM.apply(x_gates, h, c, lstm.weight_hh_l0, hidden_mask)
        return (*self.heads(out), (h[None], c[None]))

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> LSTMState:
        zeros = torch.zeros(batch, self.config.hidden_size, device=device)
        return zeros, zeros.clone()

    def dropout_masks(self, batch: int, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> DropoutMasks | None:
        """One sequence's masks per row, or None when the config has no dropout."""
        c = self.config
        if c.dropout == 0:
            return None
        return (dropout_mask((batch, c.z_size + c.action_size), c.dropout, generator, device),
                dropout_mask((batch, c.hidden_size), c.dropout, generator, device))

    def step(self, z: Tensor, action: Tensor, state: LSTMState,
             masks: DropoutMasks | None = None) -> LSTMState:
        """One LSTM step for a batch: z (B, Z), action (B, A), state (h, c) each (B, H).

        Same weights as forward(), without nn.LSTM's per-call overhead on the hot path."""
        h, c = state
        x = torch.cat([z, action], -1)
        if masks is not None:
            x, h = x * masks[0], h * masks[1]
        gates = F.linear(x, self.lstm.weight_ih_l0, self.lstm.bias_ih_l0)
        return self._cell(gates + F.linear(h, self.lstm.weight_hh_l0, self.lstm.bias_hh_l0), c)

    @staticmethod
    def _cell(gates: Tensor, c: Tensor) -> LSTMState:
        i, f, g, o = gates.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
