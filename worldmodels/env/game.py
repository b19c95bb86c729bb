"""What a game (a world the agent learns) must say about itself, as one small dataclass.

Each game is one module (`carracing.py`, `doom.py`) that owns what differs between games:
making the env with 64x64x3 uint8 frames, the actions C drives and how C's raw outputs map
onto them, the data policies of the first rollouts, the game's own episode length and what
"done" means. V, M, the dream, evolution, evaluation, videos and iterate only read this.

Done, in every game: a terminal step of the game (CarRacing: off the playfield or lap
finished; Take Cover: the player died). A time limit is a truncation, never a done: nothing
in the frames announces it, and M's done head, trained on it, would end dreams at random.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from torch import Tensor


@dataclass(frozen=True)
class ActionSpace:
    """The actions C drives: their bounds and how C's raw outputs (B, size) become them."""

    low: np.ndarray  # (size,) float32
    high: np.ndarray
    squash: Callable[[Tensor], Tensor]  # raw (..., size) -> actions within [low, high]

    @property
    def size(self) -> int:
        return len(self.low)

    def box(self) -> gym.spaces.Box:
        return gym.spaces.Box(self.low, self.high, dtype=np.float32)


@dataclass(frozen=True)
class Game:
    name: str  # the `--env` value
    title: str  # the game, for people
    actions: ActionSpace
    make_env: Callable[..., gym.Env]  # (max_steps=None, render_mode=None) -> 64x64x3 frames
    policies: tuple[str, ...]  # its data policies (in data/policies.py); the first: default
    max_steps: int  # the game's own episode length
    fps: int  # frames per second of its videos
    require: Callable[[], None] = lambda: None  # one line if an optional package is missing
