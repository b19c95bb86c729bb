"""The `worldmodels` console script: argument parsing and dispatch only.

Each subcommand hands its arguments to the module that does the work. Bad input raises
UserError, which becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from worldmodels.config import CHOOSE_BY, DONE_RULES, EVOLVE_IN, MIXTURES, PRESETS, CollectConfig
from worldmodels.device import DEVICE_HELP
from worldmodels.env.games import DEFAULT as DEFAULT_ENV
from worldmodels.env.games import GAMES
from worldmodels.errors import UserError, require_finite
from worldmodels.handwriting.model import HandwritingConfig
from worldmodels.video import SCALE


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _finite_float(text: str, above: float | None = None,
                  at_least: float | None = None) -> float:
    """Floats for flags: inf and nan are refused (they would run and give nan results)."""
    try:
        return require_finite("the value", float(text), above=above, at_least=at_least)
    except (ValueError, UserError) as err:
        raise argparse.ArgumentTypeError(str(err).replace("the value ", "")) from None


def _positive_float(text: str) -> float:
    return _finite_float(text, above=0)


def _non_negative_float(text: str) -> float:
    return _finite_float(text, at_least=0)


DESCRIPTION = """\
World Models (Ha & Schmidhuber 2018) on gymnasium's CarRacing-v3 (or VizDoom's Take Cover,
--env doom-takecover): collect episodes, train V (a convolutional VAE) and M (an MDN-RNN),
evolve the controller C with CMA-ES inside M's dream, and score it in the real game.
`worldmodels pipeline --preset tiny --run runs/tiny` runs every stage; `worldmodels
handwriting` trains a Graves-style handwriting model on the same mixture-density core.
Each command's --help lists its options."""


def _env(p: argparse.ArgumentParser, default: str | None = DEFAULT_ENV, more_help: str = ""
         ) -> None:
    p.add_argument("--env", choices=list(GAMES), default=default,
                   help=f"the game (default {default or DEFAULT_ENV}){more_help}")


def _scale(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", type=_positive, default=SCALE,
                   help=f"pixels per frame pixel (default {SCALE}; GIFs shrink with it)")


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help=f"where the networks run: {DEVICE_HELP}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worldmodels", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("collect", help="collect episodes of a game on Ray workers")
    p.add_argument("--out", type=Path, required=True, help="directory for episode files")
    p.add_argument("--episodes", type=_positive, required=True)
    _env(p)
    p.add_argument("--max-steps", type=_positive, default=None,
                   help="default: the game's own limit (CarRacing 1000, Take Cover 2100)")
    p.add_argument("--policy", choices=sorted({n for g in GAMES.values() for n in g.policies}),
                   default=None, help="data policy (default: the game's first): CarRacing "
                                      "brownian or random; Take Cover random or repeat")
    p.add_argument("--workers", type=_non_negative, default=CollectConfig.workers,
                   help="0: in-process, no Ray")
    p.add_argument("--address", default=None, help="join a Ray cluster: auto or HOST:PORT")
    p.add_argument("--seed", type=_non_negative, default=CollectConfig.seed)
    p.set_defaults(handler="worldmodels.data.collect:cli_collect")

    p = sub.add_parser("validate", help="check every episode file in a directory")
    p.add_argument("data", type=Path)
    p.set_defaults(handler="worldmodels.data.collect:cli_validate")

    p = sub.add_parser("handwriting", help="Graves-style handwriting on the same MDN core")
    hw = p.add_subparsers(dest="handwriting_command", required=True, metavar="ACTION")
    p = hw.add_parser("train", help="train the stroke model (resumable)")
    p.add_argument("--data", type=Path, default=None,
                   help="stroke .npz, IAM lineStrokes .xml or a directory of them "
                        "(default: the bundled Omniglot strokes)")
    p.add_argument("--run", type=Path, required=True, help="run directory")
    p.add_argument("--epochs", type=_positive, default=HandwritingConfig.epochs)
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --run")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow sketch-rnn .npz object arrays (unpickles: trusted files only)")
    p.add_argument("--hidden-size", type=_positive, default=HandwritingConfig.hidden_size)
    p.add_argument("--layers", type=_positive, default=HandwritingConfig.layers)
    p.add_argument("--components", type=_positive, default=HandwritingConfig.components)
    p.add_argument("--batch-size", type=_positive, default=HandwritingConfig.batch_size)
    p.add_argument("--learning-rate", type=_positive_float,
                   default=HandwritingConfig.learning_rate)
    p.add_argument("--train-drawings", type=_non_negative,
                   default=HandwritingConfig.max_train_drawings,
                   help="train on a seeded subset of this many drawings (0: all)")
    p.add_argument("--seed", type=_non_negative, default=HandwritingConfig.seed)
    _device(p)
    p.set_defaults(handler="worldmodels.handwriting.train:cli_train")
    p = hw.add_parser("sample", help="draw samples beside real validation drawings")
    p.add_argument("--run", type=Path, required=True, help="run directory with handwriting.pt")
    p.add_argument("--out", type=Path, required=True, help="output .svg or .png")
    p.add_argument("--n", type=_positive, default=16, help="samples per bias value")
    p.add_argument("--bias", type=_non_negative_float, nargs="+", default=[0.0],
                   help="one panel per value (Graves' sampling bias, >= 0)")
    p.add_argument("--temperature", type=_positive_float, default=1.0)
    p.add_argument("--points", type=_non_negative, default=0,
                   help="points per sample (0: the median training drawing length)")
    p.add_argument("--seed", type=_non_negative, default=0)
    _device(p)
    p.set_defaults(handler="worldmodels.handwriting.draw:cli_sample")

    p = sub.add_parser("train-vae", help="train V (the ConvVAE) on episode files")
    p.add_argument("--data", type=Path, required=True, help="directory of episode files")
    p.add_argument("--run", type=Path, required=True, help="run directory")
    p.add_argument("--epochs", type=_positive, default=None, help="default: the run's config")
    p.add_argument("--batch-size", type=_positive, default=None)
    p.add_argument("--resume", action="store_true", help="continue the V checkpoint in --run")
    _env(p, None, "; a new run gets its game's default preset, an existing run keeps its own")
    _device(p)
    p.set_defaults(handler="worldmodels.train.vae:cli_train_vae")

    p = sub.add_parser("compare-vae", help="held-out frames above each run's V reconstruction")
    p.add_argument("--data", type=Path, required=True, help="directory of episode files")
    p.add_argument("--run", type=Path, required=True, action="append",
                   help="a run directory with vae.pt; repeat to compare Vs")
    p.add_argument("--out", type=Path, required=True, help="the grid, a .png")
    p.add_argument("--episodes", type=_positive, default=10,
                   help="held-out episodes, one frame each")
    p.add_argument("--from-end", type=_non_negative, default=2,
                   help="how many steps before each episode's end its frame is")
    _scale(p)
    p.set_defaults(handler="worldmodels.train.vae:cli_compare_vae")

    p = sub.add_parser("encode", help="encode every episode with V (mu, logvar) for M")
    p.add_argument("--run", type=Path, required=True, help="run directory with vae.pt")
    p.add_argument("--data", type=Path, default=None,
                   help="directory of episode files (default: the one V was trained on)")
    _device(p)
    p.set_defaults(handler="worldmodels.train.encode:cli_encode")

    p = sub.add_parser("train-mdnrnn", help="train M (the MDN-RNN) on the encoded episodes")
    p.add_argument("--run", type=Path, required=True, help="run directory with latents/")
    p.add_argument("--epochs", type=_positive, default=None, help="default: the run's config")
    p.add_argument("--seq-len", type=_positive, default=None)
    p.add_argument("--batch-size", type=_positive, default=None)
    p.add_argument("--dropout", type=float, default=None,
                   help="variational dropout on M's input and state, also in the dream [0, 1)")
    p.add_argument("--mixture", choices=MIXTURES, default=None,
                   help="z_{t+1}'s head: a mixture per dimension (the paper) or one over all of z")
    p.add_argument("--carry-state", action=argparse.BooleanOptionalAction, default=None,
                   help="carry the LSTM state across windows of an episode (long horizon)")
    p.add_argument("--resume", action="store_true", help="continue the M checkpoint in --run")
    _device(p)
    p.set_defaults(handler="worldmodels.train.mdnrnn:cli_train_mdnrnn")

    p = sub.add_parser("evolve", help="evolve C with CMA-ES in M's dream (or the real env)")
    p.add_argument("--run", type=Path, required=True, help="run directory with vae.pt, mdnrnn.pt")
    p.add_argument("--in", dest="where", choices=EVOLVE_IN, default=None)
    p.add_argument("--generations", type=_positive, default=None,
                   help="default: the run's config (for all of these)")
    p.add_argument("--popsize", type=int, default=None, help="candidates per generation (>= 2)")
    p.add_argument("--rollouts", type=_positive, default=None, help="rollouts per candidate")
    p.add_argument("--tau", type=_positive_float, default=None, help="dream temperature (> 0)")
    p.add_argument("--done", choices=DONE_RULES, default=None,
                   help="how the dream obeys M's done head: threshold its class-weighted "
                        "probability, or its calibrated one (likely), or sample a coin of it")
    p.add_argument("--max-steps", type=_positive, default=None, help="steps per rollout")
    p.add_argument("--workers", type=_non_negative, default=None, help="0: in-process, no Ray")
    p.add_argument("--address", default=None, help="join a Ray cluster: auto or HOST:PORT")
    p.add_argument("--resume", action="store_true", help="continue RUN/es.pickle")
    p.add_argument("--envs-per-worker", type=_positive, default=None,
                   help="real envs each worker steps together (V, M, C batched over them)")
    _device(p)
    p.set_defaults(handler="worldmodels.evolve.cmaes:cli_evolve")

    p = sub.add_parser("evaluate", help="score the run's agent in the real game")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--episodes", type=_positive, default=None)
    p.add_argument("--seed", type=_non_negative, default=None, help="episode i uses seed + i")
    p.add_argument("--max-steps", type=_positive, default=None)
    p.add_argument("--workers", type=_non_negative, default=None, help="0: in-process, no Ray")
    p.add_argument("--address", default=None, help="join a Ray cluster: auto or HOST:PORT")
    p.add_argument("--policy", choices=["controller", "random"], default="controller")
    p.add_argument("--iteration", type=_non_negative, default=None,
                   help="score the agent (M and C) of iterate's snapshot N, RUN/iterations/NN, "
                        "instead of the run's (default --out: that snapshot's evaluation.json)")
    p.add_argument("--envs-per-worker", type=_positive, default=None,
                   help="real envs each worker steps together (V, M, C batched over them)")
    p.add_argument("--video", type=Path, default=None,
                   help="also record the first episode (real | V's reconstruction): .mp4 or .gif")
    p.add_argument("--out", type=Path, default=None,
                   help="the summary's file (default RUN/evaluation.json, or "
                        "RUN/evaluation_random.json; these are not replaced by other episodes)")
    _device(p)
    p.set_defaults(handler="worldmodels.evaluate:cli_evaluate")

    p = sub.add_parser("dream-video", help="a dream decoded through V, driven by C")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help=".mp4 or .gif")
    p.add_argument("--steps", type=_positive, default=300)
    p.add_argument("--seed", type=_non_negative, default=0)
    p.add_argument("--tau", type=_positive_float, default=None,
                   help="default: the tau C evolved at (RUN/es.pickle)")
    p.add_argument("--fps", type=_positive, default=None, help="default: the game's (50, 35)")
    _scale(p)
    _device(p)
    p.set_defaults(handler="worldmodels.video:cli_dream_video")

    p = sub.add_parser("dream-check", help="the data policy in M's dream and in the game: "
                                           "is the dream as dangerous?")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--tau", type=_positive_float, nargs="+", default=None,
                   help="dream temperatures to compare (default: the tau C evolved at)")
    p.add_argument("--done", choices=DONE_RULES, default=None,
                   help="the dream's done rule (default: the one C evolved with)")
    p.add_argument("--dreams", type=_positive, default=256, help="dreams per temperature")
    p.add_argument("--max-steps", type=_positive, default=None,
                   help="steps per dream (default: the collected episodes' limit)")
    p.add_argument("--data", type=Path, default=None, help="episode directory (default RUN/data)")
    _device(p)
    p.set_defaults(handler="worldmodels.dream_check:cli_dream_check")

    p = sub.add_parser("dream-rank", help="the agent and perturbations of it in the dream and "
                                          "in the game: does the dream rank them alike?")
    p.add_argument("--run", type=Path, required=True, help="run directory with an evolved C")
    p.add_argument("--candidates", type=_positive, default=16,
                   help="the agent and N - 1 perturbations of it")
    p.add_argument("--sigma", type=float, default=0.1,
                   help="std of the perturbations (a restarted CMA-ES's spread)")
    p.add_argument("--rollouts", type=_positive, default=64, help="dreams per candidate")
    p.add_argument("--episodes", type=_positive, default=16, help="real episodes per candidate")
    p.add_argument("--seed", type=_non_negative, default=0, help="seeds the perturbations")
    p.add_argument("--workers", type=_non_negative, default=2, help="0: in-process, no Ray")
    p.add_argument("--address", default=None, help="join a Ray cluster: auto or HOST:PORT")
    p.add_argument("--out", type=Path, default=None, help="default: RUN/dream_rank.json")
    _device(p)
    p.set_defaults(handler="worldmodels.dream_rank:cli_dream_rank")

    p = sub.add_parser("real-video", help="one real episode of the agent beside V's "
                                          "reconstruction")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help=".mp4 or .gif")
    p.add_argument("--seed", type=_non_negative, default=None,
                   help="the episode's seed (default: the first evaluation seed)")
    p.add_argument("--max-steps", type=_positive, default=None,
                   help="default: the run's evaluate.max_steps")
    p.add_argument("--policy", choices=["controller", "random"], default="controller")
    _scale(p)
    _device(p)
    p.set_defaults(handler="worldmodels.evaluate:cli_real_video")

    p = sub.add_parser("iterate", help="the agent plays, M learns what it saw, C evolves again")
    p.add_argument("--run", type=Path, required=True, help="run directory with es.pickle")
    p.add_argument("--iterations", type=_non_negative, default=None,
                   help="iterations in all (finished ones are not redone)")
    p.add_argument("--episodes", type=_positive, default=None, help="real episodes per iteration")
    p.add_argument("--noise", type=float, default=None,
                   help="std of the noise on C's parameters in exploring episodes (>= 0)")
    p.add_argument("--choose", choices=CHOOSE_BY, default=None,
                   help="which snapshot is the run's agent at the end: the best real check "
                        "(the last without checks) or the best over its noiseless episodes")
    p.add_argument("--finalists", type=_non_negative, default=None,
                   help="with --choose episodes: the best N snapshots by their round's "
                        "episodes replay --finalist-episodes more, and the best of those wins "
                        "(0 or 1: the round's alone; default: the run's iterate.finalists)")
    p.add_argument("--finalist-episodes", type=_positive, default=None,
                   help="noiseless episodes each finalist plays (selection seeds 2,000,000+)")
    p.add_argument("--ratchet", action=argparse.BooleanOptionalAction, default=None,
                   help="with --choose episodes: start each round from the best snapshot by "
                        "noiseless episodes so far, not the last (default: the run's "
                        "iterate.ratchet)")
    p.add_argument("--restart", action=argparse.BooleanOptionalAction, default=None,
                   help="start each iteration's CMA-ES afresh around the agent (default: the "
                        "run's iterate.restart)")
    p.add_argument("--real-eval-every", type=_non_negative, default=None,
                   help="real check of the CMA-ES mean every N generations of an iteration "
                        "(0: as in the first evolution)")
    p.add_argument("--workers", type=_non_negative, default=None, help="0: in-process, no Ray")
    p.add_argument("--address", default=None, help="join a Ray cluster: auto or HOST:PORT")
    p.add_argument("--data", type=Path, default=None,
                   help="where the new episodes go (default: the directory V trained on)")
    _device(p)
    p.set_defaults(handler="worldmodels.iterate:cli_iterate")

    p = sub.add_parser("pipeline", help="every stage in order, skipping finished ones")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="sizes of every stage (default: the --env's: small, doom-small, "
                        "doom-skip4 or doom-skip8)")
    _env(p, None, "; default: the preset's")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, default=None, help="episode directory (default RUN/data)")
    p.add_argument("--workers", type=_non_negative, default=None,
                   help="Ray workers for every stage (default: the preset's); 0: no Ray")
    p.add_argument("--address", default=None, help="join a Ray cluster: auto or HOST:PORT")
    p.add_argument("--seed", type=_non_negative, default=None,
                   help="run seed (new runs; default 0): every stage's seed derives from it")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="change one of the preset's settings for a new run (repeatable), e.g. "
                        "--set vae.epochs=10; kept in RUN/config.json")
    _device(p)
    p.set_defaults(handler="worldmodels.pipeline:cli_pipeline")

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = args.handler.split(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(handler(args) or 0)
    except UserError as err:
        print(f"worldmodels {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"worldmodels {args.command}: interrupted; rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
