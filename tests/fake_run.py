"""A run directory with V, M and latents made in milliseconds (no training), for the tests of
the dream, evolution, evaluation and videos.

`gas_reward=True` builds the seeded problem: an M whose reward is a known, increasing
function of the gas action and that never ends a dream, so CMA-ES has a gradient to climb:
h_0 = tanh(tanh(2 * gas - 1)) and reward = h_0 (every other weight zero).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from worldmodels import checkpoint
from worldmodels.config import MDNRNNConfig, VAEConfig
from worldmodels.data.latents import Latents, write_latents
from worldmodels.models.mdnrnn import MDNRNN
from worldmodels.models.vae import ConvVAE
from worldmodels.run import RunPaths

Z, HIDDEN = 32, 16


def make_mdnrnn(gas_reward: bool = False, seed: int = 0, hidden: int = HIDDEN,
                mixture: str = "factorised") -> MDNRNN:
    torch.manual_seed(seed)
    model = MDNRNN(MDNRNNConfig(hidden_size=hidden, gaussians=3, mixture=mixture))
    if gas_reward:
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
            lstm, h = model.lstm, hidden
            lstm.bias_ih_l0[0:h] = 10.0  # input gate open
            lstm.bias_ih_l0[h:2 * h] = -10.0  # forget gate shut: h depends on this step only
            lstm.bias_ih_l0[3 * h:4 * h] = 10.0  # output gate open
            lstm.weight_ih_l0[2 * h, Z + 1] = 2.0  # cell input of unit 0 from the gas
            lstm.bias_ih_l0[2 * h] = -1.0
            model.reward.weight[0, 0] = 1.0
            model.done.bias.fill_(-10.0)  # never done
    return model.eval()


def make_run(root: Path, gas_reward: bool = False, episodes: int = 3) -> Path:
    """Write RUN/vae.pt, RUN/mdnrnn.pt and RUN/latents/ (random weights, random latents)."""
    paths = RunPaths(Path(root))
    torch.manual_seed(1)
    vae = ConvVAE(VAEConfig())
    checkpoint.save(paths.vae, vae, vae.config, {"kind": "vae", "epoch": 1})
    mdnrnn = make_mdnrnn(gas_reward)
    checkpoint.save(paths.mdnrnn, mdnrnn, mdnrnn.config, {"kind": "mdnrnn", "epoch": 1})
    rng = np.random.default_rng(0)
    for i in range(episodes):
        t = 5
        write_latents(paths.latents / f"episode_{i:08d}.npz", Latents(
            mu=rng.normal(size=(t, Z)).astype(np.float16),
            logvar=np.full((t, Z), -2.0, np.float16),
            action=rng.uniform(0, 1, (t, 3)).astype(np.float32),
            reward=np.zeros(t, np.float32), done=np.zeros(t, bool),
        ))
    return paths.root


def evolve_elsewhere_then_record_taus(run: Path, module, monkeypatch) -> list[float]:
    """Set es.pickle's tau to 2.5 (as after `evolve --tau 2.5`, config.json unchanged) and
    make `module`'s evolve record the tau each call passes; returns that list."""
    from worldmodels.evolve.cmaes import evolve, load_state, save_state

    paths = RunPaths(run)
    state = load_state(paths.es_state)
    state.config["tau"] = 2.5
    save_state(paths.es_state, state)
    taus: list[float] = []

    def record_then_evolve(run, config, **kwargs):
        taus.append(config.tau)
        return evolve(run, config, **kwargs)
    monkeypatch.setattr(module, "evolve", record_then_evolve)
    return taus
