"""Encoded episodes for M: one `.npz` per episode in RUN/latents/, and a sequence sampler.

| key | shape | dtype |
|---|---|---|
| `mu`, `logvar` | (T, Z) | float16 (V's posterior for each frame) |
| `action` | (T, 3) | float32 |
| `reward` | (T,) | float32 |
| `done` | (T,) | bool |

Files are written atomically (temp name, then rename) and read with allow_pickle=False.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worldmodels.atomic import write_bytes
from worldmodels.data.rollouts import EPISODE_GLOB, action_size
from worldmodels.errors import UserError
from worldmodels.npfiles import read_npz


@dataclass
class Latents:
    mu: np.ndarray  # (T, Z) float16
    logvar: np.ndarray  # (T, Z) float16
    action: np.ndarray  # (T, 3) float32
    reward: np.ndarray  # (T,) float32
    done: np.ndarray  # (T,) bool

    def __len__(self) -> int:
        return len(self.action)


class BadLatentsError(UserError):
    """A latents file that is corrupt or malformed."""


def check_latents(latents: Latents, where: Path | str) -> None:
    if np.ndim(latents.action) == 0:  # len() of a 0-d array would raise TypeError
        raise BadLatentsError(f"{where}: action is a scalar, expected shape (T, A)")
    t = len(latents.action)
    z = latents.mu.shape[-1] if latents.mu.ndim == 2 else -1
    expected = {
        "mu": ((t, z), np.float16), "logvar": ((t, z), np.float16),
        "action": ((t, action_size(latents.action)), np.float32), "reward": ((t,), np.float32),
        "done": ((t,), np.bool_),
    }
    if t == 0:
        raise BadLatentsError(f"{where}: empty episode (0 steps)")
    for key, (shape, dtype) in expected.items():
        array = getattr(latents, key)
        if array.shape != shape or array.dtype != dtype:
            raise BadLatentsError(f"{where}: {key} has shape {array.shape} {array.dtype}, "
                                  f"expected {shape} {np.dtype(dtype).name}")


def write_latents(path: Path, latents: Latents) -> None:
    check_latents(latents, path)
    buffer = io.BytesIO()
    np.savez(buffer, mu=latents.mu, logvar=latents.logvar, action=latents.action,
             reward=latents.reward, done=latents.done)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, buffer.getvalue())


LATENTS_KEYS = ("mu", "logvar", "action", "reward", "done")


def read_latents(path: Path) -> Latents:
    path = Path(path)
    data = read_npz(path, LATENTS_KEYS, BadLatentsError)
    missing = set(LATENTS_KEYS) - set(data)
    if missing:
        raise BadLatentsError(f"{path}: missing keys {sorted(missing)}")
    latents = Latents(*(data[key] for key in LATENTS_KEYS))
    check_latents(latents, path)
    return latents


def read_good_latents(paths: list[Path]) -> list[Latents]:
    """Every readable file of `paths`; a bad one is skipped with a warning that names it."""
    good = []
    for path in paths:
        try:
            good.append(read_latents(path))
        except BadLatentsError as err:
            warnings.warn(f"skipping {err}", stacklevel=2)
    return good


def list_latents(directory: Path) -> list[Path]:
    return sorted(Path(directory).glob(EPISODE_GLOB))


@dataclass
class SequenceBatch:
    """Windows of L steps from B episodes (numpy; the trainer makes tensors).

    Step t of a window is the input (z_t, a_t); the targets are z_{t+1} (where
    `z_mask`), reward_t and done_t (where `mask`: inside the episode)."""

    mu: np.ndarray  # (B, L + 1, Z) float32: steps t and t+1 for the z target
    logvar: np.ndarray  # (B, L + 1, Z) float32
    action: np.ndarray  # (B, L, 3)
    reward: np.ndarray  # (B, L)
    done: np.ndarray  # (B, L) float32
    mask: np.ndarray  # (B, L) bool: step t is inside the episode
    z_mask: np.ndarray  # (B, L) bool: step t+1 is inside the episode too
    position: np.ndarray  # (B, L) int: step t's index within its episode


@dataclass
class WindowGroup:
    """One batch's windows: episode index and start step per row; with carried state, the
    lane (row of the carried LSTM state) each window continues (None: every row from h = 0)."""

    episode: np.ndarray
    start: np.ndarray
    lane: np.ndarray | None = None


class SequenceSampler:
    """All episodes concatenated in memory (M's data is small), cut into windows of `seq_len`.

    An epoch covers every step of every episode, in one of two ways (`plan`):
    - independent windows: each episode of T steps gives ceil(T / L) windows at a random
      phase, shuffled, each trained from h = 0;
    - lanes (carried state): each batch row is a lane that walks whole episodes window after
      window from step 0, so the LSTM state can be carried from one window to the next and
      M is trained on h as it is at any step of an episode, not only the first L.
    Either way the last window of an episode is padded past its end (masked), so the final
    step, where `done` is set, is always trained on."""

    def __init__(self, episodes: list[Latents], seq_len: int):
        if not episodes:
            raise UserError("no encoded episodes to sample sequences from")
        actions, zs = {e.action.shape[1] for e in episodes}, {e.mu.shape[1] for e in episodes}
        if len(actions) > 1 or len(zs) > 1:
            raise UserError(f"encoded episodes of different games or V's mixed: action sizes "
                            f"{sorted(actions)}, z sizes {sorted(zs)}")
        self.seq_len = seq_len
        self.lengths = np.array([len(e) for e in episodes])
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        cat = np.concatenate
        self.mu = cat([e.mu for e in episodes]).astype(np.float32)
        self.logvar = cat([e.logvar for e in episodes]).astype(np.float32)
        self.action = cat([e.action for e in episodes])
        self.reward = cat([e.reward for e in episodes])
        self.done = cat([e.done for e in episodes]).astype(np.float32)

    @property
    def steps(self) -> int:
        return int(self.lengths.sum())

    def windows(self, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """(episode index, start step within the episode) of every window of one epoch;
        rng None: phase 0 and file order (deterministic, for evaluation)."""
        L = self.seq_len
        n = -(-self.lengths // L)  # ceil
        slack = n * L - self.lengths  # steps by which n windows overhang the episode
        phase = np.zeros_like(slack) if rng is None else rng.integers(0, slack + 1)
        episode = np.repeat(np.arange(len(n)), n)
        k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        start = np.maximum(k * L - np.repeat(phase, n), 0)
        if rng is not None:
            order = rng.permutation(len(episode))
            episode, start = episode[order], start[order]
        return episode, start

    def batch(self, episode: np.ndarray, start: np.ndarray) -> SequenceBatch:
        L = self.seq_len
        t = start[:, None] + np.arange(L + 1)  # (B, L + 1) step within episode
        length = self.lengths[episode][:, None]
        inside = t < length
        flat = self.starts[episode][:, None] + np.minimum(t, length - 1)  # clipped
        return SequenceBatch(
            mu=self.mu[flat], logvar=self.logvar[flat],
            action=self.action[flat[:, :L]], reward=self.reward[flat[:, :L]],
            done=self.done[flat[:, :L]], mask=inside[:, :L], z_mask=inside[:, 1:],
            position=t[:, :L],
        )

    def lanes(self, lanes: int, rng: np.random.Generator | None) -> list[WindowGroup]:
        """Whole episodes on `lanes` rows: each episode (shuffled; file order if rng is None)
        goes to the lane with the least work so far, and is walked from step 0 in windows of
        L. Group s holds the s-th window of every lane that still has one."""
        n = -(-self.lengths // self.seq_len)
        order = np.arange(len(n)) if rng is None else rng.permutation(len(n))
        lanes = min(lanes, len(n))
        load, plans = np.zeros(lanes, np.int64), [[] for _ in range(lanes)]
        for e in order:
            j = int(load.argmin())
            plans[j] += [(e, k * self.seq_len) for k in range(n[e])]
            load[j] += n[e]
        groups = []
        for s in range(int(load.max())):
            active = [j for j in range(lanes) if s < len(plans[j])]
            windows = np.array([plans[j][s] for j in active]).reshape(-1, 2)
            groups.append(WindowGroup(windows[:, 0], windows[:, 1], np.array(active)))
        return groups

    def plan(self, batch_size: int, rng: np.random.Generator | None,
             carry_state: bool) -> list[WindowGroup]:
        """One epoch's batches of windows (see the class docstring)."""
        if carry_state:
            return self.lanes(batch_size, rng)
        episode, start = self.windows(rng)
        return [WindowGroup(episode[i:i + batch_size], start[i:i + batch_size])
                for i in range(0, len(episode), batch_size)]
