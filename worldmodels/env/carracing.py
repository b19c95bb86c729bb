"""CarRacing-v3 as the agent and the data see it: 64x64x3 uint8 frames at driving zoom.

CarRacing animates its camera zoom during the first second of an episode (its `t`
attribute, which drives nothing but the zoom). `SkipZoom` jumps past it at reset without
spending control steps, so every frame is at driving zoom and no reward is lost.

C drives (steer, gas, brake): steer = tanh, gas = (tanh + 1) / 2, brake = clip(tanh, 0, 1).
Done is CarRacing's termination (the car left the playfield, or the lap is finished).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from worldmodels.env.game import ActionSpace, Game

FRAME_SIZE = 64
DASHBOARD_ROWS = 12  # the bottom 12 of CarRacing's 96 rows: speed, ABS and steering bars
CROP_ROWS = 96 - DASHBOARD_ROWS  # rows 0..83 are kept


def preprocess(frame96: np.ndarray) -> np.ndarray:
    """CarRacing frame (96, 96, 3) uint8 -> (64, 64, 3) uint8: dashboard cropped, resized."""
    if frame96.shape != (96, 96, 3):
        raise ValueError(f"expected a (96, 96, 3) frame, got {frame96.shape}")
    image = Image.fromarray(np.ascontiguousarray(frame96[:CROP_ROWS]))
    return np.asarray(image.resize((FRAME_SIZE, FRAME_SIZE), Image.BILINEAR), dtype=np.uint8)


class PreprocessFrame(gym.ObservationWrapper):
    """Observations become `preprocess(frame)`: (64, 64, 3) uint8."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = gym.spaces.Box(
            0, 255, (FRAME_SIZE, FRAME_SIZE, 3), np.uint8
        )

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return preprocess(observation)


class SkipZoom(gym.Wrapper):
    """Start every episode at driving zoom instead of zoomed out.

    After the inner reset, CarRacing's clock `t` is set to 1 s (the end of the zoom
    animation) and the unwrapped env is stepped once with `None`, exactly as its own
    reset does: physics advance one frame, the frame is rendered at full zoom, no reward
    is booked and the time limit is not charged.
    """

    def reset(self, **kwargs):
        _, info = self.env.reset(**kwargs)
        car_racing = self.env.unwrapped
        car_racing.t = 1.0
        observation = car_racing.step(None)[0]
        return observation, info


def make_env(
    max_steps: int | None = None, render_mode: str | None = None, skip_zoom: bool = True
) -> gym.Env:
    """CarRacing-v3 with 64x64 frames; `max_steps` overrides its 1000-step time limit."""
    kwargs = {} if max_steps is None else {"max_episode_steps": max_steps}
    env = gym.make("CarRacing-v3", render_mode=render_mode, **kwargs)
    if skip_zoom:
        env = SkipZoom(env)
    return PreprocessFrame(env)


def squash(raw: Tensor) -> Tensor:
    """C's raw outputs (..., 3) -> CarRacing actions (..., 3)."""
    t = torch.tanh(raw)
    return torch.stack([t[..., 0], (t[..., 1] + 1) / 2, t[..., 2].clamp(0, 1)], -1)


ACTIONS = ActionSpace(low=np.array([-1.0, 0.0, 0.0], np.float32),  # steer, gas, brake
                      high=np.array([1.0, 1.0, 1.0], np.float32), squash=squash)

CARRACING = Game(name="carracing", title="CarRacing-v3", actions=ACTIONS, make_env=make_env,
                  policies=("brownian", "random"), max_steps=1000, fps=50)
