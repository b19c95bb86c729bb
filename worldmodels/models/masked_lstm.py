"""The LSTM recurrence with a fixed per-row mask on h before W_hh (variational dropout), as one
autograd function: forward and backward through time are written out, so autograd keeps no
graph per step and W_hh's gradient is one matmul over all steps. MDNRNN.step() is the plain
reference it is tested against; on a CPU about 1.2x faster than autograd through that loop
at Take Cover's size (scripts/bench.py train)."""

from __future__ import annotations

import torch
from torch import Tensor


class MaskedLSTM(torch.autograd.Function):
    """(input gates (B, T, 4H) with both biases, h0 (B, H), c0 (B, H), W_hh (4H, H),
    mask (B, H)) -> (outputs h_t (B, T, H), h_T, c_T). Gates in nn.LSTM's order i, f, g, o."""

    @staticmethod
    def forward(ctx, x_gates: Tensor, h: Tensor, c: Tensor, weight_hh: Tensor,
                mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, steps, width = x_gates.shape
        hidden = width // 4
        gates = x_gates.new_empty(batch, steps, width)  # after their nonlinearities
        cells = x_gates.new_empty(batch, steps + 1, hidden)  # c0, then c after each step
        masked = x_gates.new_empty(batch, steps, hidden)  # h_{t-1} * mask: W_hh's input
        out = x_gates.new_empty(batch, steps, hidden)
        cells[:, 0] = c
        for t in range(steps):
            masked[:, t] = h * mask
            a = torch.addmm(x_gates[:, t], masked[:, t], weight_hh.t())
            a[:, :2 * hidden].sigmoid_()
            a[:, 2 * hidden:3 * hidden].tanh_()
            a[:, 3 * hidden:].sigmoid_()
            gates[:, t] = a
            i, f, g, o = a.chunk(4, 1)
            c = f * c + i * g
            cells[:, t + 1] = c
            h = o * torch.tanh(c)
            out[:, t] = h
        ctx.save_for_backward(gates, cells, masked, weight_hh, mask)
        return out, h, c

    @staticmethod
    def backward(ctx, grad_out: Tensor | None, grad_h: Tensor | None,
                 grad_c: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, None]:
        gates, cells, masked, weight_hh, mask = ctx.saved_tensors
        batch, steps, width = gates.shape
        hidden = width // 4
        d_gates = gates.new_empty(batch, steps, width)  # before the nonlinearities
        dh = gates.new_zeros(batch, hidden) if grad_h is None else grad_h.clone()
        dc = gates.new_zeros(batch, hidden) if grad_c is None else grad_c.clone()
        for t in reversed(range(steps)):
            if grad_out is not None:
                dh = dh + grad_out[:, t]
            i, f, g, o = gates[:, t].chunk(4, 1)
            tanh_c = torch.tanh(cells[:, t + 1])
            dc = dc + dh * o * (1 - tanh_c * tanh_c)
            d = d_gates[:, t]
            d[:, :hidden] = dc * g * i * (1 - i)
            d[:, hidden:2 * hidden] = dc * cells[:, t] * f * (1 - f)
            d[:, 2 * hidden:3 * hidden] = dc * i * (1 - g * g)
            d[:, 3 * hidden:] = dh * tanh_c * o * (1 - o)
            dc = dc * f
            dh = (d @ weight_hh) * mask
        grad_weight = d_gates.reshape(-1, width).t() @ masked.reshape(-1, hidden)
        return d_gates, dh, dc, grad_weight, None
