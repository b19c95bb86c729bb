"""One dataclass per stage, and named presets that fill them all in.

A run directory keeps the config it was made with (`config.json`); every stage reads
its own section from there, so a run is reproducible from its directory alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from worldmodels import atomic
from worldmodels.errors import UserError, warn

# The values of the configs' choice fields, refused by name when a config is read.
MIXTURES = ("factorised", "joint")
LR_SCHEDULES = ("constant", "cosine")
EVOLVE_IN = ("dream", "real")
DONE_RULES = ("threshold", "likely", "sample")
CHOOSE_BY = ("check", "episodes")  # how iterate picks the run's agent among its snapshots
REAL_Z = ("sample", "mean")  # what C reads as z from a real frame


def choice(default: str, names: tuple[str, ...]) -> Any:
    """A string field that takes one of `names` (checked by `from_dict` and `check_fields`)."""
    return field(default=default, metadata={"choices": names})


def bounded(default: float, low: float, high: float = math.inf, high_open: bool = False,
            low_open: bool = False) -> Any:
    """A number field that must lie in [low, high] (an end left out when `*_open`), checked
    with the choices, so a pipeline refuses a bad value before its first stage, not when the
    stage that uses it starts an hour later."""
    return field(default=default, metadata={"bounds": (low, high, low_open, high_open)})


def positive(default: float) -> Any:
    return bounded(default, 0, low_open=True)


def non_negative(default: float) -> Any:
    return bounded(default, 0)


Z_SIZE = 32
ACTION_SIZE = 3

# One collection's block of seeds: run seed S collects from 10,000 S (below 1,000,000, where
# the evaluation seeds start), iterate's iteration k plays AGENT_SEED + 10,000 k + j, and
# the held-out split (data.rollouts.split_holdout) is made per block.
SEED_BLOCK = 10_000


@dataclass
class CollectConfig:
    episodes: int = positive(10)
    """Number of episodes to collect (one .npz file each)."""
    max_steps: int = positive(1000)
    """Steps per episode at most (CarRacing itself truncates at 1000)."""
    policy: str = "brownian"
    """Data policy: `random` (uniform actions) or `brownian` (smoothly varying actions)."""
    seed: int = non_negative(0)
    """Episode i uses seed `seed + i`, for the track and for the policy."""
    workers: int = non_negative(2)
    """Ray workers; 0 runs in-process without Ray."""


@dataclass
class VAEConfig:
    z_size: int = positive(Z_SIZE)
    """Size of the latent z."""
    kl_tolerance: float = non_negative(0.5)
    """Free bits: the KL term is max(KL, kl_tolerance * z_size)."""
    epochs: int = positive(10)
    batch_size: int = positive(100)
    learning_rate: float = positive(1e-4)
    shuffle_buffer: int = positive(10_000)
    """Frames held in the streaming shuffle buffer (memory does not grow with data)."""
    holdout_episodes: float = bounded(0.1, 0, 1, high_open=True)
    """Fraction of each collection's episodes held out for validation (at least one episode
    when there are two or more; data.rollouts.split_holdout)."""
    max_frames_per_epoch: int = non_negative(0)
    """Stop an epoch after this many frames; 0 means all of them."""
    seed: int = non_negative(0)


@dataclass
class MDNRNNConfig:
    z_size: int = positive(Z_SIZE)
    action_size: int = positive(ACTION_SIZE)
    hidden_size: int = positive(256)
    """LSTM units."""
    gaussians: int = positive(5)
    """Mixture components (per latent dimension when factorised)."""
    mixture: str = choice("factorised", MIXTURES)
    """The head for z_{t+1}: `factorised` (the paper: each dimension its own mixture, picked
    independently) or `joint` (K diagonal Gaussians over all of z, one pick per step)."""
    epochs: int = positive(20)
    seq_len: int = positive(100)
    """Steps per window of truncated backpropagation."""
    carry_state: bool = True
    """Long-horizon training: each batch row walks its episodes window after window from
    step 0, carrying the (detached) LSTM state across windows, so M learns h as the dream
    sees it at step 500. False: independent windows from h = 0 at random places."""
    dropout: float = bounded(0.0, 0, 1, high_open=True)
    """Variational dropout on the LSTM's input and recurrent state, in training and in the
    dream (one mask per dream rollout); 0 turns it off."""
    batch_size: int = positive(32)
    learning_rate: float = positive(1e-3)
    lr_schedule: str = choice("constant", LR_SCHEDULES)
    """`constant`, or `cosine`: epoch e of E trains at learning_rate * (1 + cos(pi e / E)) / 2,
    so M ends after steps at a small rate, not wherever its last full-rate steps took it."""
    grad_clip: float = positive(1.0)
    reward_weight: float = non_negative(1.0)
    """Weight of the reward regression loss next to the z NLL."""
    done_weight: float = non_negative(1.0)
    """Weight of the done loss next to the z NLL."""
    done_pos_weight: float = non_negative(0.0)
    """BCE weight of positive (done) steps; 0 derives it from the data (negatives / positives)."""
    holdout_episodes: float = bounded(0.1, 0, 1, high_open=True)
    """As VAEConfig's: held out alike from the first rollouts and from each iteration's episodes."""
    seed: int = non_negative(0)


@dataclass
class EvolveConfig:
    where: str = choice("dream", EVOLVE_IN)
    """Evaluate candidates in the `dream` (M) or in the `real` env."""
    generations: int = positive(100)
    popsize: int = bounded(64, 2)
    rollouts: int = positive(16)
    """Rollouts per candidate; fitness is their mean return."""
    sigma0: float = positive(0.1)
    sees_cell: bool = False
    """C reads M's cell state c as well as [z, h], as the paper's Take Cover agent did."""
    real_z: str = choice("sample", REAL_Z)
    """What the agent takes as z from a real frame, for C and M alike: a `sample` of V's
    posterior (the paper) or its `mean`. Most of a Take Cover V's dimensions are near-prior
    noise (posterior std 0.7 to 0.9 against means spread 0.1 to 0.5), which a sample passes
    to C (README). The dream is unchanged: M's own z."""
    tau: float = positive(1.15)
    """Dream temperature."""
    done: str = choice("threshold", DONE_RULES)
    """How a dream obeys M's done head: `threshold` (ends where the class-weighted head says
    more likely than not), `likely` (where its calibrated probability does) or `sample` (a
    coin of the calibrated probability each step)."""
    max_steps: int = positive(1000)
    """Steps per rollout at most."""
    workers: int = non_negative(2)
    """Ray actors; 0 evaluates serially in-process."""
    envs_per_worker: int = positive(8)
    """Real CarRacing envs each worker steps together (V, M and C batched over them)."""
    real_eval_every: int = non_negative(10)
    """Every N generations (and after the last) the CMA-ES mean is scored in the real env on
    selection seeds; the agent is the mean with the best such check (0: never; the last mean)."""
    real_eval_episodes: int = positive(8)
    real_eval_max_steps: int = positive(1000)
    """Steps per real check episode: the full length, where the evaluation is."""
    seed: int = non_negative(0)


@dataclass
class EvaluateConfig:
    episodes: int = positive(100)
    seed: int = non_negative(1_000_000)
    """Evaluation seeds start here, away from the collection seeds."""
    max_steps: int = positive(1000)
    workers: int = non_negative(2)
    """Ray actors; 0 runs the episodes in-process."""
    envs_per_worker: int = positive(8)
    """Real CarRacing envs each worker steps together (V, M and C batched over them)."""
    random_episodes: int = non_negative(0)
    """Episodes of the random-policy baseline in `pipeline` (0: as many as the agent's); it
    barely varies, so a preset may spend fewer on it."""


@dataclass
class IterateConfig:
    iterations: int = non_negative(0)
    """Rounds of iterative training after the first evolution (0: none)."""
    episodes: int = bounded(100, 1, SEED_BLOCK)
    """Real episodes the agent plays per iteration (new data for M; an iteration's seeds stay
    in its own block)."""
    max_steps: int = positive(1000)
    """Steps per collected episode: the full length, so M learns the second half too."""
    noise: float = non_negative(0.1)
    """Std of the Gaussian noise added to C's parameters in an exploring episode."""
    noisy_fraction: float = bounded(0.5, 0, 1)
    """Fraction of each iteration's episodes played with noise (the rest with C itself)."""
    mdnrnn_epochs: int = non_negative(30)
    """More epochs of M per iteration, on all the data."""
    generations: int = non_negative(40)
    """More generations of CMA-ES per iteration, in the new dream."""
    real_eval_every: int = non_negative(0)
    """Every N generations of an iteration's evolution its mean plays a real check (0: as often
    as in the first evolution, evolve.real_eval_every; never where it had none)."""
    choose: str = choice("check", CHOOSE_BY)
    """Which snapshot is the run's agent when the rounds are done: `check` (the best real
    check; the last where none was checked) or `episodes` (the best mean real return over its
    noiseless episodes: those of the round after it; the last plays the next round's first).
    Only without real checks."""
    finalists: int = non_negative(0)
    """With `choose` episodes: the best N snapshots by their round's noiseless episodes play
    `finalist_episodes` more, the same for each (selection seeds 2,000,000+), and the best of
    those is chosen; the ratchet's choice too (0 or 1: the round episodes alone)."""
    finalist_episodes: int = bounded(200, 1, SEED_BLOCK)
    """Noiseless real episodes each finalist plays (once: kept in its snapshot)."""
    ratchet: bool = False
    """With `choose` episodes: each round starts from the snapshot its noiseless episodes
    rank best so far (the last one's played first), not the last; its exploring episodes and
    restarted CMA-ES go around that C, in the latest M's dream."""
    restart: bool = True
    """Each iteration restarts CMA-ES around the run's agent with sigma0 (False: continue its
    state, whose mean may have drifted from the agent the real checks chose; README)."""
    workers: int = non_negative(2)
    """Ray workers that play the episodes; 0 runs in-process without Ray."""
    envs_per_worker: int = positive(8)
    """CarRacing envs each worker steps together (V, M and C run on all their frames)."""


@dataclass
class PipelineConfig:
    preset: str = "small"
    env: str = "carracing"
    """The game the agent learns (`--env`): carracing or doom-takecover."""
    seed: int = 0
    """The run's seed (`pipeline --seed`): every stage's seed derives from it (`with_seed`)."""
    run_id: str = ""
    """Drawn when the run's config.json is first written, so files the run leaves in a shared
    data directory say whose they are ("": a run made before run ids)."""
    collect: CollectConfig = field(default_factory=CollectConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    mdnrnn: MDNRNNConfig = field(default_factory=MDNRNNConfig)
    evolve: EvolveConfig = field(default_factory=EvolveConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    iterate: IterateConfig = field(default_factory=IterateConfig)


def _preset_tiny() -> PipelineConfig:
    # End to end in a few minutes on 2 cores: enough to exercise every stage, not to drive.
    return PipelineConfig(
        preset="tiny",
        collect=CollectConfig(episodes=4, max_steps=100, workers=2),
        vae=VAEConfig(epochs=1, batch_size=32, max_frames_per_epoch=256),
        mdnrnn=MDNRNNConfig(hidden_size=64, epochs=2, seq_len=32, batch_size=8),
        evolve=EvolveConfig(
            generations=3, popsize=6, rollouts=2, max_steps=100, workers=2,
            real_eval_every=3, real_eval_episodes=1, real_eval_max_steps=100,
        ),
        evaluate=EvaluateConfig(episodes=2, max_steps=150, workers=2, random_episodes=1),
        iterate=IterateConfig(iterations=1, episodes=2, max_steps=100, mdnrnn_epochs=1,
                              generations=1, workers=2),
    )


def _preset_small() -> PipelineConfig:
    # The best agent measured on a 2-core machine, in about 85 minutes (README): random-walk
    # data, a first evolution, then five rounds of the agent improving its own world model,
    # each from the best agent so far (ten rounds that built on the latest agent, 68 min,
    # scored no better than three).
    return PipelineConfig(
        preset="small",
        collect=CollectConfig(episodes=200, max_steps=500, workers=2),
        vae=VAEConfig(epochs=3, batch_size=64, learning_rate=3e-4, max_frames_per_epoch=30_000),
        # An epoch of M is only ~60 steps of batch 16 x 100 (~5 s): give it thousands.
        mdnrnn=MDNRNNConfig(epochs=60, seq_len=100, batch_size=16),
        evolve=EvolveConfig(
            # Dream rollouts are cheap (~50k steps/s per core): a bigger population and more
            # rollouts per candidate cost ~3 s per generation and make the fitness less noisy.
            # tau 1.5 makes the dream harder to exploit (README). The real checks, not the
            # dream fitness, choose the agent: C soon learns M's mistakes. 32 episodes per
            # check, not 8: the agent's check then predicts its evaluation (8 overstated it by
            # up to 164); the mean over two seeds stayed about the same (README).
            generations=20, popsize=32, rollouts=16, tau=1.5, max_steps=500, workers=2,
            real_eval_every=10, real_eval_episodes=32,
        ),
        evaluate=EvaluateConfig(episodes=100, max_steps=1000, workers=2, random_episodes=20),
        # Each round: 40 real episodes of the agent (half with noise on C), M 20 more epochs
        # on all the data, CMA-ES 10 more generations in the new dream (restarted around the
        # best agent so far) and a real check.
        iterate=IterateConfig(iterations=5, episodes=40, max_steps=1000, mdnrnn_epochs=20,
                              generations=10, workers=2),
    )


def _preset_medium() -> PipelineConfig:
    # For 16-32 cores or a small Ray cluster (`--address auto`): about 1 M frames of
    # random-walk data, then four rounds of iterative training (README: expected wall time
    # from the stage speeds measured here; not run here).
    return PipelineConfig(
        preset="medium",
        collect=CollectConfig(episodes=1000, max_steps=1000, workers=16),
        vae=VAEConfig(epochs=5, batch_size=100, learning_rate=3e-4, max_frames_per_epoch=200_000),
        mdnrnn=MDNRNNConfig(epochs=20, seq_len=100, batch_size=64),
        evolve=EvolveConfig(
            generations=40, popsize=64, rollouts=16, tau=1.5, max_steps=1000, workers=16,
            real_eval_every=10, real_eval_episodes=32,  # as small's: checks that predict
        ),
        evaluate=EvaluateConfig(episodes=100, max_steps=1000, workers=16),
        iterate=IterateConfig(iterations=4, episodes=256, max_steps=1000, mdnrnn_epochs=5,
                              generations=20, workers=16),
    )


def _preset_paper() -> PipelineConfig:
    # The paper's sizes: for a cluster (`--address auto`) or a GPU machine.
    return PipelineConfig(
        preset="paper",
        collect=CollectConfig(episodes=10_000, max_steps=1000, policy="brownian", workers=64),
        vae=VAEConfig(epochs=10, batch_size=100),
        mdnrnn=MDNRNNConfig(epochs=20, seq_len=100, batch_size=100),
        evolve=EvolveConfig(
            generations=2000, popsize=64, rollouts=16, max_steps=1000, workers=64,
            real_eval_every=25, real_eval_episodes=16,
        ),
        evaluate=EvaluateConfig(episodes=100, max_steps=1000, workers=64),
    )


def _doom(preset_name: str, collect: CollectConfig, vae: VAEConfig, mdnrnn: MDNRNNConfig,
          evolve: EvolveConfig, evaluate: EvaluateConfig,
          iterate: IterateConfig | None = None) -> PipelineConfig:
    # The paper's Take Cover model: z 64, LSTM 512, 5 Gaussians; one action. Evolution only
    # in the dream (no real checks: real_eval_every 0), in iterations too (iterate's 0 follows
    # evolve's): the agent's real episodes only teach M.
    vae.z_size = mdnrnn.z_size = 64
    mdnrnn.action_size = 1
    evolve.real_eval_every = 0
    return PipelineConfig(preset=preset_name, env="doom-takecover", collect=collect, vae=vae,
                          mdnrnn=mdnrnn, evolve=evolve, evaluate=evaluate,
                          iterate=iterate or IterateConfig())


def _preset_doom_tiny() -> PipelineConfig:
    # Every stage on the real VizDoom in about a minute (the end-to-end test).
    return _doom(
        "doom-tiny",
        CollectConfig(episodes=4, max_steps=100, policy="random", workers=2),
        VAEConfig(epochs=1, batch_size=32, max_frames_per_epoch=256),
        MDNRNNConfig(hidden_size=64, epochs=2, seq_len=32, batch_size=8),
        EvolveConfig(generations=2, popsize=6, rollouts=2, done="sample", max_steps=100,
                     real_z="mean", workers=2),
        EvaluateConfig(episodes=2, max_steps=150, workers=2),
        IterateConfig(iterations=1, episodes=2, max_steps=100, mdnrnn_epochs=1, generations=1,
                      choose="episodes", finalists=2, finalist_episodes=2, ratchet=True,
                      workers=2),
    )


def _preset_doom_small() -> PipelineConfig:
    # Take Cover at one tic a step, trained only in the dream: 97 and 101 minutes for two
    # seeds side by side (README). doom-skip8 (below) makes better agents in about 150 minutes.
    return _doom(
        "doom-small",
        # 600 random episodes (~130k frames) and V 5 epochs: with 300 and 2, V's held-out
        # reconstruction error was still falling fast and it blurred the fireballs. From empty
        # directories, 2,000 episodes scored no better, nor did the paper's repeat policy
        # (with the cosine-decayed M below).
        CollectConfig(episodes=600, max_steps=2100, policy="random", workers=2),
        VAEConfig(epochs=5, batch_size=64, learning_rate=3e-4, max_frames_per_epoch=30_000),
        # One mixture pick for all of z: the paper's per-dimension picks grew fireballs from
        # nothing (seed 0) or never assembled one (seed 1); joint beat it on both (README).
        # 20 epochs at a constant rate, deaths weighted negatives / positives (~220). The
        # paper's weight of 10 with 40 cosine-decayed epochs made the dream faithful to the
        # data policy on both seeds, but its agents scored below random play (README).
        MDNRNNConfig(hidden_size=512, epochs=20, seq_len=100, batch_size=16, mixture="joint"),
        # Death is a coin in the dream, as in the game: thresholding the class-weighted done
        # head killed a standing player after 42 dream steps against 143 real ones (README).
        EvolveConfig(generations=40, popsize=32, rollouts=16, tau=1.15, done="sample",
                     max_steps=1000, workers=2),
        EvaluateConfig(episodes=100, max_steps=2100, workers=2),
        # Then six rounds of the agent's own episodes for M, C still only in the dream: 200
        # real episodes of the latest C (half with noise), M 10 more epochs on all the data,
        # CMA-ES 20 more generations around that C. Four rounds beat the first evolution on
        # both seeds (README); the fifth agents then lived longer than the fourth on the
        # rounds' own episodes (seeds 5,000,000+, never evaluated), so six: +170 and +75
        # over the first evolution, paired (README).
        IterateConfig(iterations=6, episodes=200, max_steps=2100, mdnrnn_epochs=10,
                      generations=20, workers=2),
    )


def _doom_skipping(skip: int) -> PipelineConfig:
    # doom-small's recipe on `doom-takecover-skip{skip}`, where C's action holds for `skip`
    # tics: its step limits, in tics, become steps of `skip` tics (the game's 2,100 tics:
    # 2100 // skip steps), 1 / skip of the steps for M and the dream.
    config = _preset_doom_small()
    config.preset, config.env = f"doom-skip{skip}", f"doom-takecover-skip{skip}"
    for section in (config.collect, config.evolve, config.evaluate, config.iterate):
        section.max_steps //= skip
    return config


def _preset_doom_skip4() -> PipelineConfig:
    # Per tic M barely uses the action (negating it costs 0.6 nats a step of 25.6, against 4.8
    # at 4 tics), so its dream rewarded no dodging. On copied V files this scored 608 and 415
    # on 50 comparison episodes against doom-small's 384 and 302; from empty directories 284
    # and 455 against 351 and 268 (README).
    return _doom_skipping(4)


def _preset_doom_skip8() -> PipelineConfig:
    # Moves held twice as long: the better skip4 agent held a move for about 12 tics. Twice
    # the random episodes, for about as many frames (steps) for V and M as doom-skip4 has
    # (49,000 against 44,000). Without dropout, from empty directories, 388 and 439 against
    # doom-skip4's 284 and 455 (README).
    config = _doom_skipping(8)
    config.collect.episodes *= 2
    # Dropout dreams: on the same data and V, four trainings with dropout against two
    # without: paired +92, -31 (from empty directories: 480 and 408) and +43, +163 (README).
    config.mdnrnn.dropout = 0.05
    # Fourteen rounds, not six: on 1,000 episodes of seeds 3,000,000+ (not evaluation
    # seeds) the agents after fourteen beat those after ten by 160 and 43, paired, and
    # sixteen did not beat fourteen (-54 and -2) (README). Rounds grow with the data: 12
    # minutes by then.
    config.iterate.iterations = 14
    # The run's agent: the snapshot whose 100 noiseless round episodes (seeds 5,000,000+)
    # lived longest, not the last. Agents swing by 100 to 200 tics from round to round; the
    # 100 episodes rank them almost as 1,000 do (README).
    config.iterate.choose = "episodes"
    # The best three of those replay 300 more episodes each (seeds 2,000,000+): 100 could not
    # split two agents 1.5 tics apart, and chose one 107 worse on the evaluation episodes;
    # the 300 split them by 92 +- 30 and chose the better (README).
    config.iterate.finalists, config.iterate.finalist_episodes = 3, 300
    # The agent reads V's mean from a real frame, not a sample: six agents of two runs lived
    # 19 to 116 tics longer so, 77 +- 11 on average, paired over 300 selection episodes each
    # (README).
    config.evolve.real_z = "mean"
    # Each round starts from the best snapshot so far, not the last: without it the agents
    # drift down as often as up (seed 3: 524 tics at round 7, 365 at 13). On seed 0, against
    # the same run without it, both read with V's mean, the finalists' choice lived 86 +- 33
    # tics longer over their 300 selection episodes (183 +- 31 sampling); level on the
    # evaluation episodes (README).
    config.iterate.ratchet = True
    return config


def generations_through(evolve: EvolveConfig, iterate: IterateConfig, iteration: int) -> int:
    """CMA-ES generations done once `iteration` iterations have evolved (0: the first
    evolution alone); generations keep counting across iterations."""
    return evolve.generations + iteration * iterate.generations


def with_seed(config: PipelineConfig, seed: int) -> PipelineConfig:
    """`config` for run seed `seed`: its own collection seeds, V and M initialisation and
    shuffling, and CMA-ES; the evaluation seeds stay the same, so runs are compared on the
    same real episodes."""
    if not 0 <= seed < 1_000_000 // SEED_BLOCK:
        raise UserError(f"--seed must be in [0, {1_000_000 // SEED_BLOCK}), got {seed}")
    config.seed = seed
    config.collect.seed = SEED_BLOCK * seed
    config.vae.seed = config.mdnrnn.seed = config.evolve.seed = seed
    return config


PRESETS = {"tiny": _preset_tiny, "small": _preset_small, "medium": _preset_medium,
           "paper": _preset_paper, "doom-tiny": _preset_doom_tiny,
           "doom-small": _preset_doom_small, "doom-skip4": _preset_doom_skip4,
           "doom-skip8": _preset_doom_skip8}


DEFAULT_PRESET = {"carracing": "small", "doom-takecover": "doom-small",  # by --env
                  "doom-takecover-skip4": "doom-skip4", "doom-takecover-skip8": "doom-skip8"}


def preset_for(name: str | None, env: str | None) -> str:
    """The preset `--preset name --env env` asks for (either may be left out); one line if
    the preset is for another game."""
    name = name or DEFAULT_PRESET.get(env or "carracing", "small")
    made_for = preset(name).env
    if env is not None and env != made_for:
        raise UserError(f"--preset {name} is for --env {made_for}, not {env}; the "
                        f"{env} presets: {', '.join(n for n in PRESETS if preset(n).env == env)}")
    return name


def preset(name: str) -> PipelineConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


T = TypeVar("T")


def from_dict(cls: type[T], data: Any, source: str | None = None, _prefix: str = "") -> T:
    """Build a (nested) config dataclass from a dict, refusing unknown keys and values of
    the wrong type or outside a field's choices or bounds by name (`source` names the file:
    `config.json: mdnrnn.epochs must be an int, got "ten"`). Checked against the dataclass
    fields, so new fields are covered."""
    source = source or cls.__name__
    where = _prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        raise UserError(f"{source}: {where} must be an object, got {_shown(data)}")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(known)
    if unknown:
        raise UserError(f"{source}: unknown config keys {sorted(_prefix + k for k in unknown)} "
                        f"(not fields of {cls.__name__})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = from_dict(kind, value, source, f"{_prefix}{name}.")
        else:
            kwargs[name] = _checked_value(kind, value, source, _prefix + name)
            _check_field(known[name], kwargs[name], source, _prefix + name)
    return cls(**kwargs)


def check_fields(config: Any, source: str, section: str) -> None:
    """Refuse a field of `config` (a stage's config, also one built in code or changed by a
    flag) outside its choices or bounds, as `from_dict` does for a file."""
    for f in fields(config):
        _check_field(f, getattr(config, f.name), source, f"{section}.{f.name}")


def _check_field(f: dataclasses.Field, value: Any, source: str, key: str) -> None:
    names = f.metadata.get("choices")
    if names is not None and value not in names:
        raise UserError(f"{source}: {key} must be one of {', '.join(names)}, got {_shown(value)}")
    bounds = f.metadata.get("bounds")
    if bounds is None:
        return
    low, high, low_open, high_open = bounds
    if math.isfinite(value) and (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high):
        return
    if high == math.inf:
        allowed = f"{'>' if low_open else '>='} {low:g}"
    else:
        allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    finite = "a finite number " if isinstance(value, float) else ""
    raise UserError(f"{source}: {key} must be {finite}{allowed}, got {_shown(value)}")


def with_settings(config: PipelineConfig, settings: list[str]) -> PipelineConfig:
    """`config` with `section.field=value` settings (`pipeline --set`) applied, each value
    read as JSON (10, 1.5, true) or else as a plain string (joint), and checked by key
    and type as config.json is. The run's own keys (preset, env, seed) have flags."""
    data = asdict(config)
    for setting in settings:
        (section, name), (_, equals, text) = setting_key(setting), setting.partition("=")
        if not (equals and name and isinstance(data.get(section), dict)):
            stages = ", ".join(k for k, v in data.items() if isinstance(v, dict))
            raise UserError(f"--set {setting}: expected SECTION.FIELD=VALUE with SECTION one "
                            f"of {stages}")
        if name not in data[section]:
            raise UserError(f"--set {setting}: {section} has no field {name!r}")
        try:
            data[section][name] = json.loads(text)
        except json.JSONDecodeError:
            data[section][name] = text
    return from_dict(PipelineConfig, data, "--set")


def setting_key(setting: str) -> tuple[str, str]:
    """(section, field) of a `section.field=value` setting."""
    section, _, name = setting.partition("=")[0].partition(".")
    return section, name


def _checked_value(kind: Any, value: Any, source: str, key: str) -> Any:
    """`value` if it is a `kind` (bool, int, float or str; other types pass unchecked)."""
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool)
                          and math.isfinite(v)),
        str: lambda v: isinstance(v, str),
    }.get(kind)
    if ok is not None and not ok(value):
        what = {bool: "true or false", int: "an int", float: "a finite number",
                str: "a string"}[kind]
        raise UserError(f"{source}: {key} must be {what}, got {_shown(value)}")
    return float(value) if kind is float else value


def _shown(value: Any) -> str:
    return json.dumps(value)[:60] if not isinstance(value, float) else repr(value)


def warn_ignored_on_resume(stage: str, given: Any, saved: Any,
                           keep: tuple[str, ...] = ("epochs",)) -> None:
    """A resumed stage trains on with its checkpoint's config (only `keep` may change): say
    which requested values (flags or config.json) differ and are therefore ignored."""
    changed = [f"{f.name} {getattr(saved, f.name)!r} (not {getattr(given, f.name)!r})"
               for f in fields(saved)
               if f.name not in keep and getattr(given, f.name) != getattr(saved, f.name)]
    if changed:
        warn(f"{stage} --resume keeps the checkpoint's settings: {', '.join(changed)}")


def save_json(obj: Any, path: Path) -> None:
    """Write a dataclass (or dict) as JSON atomically."""
    data = asdict(obj) if dataclasses.is_dataclass(obj) else obj
    atomic.write_text(Path(path), json.dumps(data, indent=2) + "\n")


def load_json(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
