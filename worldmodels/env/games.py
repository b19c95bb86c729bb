"""The games the agent can learn, by their `--env` name."""

from __future__ import annotations

from worldmodels.env.carracing import CARRACING
from worldmodels.env.doom import DOOM_TAKECOVER, skipping
from worldmodels.env.game import Game
from worldmodels.errors import UserError

GAMES: dict[str, Game] = {g.name: g for g in (CARRACING, DOOM_TAKECOVER, skipping(4),
                                              skipping(8))}
DEFAULT = CARRACING.name


def get_game(name: str) -> Game:
    if name not in GAMES:
        raise UserError(f"unknown --env {name!r}; choose one of {', '.join(GAMES)}")
    return GAMES[name]
