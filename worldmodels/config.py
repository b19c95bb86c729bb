"""One dataclass per stage, and named presets that fill them all in.

A run directory keeps the config it was made with (`config.json`); every stage reads
its own section from there, so a run is reproducible from its directory alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from worldmodels import atomic
from worldmodels.errors import UserError

Z_SIZE = 32
ACTION_SIZE = 3


@dataclass
class CollectConfig:
    episodes: int = 10
    """Number of episodes to collect (one .npz file each)."""
    max_steps: int = 1000
    """Steps per episode at most (CarRacing itself truncates at 1000)."""
    policy: str = "brownian"
    """Data policy: `random` (uniform actions) or `brownian` (smoothly varying actions)."""
    seed: int = 0
    """Episode i uses seed `seed + i`, for the track and for the policy."""
    workers: int = 2
    """Ray workers; 0 runs in-process without Ray."""


@dataclass
class VAEConfig:
    z_size: int = Z_SIZE
    """Size of the latent z."""
    kl_tolerance: float = 0.5
    """Free bits: the KL term is max(KL, kl_tolerance * z_size)."""
    epochs: int = 10
    batch_size: int = 100
    learning_rate: float = 1e-4
    shuffle_buffer: int = 10_000
    """Frames held in the streaming shuffle buffer (memory does not grow with data)."""
    holdout_episodes: float = 0.1
    """Fraction of episodes (at least one when there are two or more) held out for validation."""
    max_frames_per_epoch: int = 0
    """Stop an epoch after this many frames; 0 means all of them."""
    seed: int = 0


@dataclass
class MDNRNNConfig:
    z_size: int = Z_SIZE
    action_size: int = ACTION_SIZE
    hidden_size: int = 256
    """LSTM units."""
    gaussians: int = 5
    """Mixture components per latent dimension."""
    epochs: int = 20
    seq_len: int = 100
    """Steps per window of truncated backpropagation."""
    carry_state: bool = True
    """Long-horizon training: each batch row walks its episodes window after window from
    step 0, carrying the (detached) LSTM state across windows, so M learns h as the dream
    sees it at step 500. False: independent windows from h = 0 at random places."""
    dropout: float = 0.0
    """Variational dropout on the LSTM's input and recurrent state, in training and in the
    dream (one mask per dream rollout); 0 turns it off."""
    batch_size: int = 32
    learning_rate: float = 1e-3
    grad_clip: float = 1.0
    reward_weight: float = 1.0
    """Weight of the reward regression loss next to the z NLL."""
    done_weight: float = 1.0
    """Weight of the done loss next to the z NLL."""
    done_pos_weight: float = 0.0
    """BCE weight of positive (done) steps; 0 derives it from the data (negatives / positives)."""
    holdout_episodes: float = 0.1
    seed: int = 0


@dataclass
class EvolveConfig:
    where: str = "dream"
    """Evaluate candidates in the `dream` (M) or in the `real` env."""
    generations: int = 100
    popsize: int = 64
    rollouts: int = 16
    """Rollouts per candidate; fitness is their mean return."""
    sigma0: float = 0.1
    tau: float = 1.15
    """Dream temperature."""
    max_steps: int = 1000
    """Steps per rollout at most."""
    workers: int = 2
    """Ray actors; 0 evaluates serially in-process."""
    envs_per_worker: int = 8
    """Real CarRacing envs each worker steps together (V, M and C batched over them)."""
    real_eval_every: int = 10
    """Every N generations the CMA-ES mean is also scored in the real env (0: never)."""
    real_eval_episodes: int = 4
    seed: int = 0


@dataclass
class EvaluateConfig:
    episodes: int = 100
    seed: int = 1_000_000
    """Evaluation seeds start here, away from the collection seeds."""
    max_steps: int = 1000
    workers: int = 2
    """Ray actors; 0 runs the episodes in-process."""
    envs_per_worker: int = 8
    """Real CarRacing envs each worker steps together (V, M and C batched over them)."""


@dataclass
class PipelineConfig:
    preset: str = "small"
    collect: CollectConfig = field(default_factory=CollectConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    mdnrnn: MDNRNNConfig = field(default_factory=MDNRNNConfig)
    evolve: EvolveConfig = field(default_factory=EvolveConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def _preset_tiny() -> PipelineConfig:
    # End to end in a few minutes on 2 cores: enough to exercise every stage, not to drive.
    return PipelineConfig(
        preset="tiny",
        collect=CollectConfig(episodes=4, max_steps=100, workers=2),
        vae=VAEConfig(epochs=1, batch_size=32, max_frames_per_epoch=256),
        mdnrnn=MDNRNNConfig(hidden_size=64, epochs=2, seq_len=32, batch_size=8),
        evolve=EvolveConfig(
            generations=3, popsize=6, rollouts=2, max_steps=100, workers=2,
            real_eval_every=3, real_eval_episodes=1,
        ),
        evaluate=EvaluateConfig(episodes=2, max_steps=150, workers=2),
    )


def _preset_small() -> PipelineConfig:
    # The best agent a 2-core machine makes in about an hour and a quarter (README).
    return PipelineConfig(
        preset="small",
        collect=CollectConfig(episodes=200, max_steps=500, workers=2),
        vae=VAEConfig(epochs=5, batch_size=64, learning_rate=3e-4, max_frames_per_epoch=30_000),
        # An epoch of M is only ~60 steps of batch 16 x 100 (~5 s): give it thousands.
        mdnrnn=MDNRNNConfig(epochs=60, seq_len=100, batch_size=16),
        evolve=EvolveConfig(
            # Dream rollouts are cheap (~50k steps/s per core): a bigger population and more
            # rollouts per candidate cost ~3 s per generation and make the fitness less noisy.
            # tau 1.5 makes the dream harder to exploit: 40 generations at 1.5 scored 200 in
            # the real env, 120 at 1.15 scored 88 (README).
            generations=40, popsize=32, rollouts=16, tau=1.5, max_steps=500, workers=2,
            real_eval_every=10, real_eval_episodes=4,
        ),
        evaluate=EvaluateConfig(episodes=100, max_steps=1000, workers=2),
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


PRESETS = {"tiny": _preset_tiny, "small": _preset_small, "paper": _preset_paper}


def preset(name: str) -> PipelineConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a (nested) config dataclass from a dict, rejecting unknown keys by name."""
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(known)
    if unknown:
        raise UserError(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        sub = _dataclass_type(cls, name)
        kwargs[name] = from_dict(sub, value) if sub is not None else value
    return cls(**kwargs)


def _dataclass_type(cls: type, name: str) -> type | None:
    hints = {"collect": CollectConfig, "vae": VAEConfig, "mdnrnn": MDNRNNConfig,
             "evolve": EvolveConfig, "evaluate": EvaluateConfig}
    return hints.get(name) if cls is PipelineConfig else None


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
