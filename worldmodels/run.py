"""Where things live in a run directory. Every stage reads what the stage before wrote here."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from pathlib import Path

from worldmodels.atomic import writable_dir
from worldmodels.config import (
    EvolveConfig,
    IterateConfig,
    PipelineConfig,
    from_dict,
    generations_through,
    load_json,
    save_json,
)
from worldmodels.env.games import GAMES
from worldmodels.errors import UserError


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def vae(self) -> Path:
        return self.root / "vae.pt"

    @property
    def latents(self) -> Path:
        return self.root / "latents"

    @property
    def dream_starts(self) -> Path:
        """V's (mu, logvar) of the first frames of up to 1,000 episodes (written by encode)."""
        return self.root / "dream_starts.npz"

    @property
    def mdnrnn(self) -> Path:
        return self.root / "mdnrnn.pt"

    @property
    def es_state(self) -> Path:
        return self.root / "es.pickle"

    @property
    def controller(self) -> Path:
        """The agent: the CMA-ES mean after the last generation (float32 .npy)."""
        return self.root / "controller.npy"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    def snapshot(self, iteration: int) -> Path:
        """Where iterate keeps the agent as it stood after `iteration` (0: the first evolution)."""
        return self.root / "iterations" / f"{iteration:02d}"

    def agent_file(self, name: str, iteration: int | None = None) -> Path:
        """RUN's agent file `name` (mdnrnn.pt, controller.npy), or snapshot `iteration`'s."""
        return self.root / name if iteration is None else self.snapshot(iteration) / name

    def writable(self) -> Path:
        """The run directory, made if missing; one line if it cannot be written (checked
        before a stage works, not when it saves its first file)."""
        return writable_dir(self.root, "--run")

    def require(self, path: Path, made_by: str) -> Path:
        """`path`, or a one-line error saying which command makes it."""
        if not path.exists():
            raise UserError(f"{path}: missing; run `worldmodels {made_by}` first")
        return path


def load_run_config(paths: RunPaths, default: PipelineConfig | None = None) -> PipelineConfig:
    """The run's saved config; if there is none yet, `default` (saved) or the `small` preset."""
    if paths.config.exists():
        config = from_dict(PipelineConfig, load_json(paths.config), str(paths.config))
        if config.env not in GAMES:
            raise UserError(f"{paths.config}: unknown env {config.env!r}; choose one of "
                            f"{', '.join(GAMES)}")
        return config
    config = dataclasses.replace(default or PipelineConfig(), run_id=uuid.uuid4().hex[:12])
    paths.writable()
    save_json(config, paths.config)
    return config


def snapshot_generation(paths: RunPaths, iteration: int, evolve: EvolveConfig,
                        iterate: IterateConfig) -> int:
    """CMA-ES's generations at snapshot `iteration`, where the next iteration's evolution
    begins. Snapshots made before these were recorded had what the settings implied."""
    agent = paths.snapshot(iteration) / "agent.json"
    generation = load_json(agent).get("generation") if agent.exists() else None
    return generations_through(evolve, iterate, iteration) if generation is None else generation
