"""Episode files: write atomically, read without pickle, validate a directory.

One episode is one compressed `.npz` (see rollouts/README.md for the keys). A file
that exists under its final name is whole: it is written to a temp name and renamed.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worldmodels.atomic import write_bytes
from worldmodels.config import SEED_BLOCK
from worldmodels.errors import UserError
from worldmodels.npfiles import read_npz

FRAME_SHAPE = (64, 64, 3)
EPISODE_GLOB = "episode_*.npz"


@dataclass
class Episode:
    obs: np.ndarray  # (T, 64, 64, 3) uint8
    action: np.ndarray  # (T, A) float32: the world's A actions (CarRacing 3, Take Cover 1)
    reward: np.ndarray  # (T,) float32
    done: np.ndarray  # (T,) bool
    seed: int
    policy: str

    def __len__(self) -> int:
        return len(self.action)


class BadEpisodeError(UserError):
    """An episode file that is corrupt, truncated or malformed."""


def episode_path(directory: Path, seed: int) -> Path:
    return Path(directory) / f"episode_{seed:08d}.npz"


def encode_episode(episode: Episode) -> bytes:
    """The compressed `.npz` bytes of `episode` (workers compress; the driver only writes)."""
    check_episode(episode, f"episode {episode.seed}")
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, obs=episode.obs, action=episode.action, reward=episode.reward,
        done=episode.done, seed=np.int64(episode.seed), policy=np.str_(episode.policy),
    )
    return buffer.getvalue()


def write_episode(path: Path, episode: Episode) -> None:
    """Write `episode` to `path` atomically: temp file in the same directory, then rename."""
    check_episode(episode, path)
    write_bytes(path, encode_episode(episode))


EPISODE_KEYS = ("obs", "action", "reward", "done", "seed", "policy")


def read_episode(path: Path) -> Episode:
    """Read and check one episode file; raises BadEpisodeError naming the file and the fault."""
    path = Path(path)
    data = read_npz(path, EPISODE_KEYS, BadEpisodeError)
    missing = set(EPISODE_KEYS) - set(data)
    if missing:
        raise BadEpisodeError(f"{path}: missing keys {sorted(missing)}")
    seed, policy = data["seed"], data["policy"]
    if seed.shape != () or not np.issubdtype(seed.dtype, np.integer):
        raise BadEpisodeError(f"{path}: seed has shape {seed.shape} {seed.dtype}, expected a "
                              "single integer")
    if policy.shape != () or policy.dtype.kind != "U":
        raise BadEpisodeError(f"{path}: policy has shape {policy.shape} {policy.dtype}, "
                              "expected a single string")
    episode = Episode(obs=data["obs"], action=data["action"], reward=data["reward"],
                      done=data["done"], seed=int(seed), policy=str(policy))
    check_episode(episode, path)
    return episode


def check_episode(episode: Episode, path: Path | str) -> None:
    """Raise BadEpisodeError if shapes or dtypes are not those of an episode."""
    if np.ndim(episode.action) == 0:  # len() of a 0-d array would raise TypeError
        raise BadEpisodeError(f"{path}: action is a scalar, expected shape (T, A)")
    t, a = len(episode.action), action_size(episode.action)
    expected = {
        "obs": ((t, *FRAME_SHAPE), np.uint8),
        "action": ((t, a), np.float32),
        "reward": ((t,), np.float32),
        "done": ((t,), np.bool_),
    }
    if t == 0:
        raise BadEpisodeError(f"{path}: empty episode (0 steps)")
    for key, (shape, dtype) in expected.items():
        array = getattr(episode, key)
        if array.shape != shape or array.dtype != dtype:
            raise BadEpisodeError(
                f"{path}: {key} has shape {array.shape} {array.dtype}, expected {shape} "
                f"{np.dtype(dtype).name}"
            )


def action_size(action: np.ndarray) -> int:
    """A of actions (T, A): any A >= 1 (the world's); -1 (never matches) for other shapes."""
    return action.shape[1] if action.ndim == 2 and action.shape[1] >= 1 else -1


def list_episodes(directory: Path) -> list[Path]:
    """Episode files in `directory`, sorted by name; a clear error if it is not a directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: no such data directory")
    return sorted(directory.glob(EPISODE_GLOB))


def validate_dir(directory: Path) -> tuple[list[Path], list[str]]:
    """Check every episode file: (good paths, one problem line per bad file)."""
    good, problems = [], []
    for path in list_episodes(directory):
        try:
            read_episode(path)
            good.append(path)
        except BadEpisodeError as err:
            problems.append(str(err))
    return good, problems


def iter_episodes(paths: list[Path]) -> Iterator[tuple[Path, Episode]]:
    """Read episodes one at a time, skipping bad files with a warning that names them."""
    for path in paths:
        try:
            yield path, read_episode(path)
        except BadEpisodeError as err:
            warnings.warn(f"skipping {err}", stacklevel=2)


def split_holdout(paths: list[Path], fraction: float) -> tuple[list[Path], list[Path]]:
    """Deterministic split by episode, made within each collection: files are grouped by
    their seed's block of SEED_BLOCK (`episode_<seed>.npz`; other names form one group) and
    the last `fraction` of each group is held out, at least one file when there are two or
    more. So no frame of a held-out episode is trained on, a held-out episode stays held out
    as later collections are added, and each collection (an iteration's agent episodes
    too) is mostly trained on, not held out whole because its files sort last."""
    if len(paths) < 2 or fraction <= 0:
        return list(paths), []
    groups: dict[int | None, list[Path]] = {}
    for path in paths:
        groups.setdefault(seed_block(path), []).append(path)
    held = {path for group in groups.values()
            for path in group[len(group) - round(len(group) * fraction):]}
    if not held:
        held = {paths[-1]}
    return [p for p in paths if p not in held], [p for p in paths if p in held]


def seed_block(path: Path) -> int | None:
    """The block of SEED_BLOCK seeds that an `episode_<seed>.npz` file belongs to."""
    match = re.fullmatch(r"episode_(\d+)\.npz", Path(path).name)
    return int(match.group(1)) // SEED_BLOCK if match else None
