"""The agent module: a run's world model, and real episodes stepped in batches."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import FakeCarRacing
from fake_run import HIDDEN, Z, make_run

from worldmodels.agent import Agent, WorldModel, run_episodes, starts_from_latents
from worldmodels.config import REAL_Z, preset, save_json
from worldmodels.env.carracing import CARRACING, PreprocessFrame
from worldmodels.evolve.workers import RolloutWorker
from worldmodels.models.controller import ACTION_HIGH, ACTION_LOW, param_count
from worldmodels.run import RunPaths


class EndsBySeed(FakeCarRacing):
    """A fake CarRacing whose episodes end (terminate) after 5 + seed % 9 steps."""

    def reset(self, *, seed=None, options=None):
        self.length = 5 + (seed or 0) % 9
        return super().reset(seed=seed, options=options)

    def step(self, action):
        frame, reward, _, truncated, info = super().step(action)
        return frame, reward, self._t >= self.length, truncated, info


def _envs(n: int) -> list[gym.Env]:
    return [PreprocessFrame(EndsBySeed(episode_steps=30)) for _ in range(n)]


@pytest.fixture
def world(tmp_path) -> WorldModel:
    return WorldModel.from_run(make_run(tmp_path))


def _params(n: int) -> np.ndarray:
    params = np.random.default_rng(0).normal(0, 0.5, (n, param_count(Z, HIDDEN)))
    params[:, -2] = 1.0  # some gas: the fake env's frames (and rewards) follow the actions
    return params.astype(np.float32)


def test_an_episode_does_not_depend_on_its_batch_mates(world, one_torch_thread):
    agent = Agent.from_world(world)
    seeds = [3, 11, 4, 20, 7]
    controllers = world.controllers(_params(5))
    batched = run_episodes(_envs(3), seeds, 25, agent, controllers)
    assert [r.seed for r in batched] == seeds
    assert len({r.steps for r in batched}) > 1  # episodes left the batch at different steps
    for i, seed in enumerate(seeds):
        [alone] = run_episodes(_envs(1), [seed], 25, agent, world.controllers(_params(5)[i]))
        assert alone.steps == batched[i].steps
        assert alone.total_reward == pytest.approx(batched[i].total_reward, abs=1e-5)
    # Reordered, and with the episodes' own controllers picked by row: the same results.
    order = [4, 2, 0, 3, 1]
    again = run_episodes(_envs(2), [seeds[i] for i in order], 25, agent, controllers, rows=order)
    for k, i in enumerate(order):
        assert again[k].total_reward == pytest.approx(batched[i].total_reward, abs=1e-5)


def test_recorded_episodes_are_collection_shaped(world):
    agent = Agent.from_world(world)
    results = run_episodes(_envs(2), [1, 2, 30], 40, agent, world.controllers(_params(1)[0]),
                           action_noise=0.3, record=True)
    for r in results:
        e = r.episode
        assert len(e) == r.steps == 5 + r.seed % 9 and e.seed == r.seed
        assert e.obs.shape == (r.steps, 64, 64, 3) and e.obs.dtype == np.uint8
        assert e.action.dtype == np.float32 and e.reward.shape == e.done.shape == (r.steps,)
        assert np.all(e.action >= ACTION_LOW) and np.all(e.action <= ACTION_HIGH)
        assert e.done[-1] and not e.done[:-1].any()  # termination only
        assert r.total_reward == pytest.approx(float(e.reward.sum()), abs=1e-4)
    # Exploration noise is seeded per episode too.
    same = run_episodes(_envs(1), [2], 40, agent, world.controllers(_params(1)[0]),
                        action_noise=0.3, record=True)[0].episode
    np.testing.assert_allclose(same.action, results[1].episode.action, atol=1e-6)
    clean = run_episodes(_envs(1), [2], 40, agent, world.controllers(_params(1)[0]),
                         record=True)[0].episode
    assert not np.allclose(clean.action, same.action)


def test_random_baseline_runs_no_network(world, monkeypatch):
    def no_networks(*args, **kwargs):
        raise AssertionError("the random baseline ran V and M")

    monkeypatch.setattr(Agent, "step", no_networks)
    results = run_episodes(_envs(2), [0, 1, 2], 40)
    assert [r.steps for r in results] == [5, 6, 7]
    again = run_episodes(_envs(3), [2], 40)  # seeded actions: the same episode
    assert again[0].total_reward == results[2].total_reward
    worker = RolloutWorker(world, envs=2)
    worker._env_batch = lambda max_steps, n: _envs(n)  # no simulator here
    out = worker.run("real", None, np.zeros(3, int), np.array([0, 1, 2]), 1.0, 40)
    np.testing.assert_array_equal(out[:, 1], [5, 6, 7])
    assert worker._agent is None


def test_dream_starts_of_an_older_run_are_built_once(tmp_path):
    run = make_run(tmp_path)  # latents, no dream_starts.npz (as before encode wrote it)
    paths = RunPaths(run)
    assert not paths.dream_starts.exists()
    world = WorldModel.from_run(run, with_vae=False)
    assert paths.dream_starts.exists()
    for got, want in zip(world.starts(), starts_from_latents(paths.latents), strict=True):
        assert torch.equal(got, want) and got.shape == (3, Z)
    for f in paths.latents.iterdir():  # from now on the latents are not read
        f.unlink()
    assert torch.equal(WorldModel.from_run(run).start_mu, world.start_mu)
    paths.dream_starts.write_bytes(b"junk")
    with pytest.raises(Exception, match="re-run `worldmodels encode`"):
        WorldModel.from_run(run)


@pytest.mark.parametrize("real_z", REAL_Z)
def test_a_cell_controller_acts_on_z_h_and_c_in_real_episodes(tmp_path, real_z):
    # The reference: V, M and C's whole matrix stepped by hand over the recorded frames,
    # with z sampled with the episode's own noise (a generator seeded with its seed), or V's
    # mean; evolve's workers (its real checks) play the same episode.
    run = make_run(tmp_path)
    config = preset("tiny")
    config.evolve.sees_cell, config.evolve.real_z = True, real_z
    save_json(config, RunPaths(run).config)
    world = WorldModel.from_run(run)
    n_in = Z + 2 * HIDDEN
    assert world.sees_cell and world.param_count == n_in * 3 + 3
    params = np.random.default_rng(2).normal(0, 0.5, world.param_count).astype(np.float32)
    agent = Agent.from_world(world)
    [result] = run_episodes(_envs(1), [4], 40, agent, world.controllers(params), record=True)
    vae, mdnrnn = world.vae(), world.mdnrnn()
    matrix, bias = torch.from_numpy(params[: 3 * n_in].reshape(3, n_in)), torch.from_numpy(
        params[3 * n_in :])
    noise, state = torch.Generator().manual_seed(4), mdnrnn.initial_state(1)
    with torch.inference_mode():
        for frame, recorded in zip(result.episode.obs, result.episode.action, strict=True):
            mu, logvar = vae.encode(torch.from_numpy(frame[None]))
            z = mu + torch.exp(0.5 * logvar) * torch.randn(Z, generator=noise)
            if real_z == "mean":
                z = mu
            x = torch.cat([z[0], state[0][0], state[1][0]])
            action = CARRACING.actions.squash(matrix @ x + bias)
            np.testing.assert_allclose(recorded, action.numpy(), atol=1e-5)
            state = mdnrnn.step(z, action[None], state)
    worker = RolloutWorker(world, envs=1)
    worker._env_batch = lambda max_steps, n: _envs(n)  # no simulator here
    [[total, steps]] = worker.run("real", params[None], np.zeros(1, int), np.array([4]), 1.0, 40)
    assert total == pytest.approx(result.total_reward, abs=1e-5) and steps == result.steps
