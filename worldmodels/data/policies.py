"""Data policies that drive CarRacing while episodes are collected; seeded, so the same
seed gives the same actions (and, with the same env seed, the same episode)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from worldmodels.models.controller import ACTION_HIGH, ACTION_LOW

BROWNIAN_STEP = float(np.sqrt(1.0 / 50))  # std of one step: a Wiener process at CarRacing's 50 fps

Policy = Callable[[np.ndarray], np.ndarray]


class RandomPolicy:
    """Each action drawn uniformly from the action space, independently of the last."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(ACTION_LOW, ACTION_HIGH).astype(np.float32)


class BrownianPolicy:
    """Smoothly varying actions: a random walk from a uniform start, clipped to the bounds.

    Uniform random actions make the car jitter in place; a walk holds a steer and a
    throttle long enough to drive somewhere, so the data shows turns, speed and grass.
    The brake walks in [-1, 1] and is applied as max(brake, 0): off about half the time,
    so the car moves (about twice the mean speed of a brake walking in [0, 1]).
    """

    WALK_LOW = np.array([-1.0, 0.0, -1.0])
    WALK_HIGH = np.array([1.0, 1.0, 1.0])

    def __init__(self, seed: int, step: float = BROWNIAN_STEP):
        self.rng = np.random.default_rng(seed)
        self.step = step
        self.walk = self.rng.uniform(self.WALK_LOW, self.WALK_HIGH)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        action = np.clip(self.walk, ACTION_LOW, ACTION_HIGH).astype(np.float32)
        step = self.rng.normal(0.0, self.step, size=3)
        self.walk = np.clip(self.walk + step, self.WALK_LOW, self.WALK_HIGH)
        return action


POLICIES: dict[str, type] = {"random": RandomPolicy, "brownian": BrownianPolicy}


def make_policy(name: str, seed: int) -> Policy:
    """`name` in POLICIES -> callable(obs) -> float32 action (steer, gas, brake)."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    return POLICIES[name](seed)
