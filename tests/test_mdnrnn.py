"""M: the MDN-RNN, the latents format and sequence sampler, train-mdnrnn (resume, refusal,
bad input), on latents encoded from tiny REAL CarRacing rollouts."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from worldmodels import checkpoint
from worldmodels.agent import WorldModel
from worldmodels.cli import main
from worldmodels.config import MDNRNNConfig, PipelineConfig, VAEConfig, load_json, save_json
from worldmodels.data.latents import (
    BadLatentsError,
    Latents,
    SequenceSampler,
    WindowGroup,
    list_latents,
    read_latents,
    write_latents,
)
from worldmodels.env.dream import BatchedDream
from worldmodels.errors import UserError
from worldmodels.logger import read_csv
from worldmodels.models.mdnrnn import MDNRNN
from worldmodels.run import RunPaths
from worldmodels.train.encode import encode
from worldmodels.train.mdnrnn import (
    CarriedState,
    batch_losses,
    done_pos_weight,
    done_prior_logit,
    epoch_learning_rate,
    total_loss,
    train_mdnrnn,
)
from worldmodels.train.vae import train_vae

TINY = MDNRNNConfig(hidden_size=32, gaussians=3, epochs=1, seq_len=16, batch_size=4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def encoded_run(real_rollouts, tmp_path_factory):
    """A run with a briefly trained V and the real rollouts encoded (copy before changing)."""
    run = tmp_path_factory.mktemp("mdnrnn_run")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    train_vae(real_rollouts, run, VAEConfig(epochs=1, batch_size=16, max_frames_per_epoch=32),
              progress=False)
    encode(run, real_rollouts, progress=False)
    torch.set_num_threads(before)
    return run


def _copy_run(encoded_run, tmp_path, config: MDNRNNConfig):
    run = tmp_path / "run"
    shutil.copytree(encoded_run, run)
    save_json(PipelineConfig(mdnrnn=config), run / "config.json")
    return run


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def _latents(t: int, seed: int = 0, z: int = 4) -> Latents:
    rng = np.random.default_rng(seed)
    done = np.zeros(t, bool)
    done[-1] = True
    return Latents(
        mu=(np.arange(t)[:, None] + 1000 * seed + np.zeros((1, z))).astype(np.float16),
        logvar=rng.normal(size=(t, z)).astype(np.float16),
        action=rng.normal(size=(t, 3)).astype(np.float32),
        reward=rng.normal(size=t).astype(np.float32), done=done)


def test_mdnrnn_shapes_and_step_matches_forward():
    config = MDNRNNConfig(hidden_size=24, gaussians=5)
    model = MDNRNN(config)
    z, a = torch.randn(3, 7, 32), torch.randn(3, 7, 3)
    mixture, reward, done, (h, c) = model(z, a)
    assert mixture.mu.shape == mixture.logit_pi.shape == (3, 7, 32, 5)
    assert reward.shape == done.shape == (3, 7) and h.shape == c.shape == (1, 3, 24)
    state = model.initial_state(3)
    for t in range(7):
        state = model.step(z[:, t], a[:, t], state)
    torch.testing.assert_close(state[0], h[0], rtol=1e-5, atol=1e-5)
    step_mixture, step_reward, step_done = model.heads(state[0])
    torch.testing.assert_close(step_mixture.mu, mixture.mu[:, -1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step_done, done[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("carry_state", [False, True])
def test_sampler_covers_every_step_with_aligned_targets(carry_state):
    episodes = [_latents(37, 0), _latents(5, 1), _latents(16, 2)]
    sampler = SequenceSampler(episodes, seq_len=8)
    seen = set()
    groups = sampler.plan(3, np.random.default_rng(0), carry_state)
    for group in groups:
        batch = sampler.batch(group.episode, group.start)
        np.testing.assert_array_equal(batch.position[:, 0], group.start)
        assert batch.mu.shape == (len(batch.mask), 9, 4) and batch.action.shape[1:] == (8, 3)
        step_ids = batch.mu[:, :-1, 0][batch.mask]  # mu encodes 1000 * episode + step
        seen.update(step_ids.tolist())
        # z target t+1 is the next step of the same episode wherever z_mask is set
        diff = batch.mu[:, 1:, 0] - batch.mu[:, :-1, 0]
        assert np.all(diff[batch.z_mask] == 1)
        assert not np.any(batch.z_mask & ~batch.mask)
        assert np.all(batch.done[batch.mask & ~batch.z_mask] == 1)  # last step is the done
    expected = {1000 * e + t for e, n in enumerate([37, 5, 16]) for t in range(n)}
    assert seen == expected
    if not carry_state:
        assert len(groups) == -(-(5 + 1 + 2) // 3)
        return
    # Lanes: every lane walks its episodes from step 0, one window after the other.
    assert max(len(g.lane) for g in groups) == 3
    walked: dict[int, list[tuple[int, int]]] = {}
    for group in groups:
        for lane, e, start in zip(group.lane, group.episode, group.start, strict=True):
            walked.setdefault(int(lane), []).append((int(e), int(start)))
    for windows in walked.values():
        for (e0, s0), (e1, s1) in zip(windows, windows[1:], strict=False):
            assert (e1 == e0 and s1 == s0 + 8) or (e1 != e0 and s1 == 0)
        assert windows[0][1] == 0


def test_dropout_forward_matches_step_with_masks_and_rate_zero_is_plain_lstm():
    config = MDNRNNConfig(hidden_size=24, gaussians=3, dropout=0.3)
    model = MDNRNN(config)
    z, a = torch.randn(3, 6, 32), torch.randn(3, 6, 3)
    masks = model.dropout_masks(3, torch.Generator().manual_seed(1))
    assert torch.allclose(masks[1].unique(), torch.tensor([0.0, 1 / 0.7]))
    _, reward, _, (h, c) = model(z, a, masks=masks)
    state = model.initial_state(3)
    for t in range(6):
        state = model.step(z[:, t], a[:, t], state, masks)
    torch.testing.assert_close(state[0], h[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state[1], c[0], rtol=1e-5, atol=1e-5)
    # All-ones masks: the unrolled path equals nn.LSTM.
    ones = (torch.ones(3, 35), torch.ones(3, 24))
    _, r_unrolled, _, _ = model(z, a, masks=ones)
    _, r_plain, _, _ = model(z, a)
    torch.testing.assert_close(r_unrolled, r_plain, rtol=1e-5, atol=1e-5)
    assert MDNRNN(MDNRNNConfig(dropout=0.0)).dropout_masks(3) is None


def test_dropout_forward_gradients_match_autograd_through_step():
    # MaskedLSTM's hand-written backward against autograd through the plain step() loop:
    # every output and the final state in the loss, from a given start state.
    torch.manual_seed(0)
    model = MDNRNN(MDNRNNConfig(hidden_size=16, gaussians=2, dropout=0.4))
    z, a = torch.randn(4, 7, 32), torch.randn(4, 7, 3)
    masks = model.dropout_masks(4, torch.Generator().manual_seed(2))
    weights = torch.randn(4, 7), torch.randn(4, 16), torch.randn(4, 16)

    def gradients(fast: bool) -> list[torch.Tensor]:
        model.zero_grad()
        start = tuple(torch.full((4, 16), 0.3, requires_grad=True) for _ in range(2))
        if fast:
            _, reward, _, (h, c) = model(z, a, (start[0][None], start[1][None]), masks)
            h, c = h[0], c[0]
        else:
            state, rewards = start, []
            for t in range(7):
                state = model.step(z[:, t], a[:, t], state, masks)
                rewards.append(model.heads(state[0])[1])
            reward, (h, c) = torch.stack(rewards, 1), state
        loss = sum((x * w).sum() for x, w in zip((reward, h, c), weights, strict=True))
        loss.backward()
        return [p.grad.clone() for p in model.lstm.parameters()] + [s.grad for s in start]

    for fast, plain in zip(gradients(True), gradients(False), strict=True):
        torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


def test_carried_state_continues_lanes_and_restarts_episodes():
    model = MDNRNN(MDNRNNConfig(hidden_size=8, gaussians=2, dropout=0.5))
    carried = CarriedState(model, lanes=2, generator=torch.Generator().manual_seed(0))
    first = WindowGroup(np.array([0, 1]), np.array([0, 0]), np.array([0, 1]))
    (h, c), masks = carried.begin(first)
    assert h.abs().sum() == 0
    carried.end(first, (torch.ones(1, 2, 8), torch.ones(1, 2, 8)))
    nxt = WindowGroup(np.array([0, 2]), np.array([16, 0]), np.array([0, 1]))
    (h2, _), masks2 = carried.begin(nxt)
    assert h2[0, 0].eq(1).all() and h2[0, 1].eq(0).all()  # lane 0 continues, lane 1 restarts
    assert torch.equal(masks2[1][0], masks[1][0])  # same episode, same dropout mask


def test_latents_round_trip_and_bad_files(tmp_path):
    latents = _latents(10)
    path = tmp_path / "episode_00000000.npz"
    write_latents(path, latents)
    back = read_latents(path)
    assert all(np.array_equal(getattr(back, k), getattr(latents, k))
               for k in ("mu", "logvar", "action", "reward", "done"))
    assert list_latents(tmp_path) == [path] and not list(tmp_path.glob(".tmp_*"))
    np.savez(path, mu=np.array([object()], dtype=object), logvar=latents.logvar,
             action=latents.action, reward=latents.reward, done=latents.done)
    with pytest.raises(BadLatentsError, match=path.name):  # pickled object arrays refused
        read_latents(path)
    np.savez(path, mu=latents.mu[:, :2].astype(np.float32), logvar=latents.logvar,
             action=latents.action, reward=latents.reward, done=latents.done)
    with pytest.raises(BadLatentsError, match="mu has shape"):
        read_latents(path)


def test_done_pos_weight_is_derived_from_the_data():
    sampler = SequenceSampler([_latents(10), _latents(30, 1)], seq_len=8)
    assert done_pos_weight(MDNRNNConfig(), sampler) == pytest.approx(38 / 2)
    assert done_pos_weight(MDNRNNConfig(done_pos_weight=3.0), sampler) == 3.0
    assert done_prior_logit(sampler) == pytest.approx(np.log(2 / 38))
    no_done = _latents(40)
    no_done.done[:] = False
    assert done_prior_logit(SequenceSampler([no_done], seq_len=8)) == pytest.approx(
        np.log(0.5 / 39.5))


@pytest.mark.parametrize("mixture", ["factorised", "joint"])
def test_losses_fall_on_real_latents(encoded_run, mixture):
    episodes = [read_latents(p) for p in list_latents(RunPaths(encoded_run).latents)]
    sampler = SequenceSampler(episodes, seq_len=TINY.seq_len)
    config = MDNRNNConfig(**{**vars(TINY), "mixture": mixture})
    torch.manual_seed(0)
    model = MDNRNN(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    group = sampler.plan(8, np.random.default_rng(0), carry_state=False)[0]
    batch = sampler.batch(group.episode, group.start)
    pos_weight = torch.tensor(done_pos_weight(config, sampler))
    history = []
    for _ in range(60):
        losses, _ = batch_losses(model, batch, pos_weight, torch.Generator().manual_seed(0))
        loss = total_loss(losses, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({k: losses[k].item() for k in ("z_nll", "reward_mse", "done_bce")})
    assert history[-1]["z_nll"] < history[0]["z_nll"] - 5, history  # nats per step
    assert history[-1]["reward_mse"] < history[0]["reward_mse"]
    assert history[-1]["done_bce"] < history[0]["done_bce"]


def test_the_world_model_knows_the_class_weight_its_done_head_trained_with(encoded_run,
                                                                          tmp_path):
    # The dream's `sample` done rule undoes it to get the head's calibrated probability.
    config = MDNRNNConfig(**{**vars(TINY), "epochs": 1, "done_pos_weight": 2.5})
    run = _copy_run(encoded_run, tmp_path, config)
    train_mdnrnn(run, config, progress=False)
    assert WorldModel.from_run(run).done_pos_weight == 2.5


def test_train_mdnrnn_cli_refuses_overwrite_and_resumes_exactly(encoded_run, tmp_path, capsys):
    run = _copy_run(encoded_run, tmp_path, MDNRNNConfig(**vars(TINY)))
    assert main(["train-mdnrnn", "--run", str(run), "--epochs", "1"]) == 0
    rows = read_csv(run / "logs" / "mdnrnn.csv")
    assert rows[0]["epoch"] == 1 and np.isfinite(rows[0]["valid_z_nll"])  # held-out episode
    assert np.isfinite(rows[0]["valid_z_nll_0_100"])  # held-out losses by position too
    assert {"valid_done_bce_100_300", "valid_reward_mse_300_end"} <= set(rows[0])
    saved = (run / "mdnrnn.pt").read_bytes()
    assert main(["train-mdnrnn", "--run", str(run), "--epochs", "2"]) == 2
    assert "--resume" in _one_error_line(capsys)
    assert (run / "mdnrnn.pt").read_bytes() == saved
    assert main(["train-mdnrnn", "--run", str(run), "--epochs", "2", "--resume"]) == 0
    assert [r["epoch"] for r in read_csv(run / "logs" / "mdnrnn.csv")] == [1, 2]

    # The same two epochs without a break give the same weights and optimizer state.
    straight = tmp_path / "straight"
    shutil.copytree(encoded_run, straight)
    train_mdnrnn(straight, MDNRNNConfig(**{**vars(TINY), "epochs": 2}), progress=False)
    a, pa = checkpoint.load_model(run / "mdnrnn.pt", MDNRNN, MDNRNNConfig)
    b, pb = checkpoint.load_model(straight / "mdnrnn.pt", MDNRNN, MDNRNNConfig)
    assert pa["epoch"] == pb["epoch"] == 2 and pa["step"] == pb["step"]
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(wa, wb), name
    sa, sb = pa["optimizer"]["state"], pb["optimizer"]["state"]
    assert all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)


def test_a_cosine_learning_rate_decays_per_epoch_and_a_bad_schedule_is_refused(
        encoded_run, tmp_path, capsys):
    cosine = MDNRNNConfig(**{**vars(TINY), "epochs": 4, "lr_schedule": "cosine"})
    assert [epoch_learning_rate(cosine, e) / cosine.learning_rate for e in range(4)] == \
        pytest.approx([1.0, 0.5 + 0.5 ** 1.5, 0.5, 0.5 - 0.5 ** 1.5])
    assert epoch_learning_rate(TINY, 3) == TINY.learning_rate  # constant: unchanged

    runs = {}
    for schedule in ("constant", "cosine"):
        runs[schedule] = _copy_run(encoded_run, tmp_path / schedule, MDNRNNConfig(
            **{**vars(TINY), "epochs": 2, "lr_schedule": schedule}))
        assert main(["train-mdnrnn", "--run", str(runs[schedule])]) == 0
    rates = [r["learning_rate"] for r in read_csv(runs["cosine"] / "logs" / "mdnrnn.csv")]
    assert rates == pytest.approx([TINY.learning_rate, TINY.learning_rate / 2])
    weights = [checkpoint.load_model(runs[s] / "mdnrnn.pt", MDNRNN, MDNRNNConfig)[0]
               for s in runs]
    assert not torch.equal(*(w.done.weight for w in weights))  # the second epoch differs

    bad = _copy_run(encoded_run, tmp_path / "bad", MDNRNNConfig(**{**vars(TINY),
                                                                    "lr_schedule": "cosin"}))
    assert main(["train-mdnrnn", "--run", str(bad)]) == 2
    line = _one_error_line(capsys)
    assert "config.json: mdnrnn.lr_schedule must be one of constant, cosine" in line
    assert not (bad / "mdnrnn.pt").exists()
    # A config built in code, not read from a file, is refused before training too.
    with pytest.raises(UserError, match="mdnrnn.lr_schedule must be one of constant, cosine"):
        train_mdnrnn(bad, MDNRNNConfig(**{**vars(TINY), "lr_schedule": "cosin"}),
                     progress=False)
    assert not (bad / "mdnrnn.pt").exists()


def test_a_cosine_run_killed_after_an_epoch_resumes_at_the_unbroken_runs_rates(
        encoded_run, tmp_path, monkeypatch):
    config = MDNRNNConfig(**{**vars(TINY), "epochs": 3, "lr_schedule": "cosine"})
    straight = _copy_run(encoded_run, tmp_path / "straight", config)
    train_mdnrnn(straight, config, progress=False)

    killed = _copy_run(encoded_run, tmp_path / "killed", config)
    save = checkpoint.save

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt  # right after epoch 1's checkpoint

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_mdnrnn(killed, config, progress=False)
    monkeypatch.setattr(checkpoint, "save", save)
    train_mdnrnn(killed, config, resume=True, progress=False)

    rates = [[r["learning_rate"] for r in read_csv(run / "logs" / "mdnrnn.csv")]
             for run in (straight, killed)]
    assert rates[0] == rates[1] == pytest.approx([1e-3, 7.5e-4, 2.5e-4])
    a = checkpoint.load_model(straight / "mdnrnn.pt", MDNRNN, MDNRNNConfig)[0]
    b = checkpoint.load_model(killed / "mdnrnn.pt", MDNRNN, MDNRNNConfig)[0]
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(wa, wb), name


def test_bad_input_is_one_line_and_exit_2(encoded_run, tmp_path, capsys):
    assert main(["train-mdnrnn", "--run", str(tmp_path / "nothing")]) == 2
    assert "train-vae" in _one_error_line(capsys)
    assert not (tmp_path / "nothing").exists()

    run = _copy_run(encoded_run, tmp_path, MDNRNNConfig(**vars(TINY)))
    shutil.rmtree(run / "latents")
    assert main(["train-mdnrnn", "--run", str(run)]) == 2
    assert "encode" in _one_error_line(capsys)

    # An M checkpoint whose config disagrees with its weights: both sizes named on --resume.
    shutil.rmtree(run)
    run = _copy_run(encoded_run, tmp_path, MDNRNNConfig(**vars(TINY)))
    assert main(["train-mdnrnn", "--run", str(run), "--epochs", "1"]) == 0
    spec = load_json(run / "mdnrnn.json")
    save_json({**spec, "hidden_size": 48}, run / "mdnrnn.json")
    assert main(["train-mdnrnn", "--run", str(run), "--epochs", "2", "--resume"]) == 2
    line = _one_error_line(capsys)
    assert "(128, 35)" in line and "(192, 35)" in line  # 4 gates x 32 vs 4 x 48

    # Another dropout or window setting than the checkpoint's, or a dropout out of range.
    save_json(spec, run / "mdnrnn.json")
    for flags, named in ((["--dropout", "0.1"], "dropout 0.0"), (["--seq-len", "8"], "seq_len"),
                         (["--no-carry-state"], "carry_state"),
                         (["--mixture", "joint"], "mixture")):
        assert main(["train-mdnrnn", "--run", str(run), "--epochs", "2", "--resume",
                     *flags]) == 2
        assert named in _one_error_line(capsys)
    assert main(["train-mdnrnn", "--run", str(run), "--dropout", "1.0", "--resume"]) == 2
    assert "[0, 1)" in _one_error_line(capsys)


def test_m_with_a_joint_mixture_trains_and_dreams(encoded_run, tmp_path):
    run = _copy_run(encoded_run, tmp_path, MDNRNNConfig(**vars(TINY)))
    assert main(["train-mdnrnn", "--run", str(run), "--epochs", "2", "--mixture", "joint"]) == 0
    rows = read_csv(run / "logs" / "mdnrnn.csv")
    assert all(np.isfinite(row["valid_z_nll"]) for row in rows)
    world = WorldModel.from_run(run)
    assert world.mdnrnn().config.mixture == "joint"
    dream = BatchedDream(world.mdnrnn(), world.starts(), max_steps=20)
    assert np.isfinite(dream.rollout(np.zeros((2, world.param_count)), [0, 1])).all()


def test_training_with_dropout_and_carried_state_runs_and_resumes_exactly(encoded_run,
                                                                         tmp_path):
    config = MDNRNNConfig(**{**vars(TINY), "dropout": 0.1, "epochs": 2})
    run = _copy_run(encoded_run, tmp_path, config)
    train_mdnrnn(run, MDNRNNConfig(**{**vars(config), "epochs": 1}), progress=False)
    train_mdnrnn(run, config, resume=True, progress=False)
    straight = tmp_path / "straight"
    shutil.copytree(encoded_run, straight)
    train_mdnrnn(straight, config, progress=False)
    a, _ = checkpoint.load_model(run / "mdnrnn.pt", MDNRNN, MDNRNNConfig)
    b, _ = checkpoint.load_model(straight / "mdnrnn.pt", MDNRNN, MDNRNNConfig)
    assert a.config.dropout == 0.1 and a.config.carry_state
    for wa, wb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(wa, wb)


def test_a_damaged_latents_file_is_skipped_with_a_warning(encoded_run, tmp_path):
    run = _copy_run(encoded_run, tmp_path, MDNRNNConfig(**vars(TINY)))
    damaged = list_latents(RunPaths(run).latents)[0]
    damaged.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.warns(UserWarning, match=damaged.name):
        train_mdnrnn(run, MDNRNNConfig(**vars(TINY)), progress=False)
    assert (run / "mdnrnn.pt").exists()


def test_an_m_built_in_code_checks_its_config():
    # The model's own guard is the configs' bounds check: a rate of 1 would drop everything.
    with pytest.raises(UserError, match=r"mdnrnn.dropout must be a finite number in \[0, 1\)"):
        MDNRNN(MDNRNNConfig(dropout=1.0))
    with pytest.raises(UserError, match="mdnrnn.hidden_size must be > 0, got 0"):
        MDNRNN(MDNRNNConfig(hidden_size=0))
