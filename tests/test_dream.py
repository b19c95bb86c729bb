"""The dream: a valid gymnasium env; batched and single dreams agree for the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fake_run import HIDDEN, Z, make_mdnrnn, make_run
from gymnasium.utils.env_checker import check_env

from worldmodels.env.dream import BatchedDream, DreamEnv
from worldmodels.errors import UserError
from worldmodels.models.controller import Controller, param_count

STARTS = (torch.randn(4, Z, generator=torch.Generator().manual_seed(0)),
          torch.full((4, Z), -2.0))


def _single_returns(env: DreamEnv, params: np.ndarray, seed: int) -> tuple[float, int]:
    controller = Controller(params, Z, HIDDEN)
    obs, _ = env.reset(seed=seed)
    total, steps = 0.0, 0
    while True:
        x = torch.from_numpy(obs)[None]
        action = controller.act(x[:, :Z], x[:, Z:])[0].numpy()
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


def test_reset_starts_from_real_episode_starts():
    # With a tiny std, every start z is (close to) one of the given start means.
    starts = (STARTS[0], torch.full((4, Z), -30.0))
    env = DreamEnv(make_mdnrnn(seed=1), starts, tau=1.0, max_steps=5)
    for seed in range(6):
        z = torch.from_numpy(env.reset(seed=seed)[0][:Z])
        assert torch.cdist(z[None], starts[0]).min() < 1e-3


@pytest.mark.parametrize("tau", [0.5, 1.15])
def test_batched_and_single_dreams_agree(tau):
    mdnrnn = make_mdnrnn(seed=2)
    with torch.no_grad():
        mdnrnn.done.bias.fill_(-2.0)  # some dreams end early, some run to max_steps
    params = np.random.default_rng(0).normal(0, 0.5, (5, param_count(Z, HIDDEN)))
    seeds = [7, 8, 9, 10, 11]
    batched = BatchedDream(mdnrnn, STARTS, tau=tau, max_steps=70).rollout(params, seeds)
    env = DreamEnv(mdnrnn, STARTS, tau=tau, max_steps=70)
    single = [_single_returns(env, params[i].astype(np.float32), s)[0]
              for i, s in enumerate(seeds)]
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)
    # A row's dream does not depend on which rows share its batch.
    alone = BatchedDream(mdnrnn, STARTS, tau=tau, max_steps=70).rollout(params[3:4], seeds[3:4])
    np.testing.assert_allclose(alone, batched[3:4], rtol=1e-4, atol=1e-5)
    assert len(set(np.round(batched, 4))) == 5  # different seeds, different dreams


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
