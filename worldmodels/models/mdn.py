"""The one mixture-density core: heads, exact log-likelihoods, and sampling.

Three forms share the same conventions:
- factorised (World Models M, as in the paper): each of D dimensions has its own mixture of
  K univariate Gaussians. Params have shape (..., D, K).
- joint (World Models M, `mdnrnn.mixture: joint`): K diagonal Gaussians over all D
  dimensions, picked together: one component per sample, so an event that moves many
  dimensions at once (a fireball appearing) is one component, not D independent picks.
  Params have shape (..., K) and (..., K, D).
- bivariate (Graves handwriting): K bivariate Gaussians over (dx, dy), with correlation
  rho, plus a Bernoulli end-of-stroke. Params have shape (..., K) and (..., K, 2).

Log-likelihoods are computed in log space (log_softmax, logsumexp, softplus) with no
epsilons added to the loss. Finite values are guaranteed by the heads instead: they bound
log sigma softly from below and |rho| away from 1, so every density they can express
is finite, and the NLL is exact for the parameters it is given.

Sampling: temperature tau divides the mixture logits and scales sigma by sqrt(tau);
Graves' bias b sharpens pi = softmax(logits * (1 + b)) and shrinks sigma = exp(log_sigma - b).
Every mixture pick goes through `pick_component`, which takes pre-drawn uniforms (so the
dream can draw each row's noise from the row's own generator) and is exact for any logits:
it subtracts the row's maximum before exponentiating, so shifting all logits changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodels.config import MIXTURES
from worldmodels.errors import UserError

LOG_SIGMA_MIN = -7.0  # sigma >= ~1e-3: far below any spread the data has, far from overflow
RHO_MAX = 1.0 - 1e-4  # |rho| < 1 keeps log(1 - rho^2) >= ~-8.5
_LOG_2PI = math.log(2.0 * math.pi)


def _bounded_log_sigma(raw: Tensor) -> Tensor:
    """Smooth lower bound: LOG_SIGMA_MIN + softplus(raw - LOG_SIGMA_MIN) ~= raw when raw >> min."""
    return LOG_SIGMA_MIN + F.softplus(raw - LOG_SIGMA_MIN)


class BadTemperature(UserError, ValueError):
    """A sampling temperature that is not finite and > 0."""


def check_tau(tau: float) -> float:
    """The one check of a sampling temperature (the dream's, evolve's, the sampler's)."""
    if not (tau > 0 and math.isfinite(tau)):
        raise BadTemperature(f"--tau must be > 0 and finite (the sampling temperature), got {tau}")
    return float(tau)


def _adjust_logits(logit_pi: Tensor, tau: float, bias: float) -> Tensor:
    """logits * (1 + bias) / tau; the identity factors are skipped (bit-identical, faster)."""
    check_tau(tau)
    if not math.isfinite(bias):
        raise ValueError(f"bias must be finite, got {bias}")
    logits = logit_pi * (1.0 + bias) if bias != 0 else logit_pi
    return logits / tau if tau != 1 else logits


def _adjust_log_sigma(log_sigma: Tensor, tau: float, bias: float) -> Tensor:
    return log_sigma - bias + 0.5 * math.log(tau)


def pick_component(logits: Tensor, uniform: Tensor) -> Tensor:
    """Index of the component drawn from softmax(logits) over the last axis, by inverse CDF
    with one pre-drawn uniform in [0, 1) per row: logits (..., K), uniform (...) -> (...).

    Weights are exp(logits - max), so the largest is 1 and nothing overflows or vanishes
    wholesale (a component e^-87 below the best is never picked, as it should almost never
    be). Unnormalised: u scales by the total instead (cheaper than a softmax on CPU)."""
    cdf = (logits - logits.amax(-1, keepdim=True)).exp_().cumsum(-1)
    u = (uniform * cdf[..., -1]).unsqueeze(-1)
    return (u >= cdf[..., :-1]).sum(-1)


# --------------------------------------------------------------------- factorised
@dataclass
class MixtureParams:
    """Per-dimension mixtures: logit_pi, mu, log_sigma all (..., D, K)."""

    logit_pi: Tensor
    mu: Tensor
    log_sigma: Tensor

    def nll(self, target: Tensor) -> Tensor:
        """-log p(target), summed over D: target (..., D) -> (...)."""
        return -self.log_prob_per_dim(target).sum(-1)

    def log_prob_per_dim(self, target: Tensor) -> Tensor:
        x = target.unsqueeze(-1)
        z = (x - self.mu) * torch.exp(-self.log_sigma)
        log_normal = -0.5 * z.square() - self.log_sigma - 0.5 * _LOG_2PI
        return torch.logsumexp(F.log_softmax(self.logit_pi, dim=-1) + log_normal, dim=-1)

    def sample(self, tau: float = 1.0, bias: float = 0.0,
               generator: torch.Generator | None = None) -> Tensor:
        """One sample per dimension: (..., D)."""
        shape, like = self.mu.shape[:-1], self.mu
        uniform = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
        normal = torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
        return self.sample_with(uniform, normal, tau, bias)

    def sample_with(self, uniform: Tensor, normal: Tensor, tau: float = 1.0,
                    bias: float = 0.0) -> Tensor:
        """The sample that the given noise makes: uniform (..., D) picks each dimension's
        component, normal (..., D) is its standard normal draw; returns (..., D)."""
        k = pick_component(_adjust_logits(self.logit_pi, tau, bias), uniform).unsqueeze(-1)
        mu = self.mu.gather(-1, k).squeeze(-1)
        # Only the picked component's sigma is adjusted: D values, not D * K.
        sigma = _adjust_log_sigma(self.log_sigma.gather(-1, k).squeeze(-1), tau, bias).exp_()
        return sigma.mul_(normal).add_(mu)

    def mean(self) -> Tensor:
        """The mixture mean per dimension: (..., D)."""
        return (F.softmax(self.logit_pi, dim=-1) * self.mu).sum(-1)


class _LinearHead(nn.Module):
    """One linear layer whose `width` outputs `params_from` reads as a mixture (the dream
    computes that output itself, fused with M's other heads)."""

    def __init__(self, in_features: int, dims: int, components: int, width: int):
        super().__init__()
        self.dims, self.components = dims, components
        self.linear = nn.Linear(in_features, width)

    @property
    def width(self) -> int:
        return self.linear.out_features

    def forward(self, features: Tensor) -> MixtureParams | JointMixtureParams:
        return self.params_from(self.linear(features))


class MixtureHead(_LinearHead):
    """features (..., F) -> MixtureParams over D dims with K components each."""

    def __init__(self, in_features: int, dims: int, components: int):
        super().__init__(in_features, dims, components, 3 * dims * components)

    def params_from(self, out: Tensor) -> MixtureParams:
        """The linear layer's output (..., 3 * D * K) -> MixtureParams."""
        logit_pi, mu, raw_log_sigma = out.unflatten(-1, (3, self.dims, self.components)).unbind(-3)
        return MixtureParams(logit_pi, mu, _bounded_log_sigma(raw_log_sigma))


# --------------------------------------------------------------------- joint
@dataclass
class JointMixtureParams:
    """K diagonal Gaussians over D dims: logit_pi (..., K), mu and log_sigma (..., K, D)."""

    logit_pi: Tensor
    mu: Tensor
    log_sigma: Tensor

    def nll(self, target: Tensor) -> Tensor:
        """-log p(target): target (..., D) -> (...)."""
        z = (target.unsqueeze(-2) - self.mu) * torch.exp(-self.log_sigma)
        log_normal = (-0.5 * z.square() - self.log_sigma - 0.5 * _LOG_2PI).sum(-1)  # (..., K)
        return -torch.logsumexp(F.log_softmax(self.logit_pi, dim=-1) + log_normal, dim=-1)

    def sample(self, tau: float = 1.0, bias: float = 0.0,
               generator: torch.Generator | None = None) -> Tensor:
        """One sample of all D dims: (..., D)."""
        like = self.mu
        shape = like.shape[:-2] + like.shape[-1:]
        uniform = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
        normal = torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
        return self.sample_with(uniform, normal, tau, bias)

    def sample_with(self, uniform: Tensor, normal: Tensor, tau: float = 1.0,
                    bias: float = 0.0) -> Tensor:
        """The sample that the given noise makes, with the factorised form's noise shapes (so
        the dream draws the same noise for either): uniform (..., D), of which only the first
        column picks the one component; normal (..., D); returns (..., D)."""
        k = pick_component(_adjust_logits(self.logit_pi, tau, bias), uniform[..., 0])
        pick = k[..., None, None].expand(*k.shape, 1, self.mu.shape[-1])
        mu = self.mu.gather(-2, pick).squeeze(-2)
        log_sigma = self.log_sigma.gather(-2, pick).squeeze(-2)
        return _adjust_log_sigma(log_sigma, tau, bias).exp_().mul_(normal).add_(mu)

    def mean(self) -> Tensor:
        """The mixture mean: (..., D)."""
        return (F.softmax(self.logit_pi, dim=-1).unsqueeze(-1) * self.mu).sum(-2)


class JointMixtureHead(_LinearHead):
    """features (..., F) -> JointMixtureParams: K components over D dims (K + 2 K D outputs)."""

    def __init__(self, in_features: int, dims: int, components: int):
        super().__init__(in_features, dims, components, components * (1 + 2 * dims))

    def params_from(self, out: Tensor) -> JointMixtureParams:
        """The linear layer's output (..., K + 2 K D) -> JointMixtureParams."""
        k = self.components
        mu, raw_log_sigma = out[..., k:].unflatten(-1, (2, k, self.dims)).unbind(-3)
        return JointMixtureParams(out[..., :k], mu, _bounded_log_sigma(raw_log_sigma))


MIXTURE_HEADS = dict(zip(MIXTURES, (MixtureHead, JointMixtureHead), strict=True))


def check_mixture(name: str) -> str:
    if name not in MIXTURE_HEADS:
        raise UserError(f"mdnrnn.mixture (--mixture) must be one of {', '.join(MIXTURES)}, "
                        f"got {name!r}")
    return name


def mixture_head(name: str, in_features: int, dims: int,
                 components: int) -> MixtureHead | JointMixtureHead:
    """M's head for z_{t+1} by its form's name (`mdnrnn.mixture`)."""
    return MIXTURE_HEADS[check_mixture(name)](in_features, dims, components)


# --------------------------------------------------------------------- bivariate
@dataclass
class BivariateParams:
    """K bivariate Gaussians plus end-of-stroke.

    logit_pi (..., K), mu (..., K, 2), log_sigma (..., K, 2), rho (..., K), eos_logit (...).
    """

    logit_pi: Tensor
    mu: Tensor
    log_sigma: Tensor
    rho: Tensor
    eos_logit: Tensor

    def log_prob_offset(self, offset: Tensor) -> Tensor:
        """log p(dx, dy): offset (..., 2) -> (...)."""
        z = (offset.unsqueeze(-2) - self.mu) * torch.exp(-self.log_sigma)  # (..., K, 2)
        zx, zy = z.unbind(-1)
        one_minus_rho2 = (1.0 - self.rho) * (1.0 + self.rho)  # avoids cancellation near |rho|=1
        quad = (zx.square() + zy.square() - 2.0 * self.rho * zx * zy) / one_minus_rho2
        log_normal = (
            -_LOG_2PI - self.log_sigma.sum(-1) - 0.5 * torch.log(one_minus_rho2) - 0.5 * quad
        )
        return torch.logsumexp(F.log_softmax(self.logit_pi, dim=-1) + log_normal, dim=-1)

    def log_prob_eos(self, pen: Tensor) -> Tensor:
        """log Bernoulli(pen | sigmoid(eos_logit)): pen (...) in {0, 1}."""
        return -F.binary_cross_entropy_with_logits(self.eos_logit, pen, reduction="none")

    def nll(self, point: Tensor) -> Tensor:
        """-log p(dx, dy, pen): point (..., 3) -> (...)."""
        return -(self.log_prob_offset(point[..., :2]) + self.log_prob_eos(point[..., 2]))

    def sample(self, tau: float = 1.0, bias: float = 0.0,
               generator: torch.Generator | None = None) -> Tensor:
        """One stroke-3 point (dx, dy, pen) per batch element: (..., 3)."""
        logits = _adjust_logits(self.logit_pi, tau, bias)
        log_sigma = _adjust_log_sigma(self.log_sigma, tau, bias)
        uniform = torch.rand(logits.shape[:-1], generator=generator, device=logits.device,
                             dtype=logits.dtype)
        k = pick_component(logits, uniform)
        pick = k.unsqueeze(-1)
        mu = self.mu.gather(-2, pick.unsqueeze(-1).expand(*k.shape, 1, 2)).squeeze(-2)
        sigma = log_sigma.gather(-2, pick.unsqueeze(-1).expand(*k.shape, 1, 2)).squeeze(-2).exp()
        rho = self.rho.gather(-1, pick).squeeze(-1)
        e1, e2 = torch.randn((2, *k.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        dx = mu[..., 0] + sigma[..., 0] * e1
        dy = mu[..., 1] + sigma[..., 1] * (rho * e1 + torch.sqrt((1 - rho) * (1 + rho)) * e2)
        p_eos = torch.sigmoid(self.eos_logit / tau)
        u = torch.rand(p_eos.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return torch.stack([dx, dy, (u < p_eos).to(mu.dtype)], dim=-1)


class BivariateHead(nn.Module):
    """features (..., F) -> BivariateParams with K components (6K + 1 outputs)."""

    def __init__(self, in_features: int, components: int):
        super().__init__()
        self.components = components
        self.linear = nn.Linear(in_features, 6 * components + 1)

    def forward(self, features: Tensor) -> BivariateParams:
        out = self.linear(features)
        k = self.components
        logit_pi, mu, raw_log_sigma, raw_rho = out[..., :6 * k].split([k, 2 * k, 2 * k, k], -1)
        return BivariateParams(
            logit_pi=logit_pi,
            mu=mu.unflatten(-1, (k, 2)),
            log_sigma=_bounded_log_sigma(raw_log_sigma).unflatten(-1, (k, 2)),
            rho=RHO_MAX * torch.tanh(raw_rho),
            eos_logit=out[..., 6 * k],
        )
