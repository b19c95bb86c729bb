"""V: the ConvVAE, the streaming frame shuffle, train-vae (resume, PNG, logs), encode, and
their bad input, on tiny REAL CarRacing rollouts."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from worldmodels import checkpoint
from worldmodels.agent import load_starts, starts_from_latents
from worldmodels.cli import main
from worldmodels.config import PipelineConfig, VAEConfig, load_json, save_json
from worldmodels.data.frames import ShuffleBuffer, stream_frames
from worldmodels.data.latents import BadLatentsError, list_latents, read_latents
from worldmodels.data.rollouts import Episode, list_episodes, read_episode, write_episode
from worldmodels.logger import read_csv
from worldmodels.models.vae import ConvVAE
from worldmodels.run import RunPaths
from worldmodels.train.encode import encode
from worldmodels.train.vae import evaluate, reconstruct, train_vae

TINY = VAEConfig(epochs=1, batch_size=16, max_frames_per_epoch=48, shuffle_buffer=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained_run(real_rollouts, tmp_path_factory):
    """A run whose V trained one tiny epoch on the real rollouts (copy it before changing it)."""
    run = tmp_path_factory.mktemp("vae_run")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    train_vae(real_rollouts, run, VAEConfig(**vars(TINY)), progress=False)
    torch.set_num_threads(before)
    return run


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def _numbered_episodes(directory, counts: list[int]) -> None:
    """Episodes whose frame i carries a unique id in its first two pixels."""
    next_id = 0
    for seed, t in enumerate(counts):
        obs = np.zeros((t, 64, 64, 3), np.uint8)
        ids = np.arange(next_id, next_id + t)
        obs[:, 0, 0, 0], obs[:, 0, 0, 1] = ids % 256, ids // 256
        next_id += t
        write_episode(directory / f"episode_{seed:08d}.npz", Episode(
            obs, np.zeros((t, 3), np.float32), np.zeros(t, np.float32), np.zeros(t, bool),
            seed, "random"))


def _ids(frames: np.ndarray) -> np.ndarray:
    return frames[:, 0, 0, 0].astype(int) + 256 * frames[:, 0, 0, 1].astype(int)


def test_vae_shapes_and_loss_terms():
    model = ConvVAE(VAEConfig())
    frames = torch.randint(0, 256, (5, 64, 64, 3), dtype=torch.uint8)
    mu, logvar = model.encode(frames)
    assert mu.shape == logvar.shape == (5, 32)
    recon = model.decode(mu)
    assert recon.shape == (5, 3, 64, 64) and 0 <= recon.min() and recon.max() <= 1
    total, rec, kl = model.loss(frames)
    assert total.shape == () and torch.isclose(total, rec + kl)
    assert kl >= 0.5 * 32  # the free-bits floor


def test_shuffle_stream_covers_every_frame_once_in_a_seeded_order(tmp_path):
    _numbered_episodes(tmp_path, [30, 5, 41, 17])
    paths = list_episodes(tmp_path)
    batches = list(stream_frames(paths, batch_size=7, buffer_size=10, seed=3))
    assert all(len(b) == 7 for b in batches[:-1]) and 0 < len(batches[-1]) <= 7
    ids = _ids(np.concatenate(batches))
    assert sorted(ids) == list(range(93))  # every frame exactly once
    assert not np.array_equal(ids, np.arange(93))  # shuffled
    again = _ids(np.concatenate(list(stream_frames(paths, 7, 10, seed=3))))
    other = _ids(np.concatenate(list(stream_frames(paths, 7, 10, seed=4))))
    assert np.array_equal(ids, again) and not np.array_equal(ids, other)
    limited = list(stream_frames(paths, 7, 10, seed=3, max_frames=20))
    assert sum(len(b) for b in limited) == 20


def test_shuffle_buffer_never_holds_more_than_its_capacity():
    buffer = ShuffleBuffer(8, np.random.default_rng(0))
    out = buffer.push(np.zeros((50, 64, 64, 3), np.uint8))
    assert len(out) == 42 and buffer.size == 8 and buffer.frames.shape[0] == 8
    assert len(buffer.drain()) == 8 and buffer.size == 0


def test_stream_skips_a_corrupt_file_and_names_it(tmp_path):
    _numbered_episodes(tmp_path, [12, 9])
    bad = tmp_path / "episode_00000007.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="episode_00000007"):
        frames = np.concatenate(list(stream_frames(list_episodes(tmp_path), 4, 6, seed=0)))
    assert sorted(_ids(frames)) == list(range(21))


def test_vae_loss_falls_on_real_frames(real_rollouts):
    frames = torch.from_numpy(read_episode(list_episodes(real_rollouts)[0]).obs[::2][:24])
    torch.manual_seed(0)
    model = ConvVAE(VAEConfig())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss, _, _ = model.loss(frames)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_train_vae_cli_logs_png_refuses_overwrite_and_resumes(real_rollouts, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    save_json(PipelineConfig(vae=VAEConfig(**vars(TINY))), run / "config.json")
    args = ["train-vae", "--data", str(real_rollouts), "--run", str(run)]
    assert main([*args, "--epochs", "1"]) == 0
    rows = read_csv(run / "logs" / "vae.csv")
    assert len(rows) == 1 and rows[0]["epoch"] == 1 and rows[0]["step"] == 3  # 48 frames / 16
    assert np.isfinite(rows[0]["valid_rec"]) and rows[0]["valid_rec"] > 0  # held-out episode
    image = np.asarray(Image.open(run / "images" / "vae_epoch_001.png"))
    assert image.shape == (128, 8 * 64, 3)  # 8 originals above 8 reconstructions
    held_out = read_episode(list_episodes(real_rollouts)[-1]).obs
    assert np.array_equal(image[:64, :64], held_out[0])  # the top row is real frames

    weights = (run / "vae.pt").read_bytes()
    assert main([*args, "--epochs", "1"]) == 2
    assert "--resume" in _one_error_line(capsys)
    assert (run / "vae.pt").read_bytes() == weights  # not overwritten

    assert main([*args, "--epochs", "2", "--resume"]) == 0
    rows = read_csv(run / "logs" / "vae.csv")
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["step"] == 6
    assert (run / "images" / "vae_epoch_002.png").exists()
    _, payload = checkpoint.load_model(run / "vae.pt", ConvVAE, VAEConfig)
    assert payload["epoch"] == 2 and payload["step"] == 6


def test_resume_matches_an_uninterrupted_run(real_rollouts, tmp_path):
    config = VAEConfig(**{**vars(TINY), "max_frames_per_epoch": 32, "epochs": 2})
    train_vae(real_rollouts, tmp_path / "a", config, progress=False)
    train_vae(real_rollouts, tmp_path / "b", VAEConfig(**{**vars(config), "epochs": 1}),
              progress=False)
    train_vae(real_rollouts, tmp_path / "b", VAEConfig(**vars(config)), resume=True,
              progress=False)
    a, pa = checkpoint.load_model(tmp_path / "a" / "vae.pt", ConvVAE, VAEConfig)
    b, pb = checkpoint.load_model(tmp_path / "b" / "vae.pt", ConvVAE, VAEConfig)
    assert pa["epoch"] == pb["epoch"] == 2
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(wa, wb), name
    adam_a, adam_b = pa["optimizer"]["state"], pb["optimizer"]["state"]
    assert all(torch.equal(adam_a[k]["exp_avg_sq"], adam_b[k]["exp_avg_sq"]) for k in adam_a)


def test_encode_writes_latents_per_episode(trained_run, real_rollouts):
    written = encode(trained_run, real_rollouts, progress=False)
    episodes = list_episodes(real_rollouts)
    assert [p.name for p in written] == [p.name for p in episodes]
    assert list_latents(RunPaths(trained_run).latents) == written
    # The dream starts, once, from the same latents any stage would read them from.
    saved = load_starts(RunPaths(trained_run))
    for a, b in zip(saved, starts_from_latents(RunPaths(trained_run).latents), strict=True):
        assert a.shape == (len(written), 32) and torch.equal(a, b)
    model, _ = checkpoint.load_model(RunPaths(trained_run).vae, ConvVAE, VAEConfig)
    for path, episode_path in zip(written, episodes, strict=True):
        latents, episode = read_latents(path), read_episode(episode_path)
        assert latents.mu.shape == latents.logvar.shape == (len(episode), 32)
        assert latents.mu.dtype == np.float16
        assert np.array_equal(latents.action, episode.action)
        assert np.array_equal(latents.done, episode.done)
        with torch.no_grad():
            mu, _ = model.encode(torch.from_numpy(episode.obs[:5]))
        np.testing.assert_allclose(latents.mu[:5].astype(np.float32), mu.numpy(),
                                   rtol=2e-3, atol=2e-3)
    written[0].write_bytes(written[0].read_bytes()[:100])
    with pytest.raises(BadLatentsError, match=written[0].name):
        read_latents(written[0])


def test_bad_input_is_one_line_and_exit_2(trained_run, real_rollouts, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train-vae", "--data", str(empty), "--run", str(tmp_path / "r")]) == 2
    assert str(empty) in _one_error_line(capsys)
    assert not (tmp_path / "r").exists()  # nothing made for a failed command

    assert main(["encode", "--run", str(tmp_path / "novae"), "--data", str(real_rollouts)]) == 2
    assert "train-vae" in _one_error_line(capsys)

    # A V whose config says z_size 16 but whose weights have 32: both sizes are named.
    run = tmp_path / "mismatched"
    shutil.copytree(trained_run, run)
    spec = load_json(run / "vae.json")
    save_json({**spec, "z_size": 16}, run / "vae.json")
    assert main(["encode", "--run", str(run), "--data", str(real_rollouts)]) == 2
    line = _one_error_line(capsys)
    assert "32" in line and "16" in line and "vae" in line


def test_train_vae_skips_corrupt_episode_files(real_rollouts, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(real_rollouts, data)
    (data / "episode_00000099.npz").write_bytes(b"\x00" * 50)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = {**vars(TINY), "holdout_episodes": 0.0, "max_frames_per_epoch": 0}
        train_vae(data, tmp_path / "run", VAEConfig(**config), progress=False)
    assert any("episode_00000099" in str(w.message) for w in caught)
    assert (tmp_path / "run" / "vae.pt").exists()


def test_compare_vae_draws_held_out_frames_above_each_v(trained_run, real_rollouts, tmp_path,
                                                        capsys):
    other = tmp_path / "untrained"
    other.mkdir()
    torch.manual_seed(1)
    checkpoint.save(other / "vae.pt", ConvVAE(VAEConfig(**vars(TINY))), VAEConfig(**vars(TINY)))
    out = tmp_path / "grid.png"
    args = ["compare-vae", "--data", str(real_rollouts), "--run", str(trained_run),
            "--run", str(other), "--out", str(out), "--from-end", "5", "--scale", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    image = np.asarray(Image.open(out))
    assert image.shape == (3 * 64 * 2, 64 * 2, 3)  # 3 episodes hold out 1: one column, 3 rows
    rows = image[::2, ::2].reshape(3, 64, 64, 3)
    assert np.array_equal(image, image[::2, ::2].repeat(2, 0).repeat(2, 1))  # 2x2 pixels
    held_out = read_episode(list_episodes(real_rollouts)[-1]).obs
    assert np.array_equal(rows[0], held_out[len(held_out) - 6])
    for row, run in zip(rows[1:], (trained_run, other), strict=True):
        model, _ = checkpoint.load_model(run / "vae.pt", ConvVAE, VAEConfig)
        assert np.array_equal(row, reconstruct(model, rows[:1].copy())[0])
        error = evaluate(model, list_episodes(real_rollouts)[-1:])["valid_rec"]
        assert f"{run}: held-out reconstruction error {error:.2f}" in printed
    assert not np.array_equal(rows[1], rows[2])

    novae, missing = tmp_path / "novae", tmp_path / "missing.png"
    assert main([*args[:5], "--run", str(novae), "--out", str(missing)]) == 2
    line = _one_error_line(capsys)
    assert "train-vae" in line and str(novae) in line and not missing.exists()
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(list_episodes(real_rollouts)[0], one)
    assert main(["compare-vae", "--data", str(one), "--run", str(trained_run),
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "no held-out episodes" in _one_error_line(capsys)
    assert not (tmp_path / "x.png").exists()
    assert main([*args[:7], "--out", str(tmp_path / "grid.jpg")]) == 2
    assert ".png" in _one_error_line(capsys)
    assert main([*args[:7], "--out", str(tmp_path / "y.png"), "--from-end", "60"]) == 2
    assert "longer than --from-end 60" in _one_error_line(capsys)  # the episodes have 60 steps


def test_compare_vae_holds_out_the_last_episode_of_each_collection(trained_run, real_rollouts,
                                                                   tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    episodes = list_episodes(real_rollouts)
    for block in (0, 10_000):  # two collections of six (the three episodes twice): 10% is 1
        for i in range(6):
            shutil.copy(episodes[i % 3], data / f"episode_{block + i:08d}.npz")
    out = tmp_path / "grid.png"
    assert main(["compare-vae", "--data", str(data), "--run", str(trained_run), "--out", str(out),
                 "--episodes", "5", "--from-end", "0", "--scale", "1"]) == 0
    top = np.asarray(Image.open(out))[:64]
    last = read_episode(episodes[-1]).obs[-1]
    assert top.shape == (64, 2 * 64, 3)  # one held out per collection, though 5 were asked for
    assert np.array_equal(top[:, :64], last) and np.array_equal(top[:, 64:], last)
