"""The CarRacing wrappers: preprocessing (crop, resize, dtype) and skipping the zoom-in."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from worldmodels.env.carracing import CROP_ROWS, SkipZoom, make_env, preprocess


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_preprocess_crops_dashboard_and_resizes():
    frame = np.zeros((96, 96, 3), np.uint8)
    frame[CROP_ROWS:] = 255  # the dashboard: must not leak into the output at all
    frame[:CROP_ROWS, :, 1] = np.arange(CROP_ROWS, dtype=np.uint8)[:, None] * 3  # row ramp
    out = preprocess(frame)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out[..., 0].max() == 0 and out[..., 2].max() == 0
    # The kept rows 0..83 are stretched over all 64 output rows, top to bottom.
    expected = np.asarray(Image.fromarray(frame[:84]).resize((64, 64), Image.BILINEAR))
    np.testing.assert_array_equal(out, expected)
    assert out[0, :, 1].mean() < 5 and out[-1, :, 1].mean() > 240


def test_preprocess_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"\(96, 96, 3\)"):
        preprocess(np.zeros((64, 64, 3), np.uint8))


def test_make_env_gives_64x64_uint8_frames_of_the_real_game():
    env = make_env(max_steps=5)
    assert env.observation_space.shape == (64, 64, 3)
    assert env.observation_space.dtype == np.uint8
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    # The observation is exactly the preprocessed 96x96 frame of the simulator.
    np.testing.assert_array_equal(obs, preprocess(env.unwrapped.state))
    obs, reward, terminated, truncated, _ = env.step(np.array([0.0, 0.5, 0.0], np.float32))
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert isinstance(reward, float) and not terminated and not truncated
    assert obs.std() > 5  # a real road-and-grass picture, not a blank frame
    env.close()


def test_skip_zoom_starts_at_driving_zoom_without_spending_steps():
    skipped = make_env(max_steps=4)
    plain = make_env(skip_zoom=False)
    assert isinstance(skipped.env, SkipZoom)
    first, _ = skipped.reset(seed=3)
    plain_first, _ = plain.reset(seed=3)
    noop = np.zeros(3, np.float32)
    for _ in range(50):
        plain_late, *_ = plain.step(noop)
    # Close to the plain env's frame after its one-second zoom, far from its zoomed-out start.
    assert _mean_abs_diff(first, plain_late) < 2.0
    assert _mean_abs_diff(first, plain_first) > 30.0
    # The time limit is not charged for the skip: all 4 control steps are still there.
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, _ = skipped.step(noop)
        steps += 1
        done = terminated or truncated
    assert steps == 4 and truncated
    skipped.close()
    plain.close()
