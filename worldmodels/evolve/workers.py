"""Who runs the rollouts: Ray actors created once with the model weights, or the same work
serially in-process (`--workers 0`). Both have one interface:

    evaluator.returns(where, params, seeds, tau, max_steps, bar=None, on_rows=None)
        -> total reward per row

`params` is (n, P) controller vectors (None: the random policy) and `seeds` (n,): row i is
one rollout of params[i] with seed seeds[i], in the dream (M) or in the real CarRacing.
Each call sends only these arrays; the weights went to each actor once, as state dicts
(not paths), so actors work on any node of a cluster. `bar` (a tqdm bar, optional) advances
by each row as it finishes: real episodes take seconds each. `on_rows(lo, hi, returns)`
(optional) is called as each chunk of rows finishes, so a caller can keep finished work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worldmodels import checkpoint
from worldmodels.config import MDNRNNConfig, VAEConfig, from_dict
from worldmodels.errors import UserError
from worldmodels.models.mdnrnn import MDNRNN
from worldmodels.models.vae import ConvVAE
from worldmodels.ray_session import warn_if_address_ignored
from worldmodels.run import RunPaths

WHERE = ("dream", "real")
RowsDone = Callable[[int, int, np.ndarray], None]  # (lo, hi, returns of rows lo..hi)


@dataclass
class ModelBundle:
    """Everything a worker needs, as plain picklable data."""

    mdnrnn_config: dict
    mdnrnn_state: dict
    vae_config: dict | None
    vae_state: dict | None
    start_mu: torch.Tensor  # (N, Z): V's posterior of real episodes' first frames
    start_logvar: torch.Tensor

    @classmethod
    def from_run(cls, run: Path, with_vae: bool = True) -> ModelBundle:
        from dataclasses import asdict

        from worldmodels.env.dream import load_starts

        paths = RunPaths(Path(run))
        paths.require(paths.vae, "train-vae")
        paths.require(paths.mdnrnn, "train-mdnrnn")
        mdnrnn, _ = checkpoint.load_model(paths.mdnrnn, MDNRNN, MDNRNNConfig)
        vae_config = vae_state = None
        if with_vae:
            vae, _ = checkpoint.load_model(paths.vae, ConvVAE, VAEConfig)
            if vae.config.z_size != mdnrnn.config.z_size:  # else a matmul error mid-run
                raise UserError(f"{paths.vae}: V has z size {vae.config.z_size} but "
                                f"{paths.mdnrnn.name} was trained on z size "
                                f"{mdnrnn.config.z_size}; retrain M (train-mdnrnn) after V")
            vae_config, vae_state = asdict(vae.config), vae.state_dict()
        mu, logvar = load_starts(paths.latents)
        if mu.shape[1] != mdnrnn.config.z_size:
            raise UserError(f"{paths.latents}: z size {mu.shape[1]} but M has "
                            f"{mdnrnn.config.z_size}")
        return cls(asdict(mdnrnn.config), mdnrnn.state_dict(), vae_config, vae_state, mu, logvar)

    def mdnrnn(self) -> MDNRNN:
        model = MDNRNN(from_dict(MDNRNNConfig, self.mdnrnn_config))
        model.load_state_dict(self.mdnrnn_state)
        return model.eval()

    def vae(self) -> ConvVAE | None:
        if self.vae_state is None:
            return None
        model = ConvVAE(from_dict(VAEConfig, self.vae_config))
        model.load_state_dict(self.vae_state)
        return model.eval()

    def starts(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.start_mu, self.start_logvar

    @property
    def param_count(self) -> int:
        from worldmodels.models.controller import param_count

        return param_count(self.mdnrnn_config["z_size"], self.mdnrnn_config["hidden_size"])


class RolloutWorker:
    """Holds the models; runs rows of rollouts in the dream or the real env."""

    def __init__(self, bundle: ModelBundle, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.bundle = bundle
        self.mdnrnn = bundle.mdnrnn()
        self._vae: ConvVAE | None = None
        self._dreams: dict = {}
        self._env = None

    def run(self, where: str, params: np.ndarray | None, seeds: np.ndarray, tau: float,
            max_steps: int) -> np.ndarray:
        if where == "dream":
            from worldmodels.env.dream import BatchedDream

            if params is None:
                raise ValueError("the dream needs controller params")
            key = (tau, max_steps)
            if key not in self._dreams:
                self._dreams = {key: BatchedDream(self.mdnrnn, self.bundle.starts(), tau,
                                                  max_steps)}
            return self._dreams[key].rollout(params, seeds)
        from worldmodels.env.carracing import make_env
        from worldmodels.evaluate import real_episode

        if self._vae is None:
            self._vae = self.bundle.vae()
            if self._vae is None:
                raise ValueError("real rollouts need V in the bundle")
        if self._env is None or self._env_steps != max_steps:
            self._env, self._env_steps = make_env(max_steps=max_steps), max_steps
        rows = []
        for i, seed in enumerate(seeds):
            row_params = None if params is None else params[i]
            rows.append(real_episode(self._env, self._vae, self.mdnrnn, row_params, int(seed),
                                     max_steps).total_reward)
        return np.array(rows, np.float64)

    def ping(self) -> bool:
        return True


def chunk_bounds(where: str, n: int, workers: int) -> list[tuple[int, int]]:
    """(lo, hi) row ranges, each one task: in the dream one per worker (a bigger batch of
    dreams is faster); in the real env one per episode, which takes seconds (balance and
    progress)."""
    n_chunks = min(n, workers) if where == "dream" else n
    bounds = np.linspace(0, n, n_chunks + 1).astype(int)
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


class SerialEvaluator:
    """In-process, no Ray: the same rows, one after another."""

    def __init__(self, bundle: ModelBundle):
        self.worker = RolloutWorker(bundle)

    def returns(self, where: str, params: np.ndarray | None, seeds: np.ndarray,
                tau: float = 1.0, max_steps: int = 1000, bar=None,
                on_rows: RowsDone | None = None) -> np.ndarray:
        seeds = np.asarray(seeds)
        out = np.empty(len(seeds), np.float64)
        for lo, hi in chunk_bounds(where, len(seeds), workers=1):
            rows = None if params is None else params[lo:hi]
            out[lo:hi] = self.worker.run(where, rows, seeds[lo:hi], tau, max_steps)
            if on_rows is not None:
                on_rows(lo, hi, out[lo:hi])
            if bar is not None:
                bar.update(hi - lo)
        return out

    def close(self) -> None:
        pass


class RayEvaluator:
    """K Ray actors, one CPU each, created once with the weights.

    Rows are cut into chunks (`chunk_bounds`). An actor that dies is replaced by a fresh one
    (made from the same weights, which stay in the object store) and its chunk is
    resubmitted, so a generation always completes."""

    def __init__(self, bundle: ModelBundle, workers: int, address: str | None = None):
        import ray

        from worldmodels.ray_session import ensure_ray

        ensure_ray(address, workers)
        self.bundle_ref = ray.put(bundle)
        self.actor_cls = ray.remote(num_cpus=1)(RolloutWorker)
        self.actors = [self._new_actor() for _ in range(workers)]

    def _new_actor(self):
        return self.actor_cls.remote(self.bundle_ref, threads=1)

    def returns(self, where: str, params: np.ndarray | None, seeds: np.ndarray,
                tau: float = 1.0, max_steps: int = 1000, bar=None,
                on_rows: RowsDone | None = None) -> np.ndarray:
        import ray
        from ray.exceptions import RayActorError

        seeds = np.asarray(seeds)
        chunks = chunk_bounds(where, len(seeds), len(self.actors))
        out = np.empty(len(seeds), np.float64)
        todo = list(range(len(chunks)))
        pending: dict = {}  # ref -> (chunk index, actor index)

        def submit(chunk: int, actor: int) -> None:
            lo, hi = chunks[chunk]
            rows = None if params is None else params[lo:hi]
            ref = self.actors[actor].run.remote(where, rows, seeds[lo:hi], tau, max_steps)
            pending[ref] = (chunk, actor)

        for actor in range(len(self.actors)):
            if todo:
                submit(todo.pop(0), actor)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            chunk, actor = pending.pop(ref)
            try:
                lo, hi = chunks[chunk]
                out[lo:hi] = ray.get(ref)
                if on_rows is not None:
                    on_rows(lo, hi, out[lo:hi])
                if bar is not None:
                    bar.update(hi - lo)
            except RayActorError:
                self.actors[actor] = self._new_actor()  # gone for good: replace, redo
                todo.insert(0, chunk)
            if todo:
                submit(todo.pop(0), actor)
        return out

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def make_evaluator(bundle: ModelBundle, workers: int, address: str | None = None):
    """`workers` 0: SerialEvaluator; otherwise a RayEvaluator with that many actors."""
    warn_if_address_ignored(address, workers)
    if workers == 0:
        return SerialEvaluator(bundle)
    return RayEvaluator(bundle, workers, address)
