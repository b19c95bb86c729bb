"""VizDoom's Take Cover (the World Models paper's second game) as the agent sees it.

The player stands at the far wall of a room and can only move left or right; monsters on
the other side throw fireballs. Every tic survived earns +1 (`living_reward`), so a return
is the number of steps survived. Done is death. The paper caps an episode at 2100 steps
(60 s at 35 tics/s); here that is the time limit, a truncation.

C drives one continuous output in [-1, 1] (tanh), thresholded as in the paper: below -1/3
moves left, above 1/3 moves right, otherwise the player stays. The dream and M see the
continuous value; only the real game sees the three buttons. Frames: the 320x240 screen
(no HUD) resized to 64x64, with the red flash of a hit, which vizdoom's own take_cover.cfg
turns off. `doom-takecover-skip4` is the same game with each of C's actions held for 4 tics
(vizdoom's frame skip; the step's reward is the tics survived, so a return still counts tics,
at most 2100): a quarter of the steps for V, M, the dream and C per second of play;
`doom-takecover-skip8` holds each for 8 tics.
A hit takes 21 to 63 of the player's 100 health, so one to three hits kill:
without the flash a hit that does not kill leaves no trace on screen, and neither V nor M can
tell a player who may die at the next hit from one who has not been hit. `vizdoom` is an
optional extra: `pip install 'worldmodels[doom]'`.
"""

from __future__ import annotations

import dataclasses
import functools

import gymnasium as gym
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from worldmodels.env.game import ActionSpace, Game
from worldmodels.errors import UserError

FRAME_SIZE = 64
MAX_STEPS = 2100  # tics: the paper's 60 s at 35 tics/s
THRESHOLD = 1 / 3
STAY, RIGHT, LEFT = 0, 1, 2  # the gymnasium wrapper's Discrete(3): no button, then one each
INSTALL = "pip install 'worldmodels[doom]'"


def preprocess(screen: np.ndarray) -> np.ndarray:
    """Take Cover's screen (240, 320, 3) uint8 -> (64, 64, 3) uint8."""
    if screen.ndim != 3 or screen.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) screen, got {screen.shape}")
    image = Image.fromarray(np.ascontiguousarray(screen))
    return np.asarray(image.resize((FRAME_SIZE, FRAME_SIZE), Image.BILINEAR), dtype=np.uint8)


def button(action: np.ndarray) -> int:
    """C's continuous action (1,) -> the game's button: left, stay or right."""
    value = float(np.asarray(action).reshape(-1)[0])
    return LEFT if value < -THRESHOLD else RIGHT if value > THRESHOLD else STAY


class TakeCover(gym.Wrapper):
    """64x64 frames in, one continuous action out; the health variable is dropped."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = gym.spaces.Box(0, 255, (FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
        self.action_space = ACTIONS.box()

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        return preprocess(observation["screen"]), info

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(button(action))
        # The last frame after death is blank in VizDoom (no state): repeat a black frame.
        screen = observation.get("screen") if observation else None
        frame = preprocess(screen) if screen is not None else np.zeros(
            self.observation_space.shape, np.uint8)
        return frame, float(reward), terminated, truncated, info


def require_vizdoom() -> None:
    """Import vizdoom (an optional extra), which registers its gymnasium envs."""
    try:
        from vizdoom import gymnasium_wrapper  # noqa: F401
    except ImportError:
        raise UserError(f"--env doom-takecover and doom-takecover-skip4 need vizdoom: {INSTALL}"
                        ) from None


def make_env(max_steps: int | None = None, render_mode: str | None = None,
             frame_skip: int = 1) -> gym.Env:
    """VizdoomTakeCover-v1 with 64x64 frames, one continuous action held for `frame_skip`
    tics, at most `max_steps` steps (default the paper's 2100 tics)."""
    require_vizdoom()
    env = gym.make("VizdoomTakeCover-v1", render_mode=render_mode, frame_skip=frame_skip,
                   max_episode_steps=max_steps or MAX_STEPS // frame_skip,
                   render_screen_flashes=True)
    return TakeCover(env)


def squash(raw: Tensor) -> Tensor:
    """C's raw output (..., 1) -> tanh, in [-1, 1]; the game thresholds it."""
    return torch.tanh(raw)


ACTIONS = ActionSpace(low=np.array([-1.0], np.float32), high=np.array([1.0], np.float32),
                      squash=squash)

DOOM_TAKECOVER = Game(name="doom-takecover", title="VizDoom Take Cover", actions=ACTIONS,
                       make_env=make_env, policies=("random", "repeat"), max_steps=MAX_STEPS,
                       fps=35, require=require_vizdoom)

def skipping(skip: int) -> Game:
    """The same game with each of C's actions held for `skip` tics: everything but the env,
    its step limit (2100 // skip steps: 2,096 tics at 8) and fps."""
    return dataclasses.replace(
        DOOM_TAKECOVER, name=f"doom-takecover-skip{skip}",
        title=f"VizDoom Take Cover, {skip} tics a step",
        make_env=functools.partial(make_env, frame_skip=skip), max_steps=MAX_STEPS // skip,
        fps=DOOM_TAKECOVER.fps // skip)

