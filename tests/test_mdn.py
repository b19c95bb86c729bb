"""The shared MDN core: exact NLL against torch.distributions, stability at extremes,
sampling moments, temperature and Graves' bias."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from worldmodels.errors import UserError
from worldmodels.models.mdn import (
    BivariateHead,
    BivariateParams,
    JointMixtureHead,
    JointMixtureParams,
    MixtureHead,
    MixtureParams,
    mixture_head,
)

FAST = settings(max_examples=30, deadline=None)


def _factorised(batch=(4, 3), dims=5, k=4, seed=0) -> MixtureParams:
    g = torch.Generator().manual_seed(seed)
    shape = (*batch, dims, k)
    return MixtureParams(torch.randn(shape, generator=g) * 2, torch.randn(shape, generator=g),
                         torch.randn(shape, generator=g) * 0.5)


def _bivariate(batch=(6,), k=3, seed=0) -> BivariateParams:
    g = torch.Generator().manual_seed(seed)
    return BivariateParams(
        logit_pi=torch.randn((*batch, k), generator=g) * 2,
        mu=torch.randn((*batch, k, 2), generator=g),
        log_sigma=torch.randn((*batch, k, 2), generator=g) * 0.5,
        rho=torch.rand((*batch, k), generator=g) * 1.8 - 0.9,
        eos_logit=torch.randn(batch, generator=g) * 2,
    )


def test_factorised_nll_equals_torch_distributions():
    p = _factorised()
    target = torch.randn(4, 3, 5) * 1.5
    reference = MixtureSameFamily(Categorical(logits=p.logit_pi),
                                  Normal(p.mu, p.log_sigma.exp()))
    expected = -reference.log_prob(target).sum(-1)
    assert p.nll(target).shape == (4, 3)
    torch.testing.assert_close(p.nll(target), expected, rtol=1e-5, atol=1e-5)


def test_joint_nll_equals_torch_distributions():
    g = torch.Generator().manual_seed(3)
    logit_pi, mu, log_sigma = (torch.randn(shape, generator=g) * scale for shape, scale in
                               (((4, 3, 2), 2.0), ((4, 3, 2, 5), 1.0), ((4, 3, 2, 5), 0.5)))
    p = JointMixtureParams(logit_pi, mu, log_sigma)
    target = torch.randn(4, 3, 5) * 1.5
    reference = MixtureSameFamily(Categorical(logits=logit_pi),
                                  Independent(Normal(mu, log_sigma.exp()), 1))
    assert p.nll(target).shape == (4, 3)
    torch.testing.assert_close(p.nll(target), -reference.log_prob(target), rtol=1e-5, atol=1e-5)


def test_the_joint_head_picks_one_component_for_all_dimensions():
    # Two equally likely components at (-3, ..., -3) and (3, ..., 3), narrow: a joint sample
    # has every dimension on the same side (the factorised form mixes sides), and its moments
    # are the mixture's, also at another temperature.
    n, dims = 20_000, 4
    head = JointMixtureHead(8, dims, 2)
    assert head.width == 2 * (1 + 2 * dims)
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.copy_(torch.cat([torch.zeros(2), torch.full((dims,), -3.0),
                                          torch.full((dims,), 3.0), torch.full((2 * dims,), -2.0)]))
    p = head(torch.zeros(n, 8))
    assert p.logit_pi.shape == (n, 2) and p.mu.shape == p.log_sigma.shape == (n, 2, dims)
    torch.testing.assert_close(p.mean(), torch.zeros(n, dims))
    for tau in (1.0, 1.5):
        samples = p.sample(tau=tau, generator=torch.Generator().manual_seed(0))
        signs = samples.sign()
        assert (signs == signs[:, :1]).all()  # one pick per sample
        assert abs(float((signs[:, 0] > 0).float().mean()) - 0.5) < 0.02
        var = 9.0 + tau * math.exp(-4.0)  # between components + within one, sigma^2 tau
        torch.testing.assert_close(samples.var(0), torch.full((dims,), var), rtol=0.03, atol=0)
    factorised = MixtureParams(*(t.transpose(-1, -2) for t in (
        p.logit_pi.unsqueeze(-1).expand(n, 2, dims), p.mu, p.log_sigma)))
    f_signs = factorised.sample(generator=torch.Generator().manual_seed(0)).sign()
    assert (f_signs != f_signs[:, :1]).any(1).float().mean() > 0.8  # 1 - 2 / 2^4 = 0.875


def test_m_s_mixture_is_chosen_by_name():
    assert isinstance(mixture_head("joint", 8, 4, 3), JointMixtureHead)
    assert isinstance(mixture_head("factorised", 8, 4, 3), MixtureHead)
    with pytest.raises(UserError, match="factorised, joint"):
        mixture_head("full", 8, 4, 3)


def test_bivariate_nll_equals_torch_distributions():
    p = _bivariate()
    point = torch.cat([torch.randn(6, 2) * 1.5, torch.randint(0, 2, (6, 1)).float()], -1)
    sx, sy = p.log_sigma.exp().unbind(-1)
    cov = torch.stack([torch.stack([sx * sx, p.rho * sx * sy], -1),
                       torch.stack([p.rho * sx * sy, sy * sy], -1)], -2)
    offsets = MixtureSameFamily(Categorical(logits=p.logit_pi), MultivariateNormal(p.mu, cov))
    expected = -(offsets.log_prob(point[:, :2])
                 + Bernoulli(logits=p.eos_logit).log_prob(point[:, 2]))
    torch.testing.assert_close(p.nll(point), expected, rtol=1e-5, atol=1e-5)


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@FAST
@given(scale=st.floats(1e-3, 1e3), shift=finite, target_scale=st.floats(0, 1e3),
       seed=st.integers(0, 2**16))
def test_factorised_head_is_finite_with_finite_grads_at_extremes(scale, shift, target_scale,
                                                                 seed):
    torch.manual_seed(seed)
    head = MixtureHead(8, dims=3, components=5)
    features = (torch.randn(4, 8) * scale + shift).requires_grad_()
    target = torch.randn(4, 3) * target_scale
    params = head(features)
    nll = params.nll(target)
    assert torch.isfinite(nll).all()
    nll.sum().backward()
    assert torch.isfinite(features.grad).all()
    assert all(torch.isfinite(w.grad).all() for w in head.parameters())
    # (No sampling here: sigma = exp(88) is a valid head output whose samples overflow.)


@FAST
@given(scale=st.floats(1e-3, 1e3), shift=finite, target_scale=st.floats(0, 1e3),
       seed=st.integers(0, 2**16))
def test_bivariate_head_is_finite_with_finite_grads_at_extremes(scale, shift, target_scale,
                                                                seed):
    torch.manual_seed(seed)
    head = BivariateHead(8, components=4)
    features = (torch.randn(5, 8) * scale + shift).requires_grad_()
    point = torch.cat([torch.randn(5, 2) * target_scale, torch.randint(0, 2, (5, 1)).float()], -1)
    params = head(features)
    nll = params.nll(point)
    assert torch.isfinite(nll).all()
    nll.sum().backward()
    assert torch.isfinite(features.grad).all()
    assert all(torch.isfinite(w.grad).all() for w in head.parameters())


@FAST
@given(logit=st.floats(-1e4, 1e4), log_sigma=st.floats(-7, 50), x=st.floats(-1e4, 1e4))
def test_factorised_nll_finite_for_extreme_parameters(logit, log_sigma, x):
    """Parameters the head can express (log sigma >= -7), pushed to their extremes."""
    logits = torch.tensor([[logit, -logit, 0.0]], requires_grad=True)
    mu = torch.tensor([[0.0, 1e3, -1e3]], requires_grad=True)
    ls = torch.full((1, 3), log_sigma, requires_grad=True)
    params = MixtureParams(logits, mu, ls)
    nll = params.nll(torch.tensor([x]))
    assert torch.isfinite(nll).all()
    nll.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (logits, mu, ls))
    for tau in (1e-3, 1.0, 3.0):
        assert torch.isfinite(params.sample(tau=tau, bias=2.0)).all()


@FAST
@given(logit=st.floats(-1e4, 1e4), log_sigma=st.floats(-7, 40), rho=st.floats(-1, 1),
       x=st.floats(-1e4, 1e4), eos=st.floats(-1e4, 1e4))
def test_bivariate_nll_finite_for_extreme_parameters(logit, log_sigma, rho, x, eos):
    from worldmodels.models.mdn import RHO_MAX

    logits = torch.tensor([logit, -logit], requires_grad=True)
    mu = torch.tensor([[0.0, 0.0], [1e3, -1e3]], requires_grad=True)
    ls = torch.full((2, 2), log_sigma, requires_grad=True)
    r = torch.tensor([rho * RHO_MAX, -rho * RHO_MAX], requires_grad=True)
    e = torch.tensor(eos, requires_grad=True)
    params = BivariateParams(logits, mu, ls, r, e)
    nll = params.nll(torch.tensor([x, -x, 1.0]))
    assert torch.isfinite(nll)
    nll.backward()
    assert all(torch.isfinite(t.grad).all() for t in (logits, mu, ls, r, e))
    assert torch.isfinite(params.sample(tau=0.01, bias=3.0)).all()


def test_factorised_sample_moments_match_the_mixture():
    logit_pi = torch.tensor([[0.5, -0.3, 1.0], [2.0, 0.0, -1.0]])
    mu = torch.tensor([[-2.0, 0.5, 3.0], [1.0, -1.0, 0.0]])
    log_sigma = torch.tensor([[-0.5, 0.0, 0.3], [0.2, -1.0, 0.0]])
    n = 40_000
    p = MixtureParams(*(t.expand(n, 2, 3) for t in (logit_pi, mu, log_sigma)))
    samples = p.sample(generator=torch.Generator().manual_seed(0))
    pi = torch.softmax(logit_pi, -1)
    mean = (pi * mu).sum(-1)
    var = (pi * (log_sigma.exp() ** 2 + mu**2)).sum(-1) - mean**2
    torch.testing.assert_close(p.mean()[0], mean)
    se = (var / n).sqrt()
    assert ((samples.mean(0) - mean).abs() < 4 * se).all()
    torch.testing.assert_close(samples.var(0), var, rtol=0.05, atol=0)


def test_bivariate_sample_moments_match_the_mixture():
    n = 40_000
    logit_pi = torch.tensor([0.3, -0.2])
    mu = torch.tensor([[1.0, -1.0], [-0.5, 2.0]])
    sigma = torch.tensor([[0.5, 0.8], [1.2, 0.3]])
    rho = torch.tensor([0.7, -0.4])
    p = BivariateParams(logit_pi.expand(n, 2), mu.expand(n, 2, 2), sigma.log().expand(n, 2, 2),
                        rho.expand(n, 2), torch.full((n,), -1.0))
    samples = p.sample(generator=torch.Generator().manual_seed(1))
    pi = torch.softmax(logit_pi, -1)
    mean = (pi[:, None] * mu).sum(0)
    # Second moments of a mixture: sum_k pi_k (Sigma_k + mu_k mu_k^T) - mean mean^T.
    cov_k = torch.stack([torch.stack([sigma[:, 0] ** 2, rho * sigma.prod(-1)], -1),
                         torch.stack([rho * sigma.prod(-1), sigma[:, 1] ** 2], -1)], -2)
    second = (pi[:, None, None] * (cov_k + mu[:, :, None] * mu[:, None, :])).sum(0)
    cov = second - mean[:, None] * mean[None, :]
    empirical = torch.cov(samples[:, :2].T)
    assert ((samples[:, :2].mean(0) - mean).abs() < 4 * (cov.diagonal() / n).sqrt()).all()
    torch.testing.assert_close(empirical, cov, rtol=0.06, atol=0.02)
    assert abs(samples[:, 2].mean().item() - torch.sigmoid(torch.tensor(-1.0)).item()) < 0.01


def test_small_temperature_concentrates_on_the_modes():
    p = _factorised(batch=(2000,), dims=3, k=4, seed=3)
    # Same mixture for every row, so the mode is the mean of the heaviest component.
    p = MixtureParams(*(t[:1].expand_as(t) for t in (p.logit_pi, p.mu, p.log_sigma)))
    gen = torch.Generator().manual_seed(0)
    samples = p.sample(tau=1e-4, generator=gen)
    heaviest = p.logit_pi[0].argmax(-1, keepdim=True)
    mode = p.mu[0].gather(-1, heaviest).squeeze(-1)
    spread = p.log_sigma[0].gather(-1, heaviest).squeeze(-1).exp() * 1e-2  # sigma sqrt(tau)
    assert ((samples - mode).abs() < 6 * spread).all()  # every sample sits at the mode
    spread_hot = p.sample(tau=1.0, generator=gen).std(0)
    spread_cold = samples.std(0)
    assert (spread_cold < 0.02 * spread_hot).all()

    q = _bivariate(batch=(2000,), k=3, seed=4)
    q = BivariateParams(*(t[:1].expand_as(t) for t in
                          (q.logit_pi, q.mu, q.log_sigma, q.rho, q.eos_logit)))
    points = q.sample(tau=1e-4, generator=gen)
    heaviest = q.logit_pi[0].argmax()
    spread = q.log_sigma[0, heaviest].exp() * 1e-2
    assert ((points[:, :2] - q.mu[0, heaviest]).abs() < 6 * spread).all()


def test_temperature_scales_the_variance_of_one_gaussian():
    n = 40_000
    p = MixtureParams(torch.zeros(n, 1, 1), torch.zeros(n, 1, 1), torch.zeros(n, 1, 1))
    samples = p.sample(tau=2.0, generator=torch.Generator().manual_seed(0))
    assert abs(samples.var().item() - 2.0) < 0.06  # sigma * sqrt(tau) -> variance * tau


def test_graves_bias_sharpens_weights_and_shrinks_sigma():
    n, b = 40_000, 1.5
    logit_pi = torch.tensor([0.0, 0.6, -0.4])
    mu = torch.tensor([[-10.0, 0.0], [0.0, 10.0], [10.0, 0.0]])  # far apart: picks are visible
    p = BivariateParams(logit_pi.expand(n, 3), mu.expand(n, 3, 2), torch.zeros(n, 3, 2),
                        torch.zeros(n, 3), torch.zeros(n))
    samples = p.sample(bias=b, generator=torch.Generator().manual_seed(0))
    picked = (samples[:, None, :2] - mu).square().sum(-1).argmin(-1)
    frequency = torch.bincount(picked, minlength=3).float() / n
    torch.testing.assert_close(frequency, torch.softmax(logit_pi * (1 + b), -1), atol=0.01,
                               rtol=0)
    std = (samples[:, :2] - mu[picked]).std(0)
    torch.testing.assert_close(std, torch.full((2,), math.exp(-b)), rtol=0.03, atol=0)


def test_head_shapes():
    mixture = MixtureHead(16, dims=32, components=5)(torch.randn(2, 7, 16))
    assert mixture.mu.shape == mixture.log_sigma.shape == mixture.logit_pi.shape == (2, 7, 32, 5)
    assert mixture.sample().shape == (2, 7, 32)
    assert mixture.nll(torch.randn(2, 7, 32)).shape == (2, 7)
    bivariate = BivariateHead(16, components=20)(torch.randn(3, 16))
    assert bivariate.mu.shape == (3, 20, 2) and bivariate.eos_logit.shape == (3,)
    assert bivariate.sample().shape == (3, 3)


def test_nonpositive_temperature_is_refused():
    with pytest.raises(ValueError, match="temperature"):
        _factorised().sample(tau=0.0)
    assert np.isfinite(_factorised().sample(tau=1e-6).numpy()).all()
