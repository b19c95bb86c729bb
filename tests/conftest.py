"""Shared fixtures: one Ray session for the whole suite, a fake CarRacing-shaped env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Tiny models run far faster on one thread than on two contended ones (shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that needs it (ray.init costs seconds and ~700 MB)."""
    import ray

    from worldmodels.ray_session import ensure_ray

    ensure_ray(workers=2)
    yield ray
    ray.shutdown()


class FakeCarRacing(gym.Env):
    """CarRacing's spaces with no simulator: 96x96x3 frames that depend on the seed and the
    actions, for fast unit tests of code that only needs the interface."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, episode_steps: int = 50):
        self.observation_space = gym.spaces.Box(0, 255, (96, 96, 3), np.uint8)
        self.action_space = gym.spaces.Box(
            np.array([-1, 0, 0], np.float32), np.array([1, 1, 1], np.float32)
        )
        self.episode_steps = episode_steps

    def _frame(self) -> np.ndarray:
        frame = np.full((96, 96, 3), self._level, np.uint8)
        frame[84:] = 0  # a dark dashboard, as in CarRacing
        return frame

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        self._level = int(self.np_random.integers(0, 200))
        return self._frame(), {}

    def step(self, action):
        self._t += 1
        self._level = (self._level + int(10 * float(action[1])) + 1) % 250
        reward = float(action[1]) - 0.1
        return self._frame(), reward, False, self._t >= self.episode_steps, {}

    def render(self):
        return self._frame()


@pytest.fixture
def fake_env() -> FakeCarRacing:
    return FakeCarRacing()


@pytest.fixture(scope="session")
def real_rollouts(tmp_path_factory):
    """A directory with 3 tiny REAL CarRacing episodes (seeds 0, 1, 2; 60 steps; brownian),
    collected in-process. Shared by every test that needs real data; do not modify it."""
    from worldmodels.config import CollectConfig
    from worldmodels.data.collect import collect

    out = tmp_path_factory.mktemp("real_rollouts")
    config = CollectConfig(episodes=3, max_steps=60, policy="brownian", seed=0, workers=0)
    collect(out, config, progress=False)
    return out
