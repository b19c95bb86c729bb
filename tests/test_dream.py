"""The dream: a valid gymnasium env; batched and single dreams agree for the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fake_run import HIDDEN, Z, make_mdnrnn, make_run
from gymnasium.utils.env_checker import check_env

from worldmodels.config import preset, save_json
from worldmodels.env.carracing import CARRACING
from worldmodels.env.dream import BatchedDream, DreamEnv
from worldmodels.errors import UserError
from worldmodels.models.controller import Controllers, param_count
from worldmodels.run import RunPaths

STARTS = (torch.randn(4, Z, generator=torch.Generator().manual_seed(0)),
          torch.full((4, Z), -2.0))


def _single_returns(env: DreamEnv, params: np.ndarray, seed: int) -> tuple[float, int]:
    controller = Controllers(params, Z, HIDDEN)
    obs, _ = env.reset(seed=seed)
    total, steps = 0.0, 0
    while True:
        x = torch.from_numpy(obs)[None]
        action = controller.act(x)[0].numpy()
        obs, reward, terminated, truncated, _ = env.step(action)
        total, steps = total + reward, steps + 1
        if terminated or truncated:
            return total, steps


def test_dream_env_passes_check_env(tmp_path):
    env = DreamEnv.from_run(make_run(tmp_path), tau=1.0, max_steps=20, render_mode="rgb_array")
    check_env(env, skip_render_check=False)
    obs, info = env.reset(seed=3)
    assert obs.shape == (Z + HIDDEN,) and obs.dtype == np.float32
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    obs2, *_ = env.step(env.action_space.sample())
    assert np.array_equal(obs[Z:], np.zeros(HIDDEN)) and not np.array_equal(obs2[Z:], obs[Z:])


def test_dream_env_from_run_obeys_the_runs_done_rule(tmp_path):
    run = make_run(tmp_path)
    assert not DreamEnv.from_run(run).dream.sample_done  # no config.json: threshold
    config = preset("tiny")
    config.evolve.done = "sample"
    save_json(config, RunPaths(run).config)
    assert DreamEnv.from_run(run).dream.sample_done
    assert not DreamEnv.from_run(run, done="threshold").dream.sample_done


def test_reset_starts_from_real_episode_starts():
    # With a tiny std, every start z is (close to) one of the given start means.
    starts = (STARTS[0], torch.full((4, Z), -30.0))
    env = DreamEnv(make_mdnrnn(seed=1), starts, tau=1.0, max_steps=5)
    for seed in range(6):
        z = torch.from_numpy(env.reset(seed=seed)[0][:Z])
        assert torch.cdist(z[None], starts[0]).min() < 1e-3


@pytest.mark.parametrize("tau,done", [(0.5, "threshold"), (1.15, "threshold"),
                                       (1.15, "sample")])
def test_batched_and_single_dreams_agree(tau, done):
    mdnrnn = make_mdnrnn(seed=2)
    with torch.no_grad():
        mdnrnn.done.bias.fill_(-2.0)  # some dreams end early, some run to max_steps
    params = np.random.default_rng(0).normal(0, 0.5, (5, param_count(Z, HIDDEN)))
    seeds = [7, 8, 9, 10, 11]
    rules = {"tau": tau, "max_steps": 70, "done": done, "done_pos_weight": 0.2}
    batched, steps = BatchedDream(mdnrnn, STARTS, **rules).rollout(params, seeds, with_steps=True)
    env = DreamEnv(mdnrnn, STARTS, **rules)
    single = [_single_returns(env, params[i].astype(np.float32), s)
              for i, s in enumerate(seeds)]
    np.testing.assert_allclose(batched, [r for r, _ in single], rtol=1e-4, atol=1e-5)
    assert steps.tolist() == [n for _, n in single]
    # A row's dream does not depend on which rows share its batch.
    alone = BatchedDream(mdnrnn, STARTS, **rules).rollout(params[3:4], seeds[3:4])
    np.testing.assert_allclose(alone, batched[3:4], rtol=1e-4, atol=1e-5)
    assert len(set(np.round(batched, 4))) == 5  # different seeds, different dreams


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_dreams_that_end_leave_the_batch_and_the_others_dream_on_unchanged(dropout, device):
    # Deaths come by a coin (from 2 to 50+ steps here), so the batch halves
    # several times; each row must still dream exactly as it would alone.
    mdnrnn = make_mdnrnn(seed=4)
    mdnrnn.config.dropout = dropout
    with torch.no_grad():
        mdnrnn.done.weight.mul_(0.1)
        mdnrnn.done.bias.fill_(-3.0)
    rules = {"tau": 1.15, "max_steps": 90, "done": "sample"}
    params = np.random.default_rng(1).normal(0, 0.5, (24, param_count(Z, HIDDEN)))
    seeds = list(range(100, 124))
    dream = BatchedDream(mdnrnn, STARTS, device=device, **rules)
    batched, steps = dream.rollout(params, seeds, with_steps=True)
    mdnrnn.cpu()
    assert dream.batch <= 3 and steps.min() < 10 and steps.max() > 40  # it did shrink
    env = DreamEnv(mdnrnn, STARTS, **rules)
    single = [_single_returns(env, params[i].astype(np.float32), s)
              for i, s in enumerate(seeds)]
    assert steps.tolist() == [n for _, n in single]
    np.testing.assert_allclose(batched, [r for r, _ in single], rtol=1e-4, atol=1e-5)
    again = dream.rollout(params, seeds, with_steps=True)  # a new rollout refills the batch
    np.testing.assert_array_equal(again[0], batched)
    np.testing.assert_array_equal(again[1], steps)


@pytest.mark.parametrize("bias,weight", [(-1.0, 1.0), (1.0, np.exp(4.0))])
def test_sampled_done_ends_dreams_at_the_heads_calibrated_rate(bias, weight):
    # A done head that says logit `bias` every step, trained with class weight `weight`: the
    # calibrated probability is p = sigmoid(bias - log weight), so dream lengths are geometric
    # with mean 1 / p. The threshold rule instead ends every dream at once (bias > 0) or never.
    mdnrnn = make_mdnrnn(seed=6)
    with torch.no_grad():
        mdnrnn.done.weight.zero_()
        mdnrnn.done.bias.fill_(bias)
    p = 1 / (1 + np.exp(-(bias - np.log(weight))))
    rows = 2000
    params, seeds = np.zeros((rows, param_count(Z, HIDDEN))), np.arange(rows)
    _, steps = BatchedDream(mdnrnn, STARTS, tau=1.0, max_steps=400, done="sample",
                            done_pos_weight=weight).rollout(params, seeds, with_steps=True)
    standard_error = np.sqrt(1 - p) / p / np.sqrt(rows)
    assert abs(steps.mean() - 1 / p) < 4 * standard_error
    assert steps.min() == 1 and steps.max() > 3 / p  # a coin, not a rule
    _, at_threshold = BatchedDream(mdnrnn, STARTS, tau=1.0, max_steps=400, done_pos_weight=weight
                                   ).rollout(params[:5], seeds[:5], with_steps=True)
    assert set(at_threshold.tolist()) == {1 if bias > 0 else 400}


@pytest.mark.parametrize("bias,ends_at_once", [(3.0, False), (5.0, True)])
def test_likely_done_thresholds_the_calibrated_probability(bias, ends_at_once):
    # Trained with weight e^4, a constant logit of 3 is 3 - 4 < 0 calibrated: the class-weighted
    # `threshold` ends every dream at once, `likely` never; a logit of 5 ends both at once.
    mdnrnn = make_mdnrnn(seed=6)
    with torch.no_grad():
        mdnrnn.done.weight.zero_()
        mdnrnn.done.bias.fill_(bias)
    params, seeds = np.zeros((5, param_count(Z, HIDDEN))), np.arange(5)
    steps = {rule: BatchedDream(mdnrnn, STARTS, tau=1.0, max_steps=50, done=rule,
                                done_pos_weight=np.exp(4.0)).rollout(
        params, seeds, with_steps=True)[1].tolist() for rule in ("threshold", "likely")}
    assert steps == {"threshold": [1] * 5, "likely": [1 if ends_at_once else 50] * 5}


def test_unknown_done_rule_is_refused():
    with pytest.raises(ValueError, match="done rule"):
        BatchedDream(make_mdnrnn(), STARTS, done="coin")


def test_same_seed_same_dream_other_seed_other_dream():
    dream = BatchedDream(make_mdnrnn(seed=3), STARTS, tau=1.0, max_steps=40)
    params = np.zeros((2, param_count(Z, HIDDEN)))
    a = dream.rollout(params, [5, 5])
    b = dream.rollout(params, [5, 6])
    assert a[0] == a[1] == b[0] and b[1] != b[0]


def test_done_head_ends_dreams_and_stops_reward():
    mdnrnn = make_mdnrnn(gas_reward=True)
    params = np.zeros((3, param_count(Z, HIDDEN)))
    params[:, -2] = 3.0  # gas bias: full throttle, reward ~tanh(tanh(1)) per step
    never = BatchedDream(mdnrnn, STARTS, tau=1.0, max_steps=25).rollout(params, [0, 1, 2])
    per_step = np.tanh(np.tanh(2 * (np.tanh(3.0) + 1) / 2 - 1))
    np.testing.assert_allclose(never, 25 * per_step, rtol=1e-4)
    with torch.no_grad():
        mdnrnn.done.bias.fill_(10.0)  # done at the first step: one step of reward
    env = DreamEnv(mdnrnn, STARTS, tau=1.0, max_steps=25)
    once = BatchedDream(mdnrnn, STARTS, tau=1.0, max_steps=25).rollout(params, [0, 1, 2])
    np.testing.assert_allclose(once, per_step, rtol=1e-4)
    assert _single_returns(env, params[0].astype(np.float32), 0)[1] == 1


def test_bad_tau_is_a_user_error():
    with pytest.raises(UserError, match="tau"):
        BatchedDream(make_mdnrnn(), STARTS, tau=0.0)


# ---------------------------------------------------------------- the fused step vs M itself
def _split_mask(mask: torch.Tensor | None):
    """The dream's [z, h, a] mask as MDNRNN's (input [z, a], hidden h) masks."""
    if mask is None:
        return None
    return torch.cat([mask[:, :Z], mask[:, Z + HIDDEN:]], 1), mask[:, Z:Z + HIDDEN]


@pytest.mark.parametrize("tau,dropout,done,mixture", [
    (0.1, 0.0, "threshold", "factorised"), (1.0, 0.0, "threshold", "factorised"),
    (1.5, 0.0, "threshold", "factorised"), (1.15, 0.2, "threshold", "factorised"),
    (1.15, 0.0, "sample", "factorised"), (1.15, 0.0, "likely", "factorised"),
    (0.1, 0.0, "threshold", "joint"), (1.15, 0.0, "sample", "joint")])
def test_fused_dream_step_matches_the_plain_modules(tau, dropout, done, mixture):
    mdnrnn = make_mdnrnn(seed=4, mixture=mixture)
    mdnrnn.config.dropout = dropout
    with torch.no_grad():  # shifted logits change no probability
        logits = slice(0, 3) if mixture == "joint" else slice(0, Z * 3)
        mdnrnn.mdn.linear.bias[logits].add_(40.0)
    weight = 3.0
    dream = BatchedDream(mdnrnn, STARTS, tau=tau, max_steps=100, done=done,
                         done_pos_weight=weight)
    rows = 6
    dream.reset(list(range(rows)))
    assert (dream.mask is None) == (dropout == 0)
    masks = _split_mask(dream.mask)
    actions = torch.rand(80, rows, 3, generator=torch.Generator().manual_seed(0))
    for t in range(80):
        z, h, c = dream.z.clone(), dream.h.clone(), dream.c.clone()
        reward, dream_done = dream.step(actions[t])
        with torch.no_grad():
            h_ref, c_ref = mdnrnn.step(z, actions[t], (h, c), masks)
            mixture, reward_ref, done_ref = mdnrnn.heads(h_ref)
            slot = t % 32
            z_ref = mixture.sample_with(dream.uniform[:, slot], dream.normal[:, slot], tau)
        torch.testing.assert_close(dream.h, h_ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(dream.c, c_ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(reward, reward_ref, rtol=1e-4, atol=1e-5)
        if done == "sample":  # the row's coin against the head's calibrated probability
            p_ref = torch.sigmoid(done_ref - np.log(weight))
            assert torch.equal(dream_done, dream.coins[:, slot] < p_ref)
        elif done == "likely":  # the calibrated probability against 1/2
            assert torch.equal(dream_done, torch.sigmoid(done_ref - np.log(weight)) > 0.5)
        else:
            assert torch.equal(dream_done, done_ref > 0)
        torch.testing.assert_close(dream.z, z_ref, rtol=1e-4, atol=1e-4)


def _fixed_mixture_dream(logits, mu, log_sigma, tau, rows=2000):
    """A dream whose mixture for z_{t+1} is the same every step (head weights zero)."""
    mdnrnn = make_mdnrnn(seed=5)
    k = mdnrnn.config.gaussians
    with torch.no_grad():
        mdnrnn.mdn.linear.weight.zero_()
        bias = torch.stack([torch.tensor(v, dtype=torch.float32).expand(Z, k)
                            for v in (logits, mu, log_sigma)])
        mdnrnn.mdn.linear.bias.copy_(bias.flatten())
        mdnrnn.done.bias.fill_(-10.0)
    dream = BatchedDream(mdnrnn, STARTS, tau=tau, max_steps=32)
    dream.reset(list(range(rows)))
    zs = []
    for _ in range(8):
        dream.step(torch.zeros(rows, 3))
        zs.append(dream.z.clone())
    return torch.stack(zs).flatten()


@pytest.mark.parametrize("tau", [0.1, 1.0, 1.5])
@pytest.mark.parametrize("shift", [0.0, 70.0, -70.0])
def test_dream_z_moments_match_the_mixture_at_any_temperature_and_logit_shift(tau, shift):
    logits = torch.tensor([-7.0, -15.0, -12.0]) + shift
    mu, log_sigma = torch.tensor([-3.0, 3.0, 1.0]), torch.tensor([-1.0, -0.5, 0.0])
    samples = _fixed_mixture_dream(logits.tolist(), mu.tolist(), log_sigma.tolist(), tau)
    pi = torch.softmax(logits / tau, -1)
    mean = (pi * mu).sum()
    var = (pi * ((2 * log_sigma).exp() * tau + mu**2)).sum() - mean**2
    # 8 steps x 2000 rows x 32 dims, nearly independent draws
    assert abs(samples.mean() - mean) < 5 * (var / samples.numel()).sqrt() + 1e-3
    torch.testing.assert_close(samples.var(), var, rtol=0.05, atol=1e-3)
    if tau == 0.1:  # (-7, -15) at tau 0.1: the first component only, z ~ -3
        assert abs(samples.mean() + 3.0) < 0.01


def test_dropout_dreams_rows_independent_of_batch_and_differ_from_no_dropout():
    mdnrnn = make_mdnrnn(seed=2)
    params = np.random.default_rng(0).normal(0, 0.5, (4, param_count(Z, HIDDEN)))
    seeds = [3, 4, 5, 6]
    plain = BatchedDream(mdnrnn, STARTS, tau=1.0, max_steps=50).rollout(params, seeds)
    mdnrnn.config.dropout = 0.3
    dropped = BatchedDream(mdnrnn, STARTS, tau=1.0, max_steps=50).rollout(params, seeds)
    alone = BatchedDream(mdnrnn, STARTS, tau=1.0, max_steps=50).rollout(params[2:3], seeds[2:3])
    np.testing.assert_allclose(alone, dropped[2:3], rtol=1e-5, atol=1e-6)
    assert not np.allclose(plain, dropped)
    again = BatchedDream(mdnrnn, STARTS, tau=1.0, max_steps=50).rollout(params, seeds)
    np.testing.assert_array_equal(again, dropped)  # same seed, same mask, same dream


@pytest.mark.parametrize("tau", [float("inf"), float("nan"), -1.0])
def test_non_finite_tau_is_a_user_error(tau):
    with pytest.raises(UserError, match="tau"):
        BatchedDream(make_mdnrnn(), STARTS, tau=tau)


def _cell_params(n: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.5, (n, param_count(Z, HIDDEN, sees_cell=True)))


def test_a_controller_that_sees_the_cell_state_acts_on_z_h_and_c():
    # The reference: C's whole matrix times [z, h, c] (c from the dream's state), one dream
    # at a time, against the split weights of the batched rollout.
    mdnrnn = make_mdnrnn(seed=2)
    with torch.no_grad():
        mdnrnn.done.bias.fill_(-2.0)
    rules = {"tau": 1.15, "max_steps": 60, "done": "sample", "done_pos_weight": 0.2}
    params, seeds = _cell_params(4), [7, 8, 9, 10]
    batched, steps = BatchedDream(mdnrnn, STARTS, **rules).rollout(params, seeds, with_steps=True,
                                                                   sees_cell=True)
    env, n_in = DreamEnv(mdnrnn, STARTS, **rules), Z + 2 * HIDDEN
    for i, seed in enumerate(seeds):
        matrix = torch.from_numpy(params[i, : 3 * n_in].reshape(3, n_in)).float()
        bias = torch.from_numpy(params[i, 3 * n_in :]).float()
        obs, _ = env.reset(seed=seed)
        total, n, ended = 0.0, 0, False
        while not ended:
            x = torch.cat([torch.from_numpy(obs), env.dream.c[0]])
            action = CARRACING.actions.squash(matrix @ x + bias)
            obs, reward, terminated, truncated, _ = env.step(action.numpy())
            total, n, ended = total + reward, n + 1, terminated or truncated
        assert n == steps[i] and total == pytest.approx(batched[i], rel=1e-4, abs=1e-5)


def test_a_cell_controller_with_zero_cell_weights_is_the_plain_controller():
    params = _cell_params(3)
    n_in, plain_in = Z + 2 * HIDDEN, Z + HIDDEN
    matrix = params[:, : 3 * n_in].reshape(3, 3, n_in)
    matrix[:, :, plain_in:] = 0.0
    plain = np.concatenate([matrix[:, :, :plain_in].reshape(3, -1), params[:, 3 * n_in :]], 1)
    cell = np.concatenate([matrix.reshape(3, -1), params[:, 3 * n_in :]], 1)
    rules = {"tau": 1.0, "max_steps": 30}
    seeds = [1, 2, 3]
    with_cell = BatchedDream(make_mdnrnn(seed=5), STARTS, **rules).rollout(cell, seeds,
                                                                          sees_cell=True)
    without = BatchedDream(make_mdnrnn(seed=5), STARTS, **rules).rollout(plain, seeds)
    np.testing.assert_allclose(with_cell, without, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="parameters for z .* \\+ c"):
        Controllers(plain, Z, HIDDEN, sees_cell=True)
    with pytest.raises(ValueError, match="cell state"):
        Controllers(cell, Z, HIDDEN, sees_cell=True).act(torch.zeros(3, Z + HIDDEN))


@pytest.mark.parametrize("sees_cell", [False, True])
def test_controllers_act_as_their_whole_matrix_times_the_input(sees_cell):
    # The row-wise dot products of `Controllers.act` against the plain reference, C's matrix
    # times [z, h] (and c) plus its bias, per row: for B controllers, for one controller that
    # serves every row, and with `rows` choosing each row's controller.
    n_in = Z + HIDDEN + (HIDDEN if sees_cell else 0)
    rng = np.random.default_rng(4)
    params = rng.normal(0, 0.5, (3, param_count(Z, HIDDEN, sees_cell=sees_cell)))
    obs, cell = torch.randn(3, Z + HIDDEN), torch.randn(3, HIDDEN)
    x = torch.cat([obs, cell], 1) if sees_cell else obs
    matrix = torch.from_numpy(params[:, : 3 * n_in].reshape(3, 3, n_in)).float()
    bias = torch.from_numpy(params[:, 3 * n_in :]).float()

    def reference(c: int, row: int) -> torch.Tensor:
        return CARRACING.actions.squash(matrix[c] @ x[row] + bias[c])

    many = Controllers(params, Z, HIDDEN, sees_cell=sees_cell).act(obs, cell=cell)
    one = Controllers(params[1:2], Z, HIDDEN, sees_cell=sees_cell).act(obs, cell=cell)
    chosen = Controllers(params, Z, HIDDEN, sees_cell=sees_cell).act(
        obs, rows=torch.tensor([2, 0, 2]), cell=cell)
    for row in range(3):
        torch.testing.assert_close(many[row], reference(row, row))
        torch.testing.assert_close(one[row], reference(1, row))
        torch.testing.assert_close(chosen[row], reference([2, 0, 2][row], row))
