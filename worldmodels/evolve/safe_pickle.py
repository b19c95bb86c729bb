"""Unpickling the CMA-ES state (RUN/es.pickle and cma's own `pickle_dumps()` bytes inside it)
without running whatever a pickle asks for.

`evolve --resume` and every `pipeline` run load RUN/es.pickle; a plain `pickle.load` of a run
directory made by someone else would execute any code it holds. This unpickler resolves only
the globals a real state contains (found by unpickling one with a logging `find_class`):
cma's classes, numpy's array, dtype, scalar and RandomState reconstruction, and a `getattr`
limited to public attributes of a RandomState (cma pickles its bound `randn`). Anything
else is refused with one line.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

_NUMPY_CORE = ("numpy._core.multiarray", "numpy.core.multiarray")  # numpy 2 and 1 spell it so
ALLOWED: frozenset[tuple[str, str]] = frozenset({
    ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.linalg", "eigh"),
    *((core, name) for core in _NUMPY_CORE for name in ("_reconstruct", "scalar")),
    ("numpy.random._mt19937", "MT19937"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("cma.boundary_handler", "BoundNone"), ("cma.boundary_handler", "BoundTransform"),
    ("cma.evolution_strategy", "CMAEvolutionStrategy"),
    # The archive of a population of 33 or more is the no-op dict (`paper`, `medium`).
    ("cma.evolution_strategy", "_CMASolutionDict_functional"),
    ("cma.evolution_strategy", "_CMASolutionDict_empty"),
    ("cma.evolution_strategy", "_CMAStopDict"),
    ("cma.evolution_strategy", "_StopTolXStagnation"),
    ("cma.evolution_strategy", "_pass"),
    ("cma.logger", "CMADataLogger"),
    ("cma.optimization_tools", "BestSolution"),
    ("cma.options_parameters", "CMAOptions"), ("cma.options_parameters", "CMAParameters"),
    ("cma.options_parameters", "is_feasible"),
    ("cma.recombination_weights", "RecombinationWeights"),
    ("cma.sampler", "GaussFullSampler"),
    # cma adapts sigma by CSA below 300 dimensions and by TPA from 300 on (C of the `small`
    # and `doom-small` presets).
    ("cma.sigma_adaptation", "CMAAdaptSigmaCSA"), ("cma.sigma_adaptation", "CMAAdaptSigmaTPA"),
    ("cma.sigma_adaptation", "_TPAParameters"),
    ("cma.transformations", "DiagonalDecoding"), ("cma.transformations", "GenoPheno"),
    ("cma.transformations", "RoundIntegerVariables"),
    ("cma.utilities.utils", "BlancClass"), ("cma.utilities.utils", "DictFromTagsInString"),
    ("cma.utilities.utils", "ElapsedWCTime"), ("cma.utilities.utils", "MoreToWrite"),
    ("cma.utilities.utils", "SolutionDict"),
    # Plain containers and values: cma's state holds some of them only in some phases
    # (a `range` appeared after a few generations of a small population).
    *(("builtins", name) for name in ("range", "slice", "set", "frozenset", "complex",
                                       "bytearray")),
    ("collections", "OrderedDict"),
})


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside ALLOWED."""


def _random_state_getattr(obj: Any, name: str) -> Any:
    # A general getattr would reach any module through a function's __globals__.
    if not isinstance(obj, np.random.RandomState) or name.startswith("_"):
        raise UnsafePickleError(f"refusing getattr({type(obj).__name__}, {name!r})")
    return getattr(obj, name)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "getattr"):
            return _random_state_getattr
        if (module, name) not in ALLOWED:
            raise UnsafePickleError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def loads(data: bytes) -> Any:
    """`pickle.loads(data)` resolving only the globals of a CMA-ES state."""
    return _Unpickler(io.BytesIO(data)).load()
