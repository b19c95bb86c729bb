"""Episode files on real CarRacing data: round trip, and bad files found by `validate` and
skipped by the reader."""

from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from worldmodels.atomic import write_bytes
from worldmodels.cli import main
from worldmodels.config import SEED_BLOCK
from worldmodels.data.latents import BadLatentsError, Latents, read_latents, write_latents
from worldmodels.data.rollouts import (
    BadEpisodeError,
    Episode,
    encode_episode,
    episode_path,
    iter_episodes,
    list_episodes,
    read_episode,
    split_holdout,
    validate_dir,
    write_episode,
)
from worldmodels.iterate import AGENT_SEED


@pytest.fixture
def data_dir(real_rollouts, tmp_path):
    """A private copy of the shared real episodes, free to damage."""
    out = tmp_path / "data"
    shutil.copytree(real_rollouts, out)
    return out


def test_round_trip_keeps_every_field(data_dir, tmp_path):
    episode = read_episode(data_dir / "episode_00000001.npz")
    path = tmp_path / "copy.npz"
    write_episode(path, episode)
    again = read_episode(path)
    for key in ("obs", "action", "reward", "done"):
        np.testing.assert_array_equal(getattr(again, key), getattr(episode, key))
        assert getattr(again, key).dtype == getattr(episode, key).dtype
    assert (again.seed, again.policy) == (1, "brownian")
    # The bytes a worker sends are the same file the driver would have written itself.
    write_bytes(tmp_path / "from_bytes.npz", encode_episode(episode))
    assert (tmp_path / "from_bytes.npz").read_bytes() == path.read_bytes()
    assert not list(tmp_path.glob(".tmp_*"))


def test_validate_and_reader_handle_corrupt_truncated_and_malformed_files(data_dir, capsys):
    good_path, truncated, corrupt = sorted(data_dir.glob("episode_*.npz"))
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    corrupt.write_bytes(b"this is not a zip file" * 100)
    malformed = data_dir / "episode_00000099.npz"
    episode = read_episode(good_path)
    np.savez_compressed(  # float frames, as a buggy writer might leave them
        malformed, obs=episode.obs.astype(np.float32), action=episode.action,
        reward=episode.reward, done=episode.done, seed=np.int64(99), policy=np.str_("random"),
    )
    (data_dir / ".tmp_abc.npz").write_bytes(b"partial")  # unfinished write: not an episode

    good, problems = validate_dir(data_dir)
    assert good == [good_path]
    assert len(problems) == 3
    for bad in (truncated, corrupt, malformed):
        assert sum(str(bad) in line for line in problems) == 1
    assert all("\n" not in line for line in problems)
    assert any("obs has shape" in line and "uint8" in line for line in problems)

    assert main(["validate", str(data_dir)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 4 and out[-1].endswith("1 good, 3 bad episode files")
    assert {line for line in out[:3]} == set(problems)

    with pytest.warns(UserWarning) as caught:
        read = [path for path, _ in iter_episodes(list_episodes(data_dir))]
    assert read == [good_path]
    warned = " ".join(str(w.message) for w in caught)
    assert all(str(bad) in warned for bad in (truncated, corrupt, malformed))


def test_validate_clean_dir_exits_zero_and_missing_dir_is_one_line(data_dir, tmp_path, capsys):
    assert main(["validate", str(data_dir)]) == 0
    assert capsys.readouterr().out.strip().endswith("3 good, 0 bad episode files")
    assert main(["validate", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err


def test_missing_keys_and_empty_episodes_are_rejected(tmp_path):
    path = tmp_path / "episode_00000000.npz"
    np.savez_compressed(path, obs=np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(BadEpisodeError, match="missing keys"):
        read_episode(path)
    empty = Episode(
        obs=np.zeros((0, 64, 64, 3), np.uint8), action=np.zeros((0, 3), np.float32),
        reward=np.zeros(0, np.float32), done=np.zeros(0, bool), seed=0, policy="random",
    )
    with pytest.raises(BadEpisodeError, match="empty"):
        write_episode(tmp_path / "empty.npz", empty)
    assert not (tmp_path / "empty.npz").exists()


def test_pickled_arrays_are_refused(tmp_path):
    path = tmp_path / "episode_00000000.npz"
    np.savez_compressed(  # an object array can only be loaded by unpickling it
        path, obs=np.array([{"a": 1}], dtype=object), action=np.zeros((1, 3), np.float32),
        reward=np.zeros(1, np.float32), done=np.ones(1, bool), seed=np.int64(0),
        policy=np.str_("random"),
    )
    with pytest.raises(BadEpisodeError, match="corrupt"):
        read_episode(path)


def flip_deflate_bytes(path) -> None:
    """Damage the deflate stream of the first member, leaving the zip's CRC fields intact."""
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[26:30])  # the first local header
    start = 30 + name_len + extra_len
    for k in range(8):
        data[start + 5 + k] ^= 0xFF
    path.write_bytes(bytes(data))


def garble_header(path, key: str) -> None:
    """Rewrite `path` with member `key`'s .npy header made unparsable (an unclosed bracket);
    the zip's CRC is recomputed, so only numpy's header parser sees the damage."""
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    npy = members[f"{key}.npy"]
    members[f"{key}.npy"] = npy.replace(b"{'descr': '", b"{'descr': ('", 1)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_damaged_deflate_stream_garbled_header_and_odd_shapes_are_named(data_dir, capsys):
    a, b, c = sorted(data_dir.glob("episode_*.npz"))
    flip_deflate_bytes(a)  # zlib.error before
    garble_header(b, "obs")  # tokenize.TokenError before
    episode = read_episode(c)
    seed_array = data_dir / "episode_00000010.npz"
    np.savez_compressed(seed_array, obs=episode.obs, action=episode.action,
                        reward=episode.reward, done=episode.done, seed=np.arange(2),
                        policy=np.str_("random"))
    scalar_action = data_dir / "episode_00000011.npz"
    np.savez_compressed(scalar_action, obs=episode.obs, action=np.float32(0),
                        reward=episode.reward, done=episode.done, seed=np.int64(11),
                        policy=np.str_("random"))
    garbage = data_dir / "episode_00000012.npz"
    garbage.write_bytes(b"\x00garbage, not a zip" * 50)

    assert main(["validate", str(data_dir)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].endswith("1 good, 5 bad episode files")
    lines = dict(zip(sorted([a, b, seed_array, scalar_action, garbage]), sorted(out[:-1]),
                     strict=True))
    for path, line in lines.items():
        assert line.startswith(str(path))
    assert "corrupt" in lines[a] and "corrupt" in lines[b]
    assert "seed has shape (2,)" in lines[seed_array]
    assert "action is a scalar" in lines[scalar_action]
    assert "not a valid .npz" in lines[garbage] and "allow_pickle" not in lines[garbage]

    with pytest.warns(UserWarning):
        read = [path for path, _ in iter_episodes(list_episodes(data_dir))]
    assert read == [c]


def test_train_vae_skips_damaged_episodes_with_a_warning(data_dir, tmp_path, capsys):
    a, b, c = sorted(data_dir.glob("episode_*.npz"))
    shutil.copy(c, data_dir / "episode_00000003.npz")  # a good one to train on, one held out
    flip_deflate_bytes(a)
    garble_header(b, "obs")
    args = ["train-vae", "--data", str(data_dir), "--run", str(tmp_path / "run"),
            "--epochs", "1", "--batch-size", "16"]
    with pytest.warns(UserWarning, match="skipping"):
        assert main(args) == 0


def test_damaged_latents_are_skipped_by_the_reader(tmp_path):
    path = tmp_path / "episode_00000000.npz"
    write_latents(path, Latents(mu=np.zeros((3, 32), np.float16),
                                logvar=np.zeros((3, 32), np.float16),
                                action=np.zeros((3, 3), np.float32),
                                reward=np.zeros(3, np.float32), done=np.zeros(3, bool)))
    garble_header(path, "mu")
    with pytest.raises(BadLatentsError, match="corrupt or truncated .TokenError"):
        read_latents(path)


def test_holdout_is_made_per_collection_and_stays_put_as_data_grows():
    first = [episode_path(Path("d"), seed) for seed in range(200)]  # collect --seed 0
    train, held = split_holdout(first, 0.1)
    assert held == first[-20:] and train == first[:-20]  # one collection: its last tenth
    # three iterations of 40 agent episodes each: each is its own block of seeds
    agent = [episode_path(Path("d"), AGENT_SEED + SEED_BLOCK * k + j)
             for k in (1, 2, 3) for j in range(40)]
    train, held_all = split_holdout(first + agent, 0.1)
    assert set(held) <= set(held_all)  # what was held out stays held out
    for k in (1, 2, 3):  # 36 of each iteration's 40 are trained on, not the 12-16 of before
        block = agent[40 * (k - 1):40 * k]
        assert len(set(block) & set(train)) == 36
    assert len(train) + len(held_all) == 320 and not set(train) & set(held_all)
    # names that carry no seed form one group; two files always keep one out
    other = [Path(f"{name}.npz") for name in "abcde"]
    assert split_holdout(other, 0.4) == (other[:3], other[3:])
    assert split_holdout(first[:2], 0.1) == (first[:1], first[1:2])
    assert split_holdout(first[:1], 0.1) == (first[:1], [])
