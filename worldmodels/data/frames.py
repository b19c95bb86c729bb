"""Stream shuffled frame batches from episode files with a fixed-size shuffle buffer.

Episodes are read one at a time (in an order shuffled per epoch) into a buffer of at most
`buffer_size` frames; each new frame replaces a random one, which is handed out. Memory is
the buffer plus one episode, whatever the number of episodes. Corrupt files are skipped with
a warning that names them (rollouts.iter_episodes).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from worldmodels.data.rollouts import FRAME_SHAPE, iter_episodes


def upscale(images: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour: each pixel of (..., H, W, C) images repeated scale x scale times,
    so 64x64 frames stay crisp on a screen."""
    return images.repeat(scale, axis=-3).repeat(scale, axis=-2)


class ShuffleBuffer:
    """Fixed-capacity frame buffer: `push` returns the frames it evicts, in random order."""

    def __init__(self, capacity: int, rng: np.random.Generator):
        if capacity < 1:
            raise ValueError(f"shuffle buffer needs capacity >= 1, got {capacity}")
        # np.empty: untouched pages cost no memory, so a small data set keeps a small RSS.
        self.frames = np.empty((capacity, *FRAME_SHAPE), np.uint8)
        self.size = 0
        self.rng = rng

    def push(self, frames: np.ndarray) -> np.ndarray:
        out = []
        start = 0
        capacity = len(self.frames)
        while start < len(frames):
            if self.size < capacity:  # still filling: nothing leaves
                n = min(capacity - self.size, len(frames) - start)
                self.frames[self.size:self.size + n] = frames[start:start + n]
                self.size += n
            else:  # full: n random slots leave and the new frames take their place
                n = min(capacity, len(frames) - start)
                slots = self.rng.choice(capacity, n, replace=False)
                out.append(self.frames[slots])  # fancy indexing copies
                self.frames[slots] = frames[start:start + n]
            start += n
        return np.concatenate(out) if out else np.empty((0, *FRAME_SHAPE), np.uint8)

    def drain(self) -> np.ndarray:
        """Everything left, shuffled; the buffer is empty afterwards."""
        rest = self.frames[self.rng.permutation(self.size)]
        self.size = 0
        return rest


def stream_frames(paths: list[Path], batch_size: int, buffer_size: int, seed: int,
                  max_frames: int = 0) -> Iterator[np.ndarray]:
    """Batches of uint8 frames (B, 64, 64, 3), B = batch_size except maybe the last.

    The episode order and the buffer draws come from `seed`, so an epoch is reproducible.
    `max_frames` > 0 stops after that many frames."""
    rng = np.random.default_rng(seed)
    order = [paths[i] for i in rng.permutation(len(paths))]
    buffer = ShuffleBuffer(buffer_size, rng)
    pending: list[np.ndarray] = []
    pending_n = emitted = 0
    limit = max_frames if max_frames > 0 else None

    def batches(frames: np.ndarray, final: bool) -> Iterator[np.ndarray]:
        nonlocal pending_n, emitted
        if len(frames):
            pending.append(frames)
            pending_n += len(frames)
        while pending_n >= batch_size or (final and pending_n > 0):
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            batch, rest = joined[:batch_size], joined[batch_size:]
            pending[:] = [rest] if len(rest) else []
            pending_n = len(rest)
            if limit is not None:
                batch = batch[:limit - emitted]
            emitted += len(batch)
            yield batch
            if limit is not None and emitted >= limit:
                return

    for _, episode in iter_episodes(order):
        yield from batches(buffer.push(episode.obs), final=False)
        if limit is not None and emitted >= limit:
            return
    yield from batches(buffer.drain(), final=True)


def iter_frames_in_order(paths: list[Path], batch_size: int) -> Iterator[np.ndarray]:
    """Frames of `paths` in file order, in batches (for evaluation and encoding)."""
    for _, episode in iter_episodes(paths):
        for start in range(0, len(episode.obs), batch_size):
            yield episode.obs[start:start + batch_size]
