"""The one Ray actor pool (collect, evolve, evaluate): results, replacement, giving up."""

from __future__ import annotations

import os
import sys

import pytest
import ray.cloudpickle

from worldmodels.errors import UserError
from worldmodels.ray_session import ActorPool

# Ray's workers cannot import this test module: ship its classes by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Squarer:
    def __init__(self, offset: int):
        self.offset = offset

    def run(self, x: int) -> int:
        return x * x + self.offset


class AlwaysCrashes:
    def __init__(self, offset: int):
        pass

    def run(self, x: int) -> int:
        os._exit(1)  # the actor's process dies


class CrashesOnce:
    """Dies the first time it sees x == 3 (a marker file remembers across actors)."""

    def __init__(self, marker: str):
        self.marker = marker

    def run(self, x: int) -> int:
        if x == 3 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return -x


def test_pool_runs_every_task_two_in_flight_per_actor(ray_session):
    pool = ActorPool(Squarer, (1,), workers=2)
    try:
        results = dict(pool.run("run", [(x,) for x in range(7)]))
    finally:
        pool.close()
    assert results == {x: x * x + 1 for x in range(7)}


def test_a_dead_actor_is_replaced_and_its_task_redone(ray_session, tmp_path):
    pool = ActorPool(CrashesOnce, (str(tmp_path / "died"),), workers=2)
    try:
        first = pool.actors[:]
        results = dict(pool.run("run", [(x,) for x in range(6)]))
        assert results == {x: -x for x in range(6)}
        assert pool.actors != first  # one was replaced
    finally:
        pool.close()


def test_an_actor_that_keeps_dying_is_given_up_on(ray_session):
    pool = ActorPool(AlwaysCrashes, (0,), workers=1)
    try:
        with pytest.raises(UserError, match="died 3 times in a row; giving up"):
            dict(pool.run("run", [(x,) for x in range(3)]))
    finally:
        pool.close()
