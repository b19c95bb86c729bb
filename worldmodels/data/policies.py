"""Data policies that play a world while its first episodes are collected; seeded, so the
same seed gives the same actions (and, with the same env seed, the same episode). Which
policies a game supports is the game's to say (`Game.policies`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from worldmodels.env.carracing import CARRACING
from worldmodels.env.game import ActionSpace, Game

BROWNIAN_STEP = float(np.sqrt(1.0 / 50))  # std of one step: a Wiener process at CarRacing's 50 fps
ACTION_LOW, ACTION_HIGH = CARRACING.actions.low, CARRACING.actions.high  # the default game's

Policy = Callable[[np.ndarray], np.ndarray]


class RandomPolicy:
    """Each action drawn uniformly from the action space, independently of the last."""

    def __init__(self, seed: int, actions: ActionSpace = CARRACING.actions):
        self.rng = np.random.default_rng(seed)
        self.low, self.high = actions.low, actions.high

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(self.low, self.high).astype(np.float32)


class BrownianPolicy:
    """CarRacing's smoothly varying actions: a random walk from a uniform start, clipped to
    the bounds.

    Uniform random actions make the car jitter in place; a walk holds a steer and a
    throttle long enough to drive somewhere, so the data shows turns, speed and grass.
    The brake walks in [-1, 1] and is applied as max(brake, 0): off about half the time,
    so the car moves (about twice the mean speed of a brake walking in [0, 1]).
    """

    WALK_LOW = np.array([-1.0, 0.0, -1.0])
    WALK_HIGH = np.array([1.0, 1.0, 1.0])

    def __init__(self, seed: int, actions: ActionSpace = CARRACING.actions,
                 step: float = BROWNIAN_STEP):
        self.rng = np.random.default_rng(seed)
        self.step = step
        self.low, self.high = actions.low, actions.high
        self.walk = self.rng.uniform(self.WALK_LOW, self.WALK_HIGH)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        action = np.clip(self.walk, self.low, self.high).astype(np.float32)
        step = self.rng.normal(0.0, self.step, size=3)
        self.walk = np.clip(self.walk + step, self.WALK_LOW, self.WALK_HIGH)
        return action


class RepeatPolicy:
    """Uniform random actions, each held for a random 1 to `MAX_HOLD` steps.

    Take Cover's uniform random player redraws its button every tic, so it jitters in
    place and M rarely sees the player cross the room; holding each action moves it (the
    World Models paper's Doom data did the same).
    """

    MAX_HOLD = 10

    def __init__(self, seed: int, actions: ActionSpace = CARRACING.actions):
        self.random = RandomPolicy(seed, actions)  # draws the actions and the holds
        self.action = np.zeros(actions.size, np.float32)
        self.left = 0  # steps the current action is still held

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self.left == 0:
            self.action = self.random(obs)
            self.left = int(self.random.rng.integers(1, self.MAX_HOLD + 1))
        self.left -= 1
        return self.action.copy()


POLICIES: dict[str, type] = {"random": RandomPolicy, "brownian": BrownianPolicy,
                             "repeat": RepeatPolicy}


def check_policy(name: str, game: Game = CARRACING) -> None:
    if name not in game.policies:
        raise ValueError(f"unknown policy {name!r} for --env {game.name}; choose one of "
                         f"{', '.join(game.policies)}")


def make_policy(name: str, seed: int, game: Game = CARRACING) -> Policy:
    """A policy of `game` by name -> callable(obs) -> float32 action."""
    check_policy(name, game)
    return POLICIES[name](seed, game.actions)
