#!/usr/bin/env python
"""Speed measurements, each as a ratio against a reference measured in the same run.

    python scripts/bench.py collect   # collection frames/s vs bare CarRacing steps/s
    python scripts/bench.py train     # V and M steps/s, M's masked LSTM, train-vae peak RSS
    python scripts/bench.py dream     # batched dream steps/s vs CarRacing and vs matmul FLOP/s
    python scripts/bench.py evaluate  # evaluate frames/s per worker vs bare CarRacing steps/s
    python scripts/bench.py threads   # V and M training on shared cores: OpenMP wait policies
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

BENCHES = {"collect": "bench_collect", "train": "bench_train", "dream": "bench_dream",
           "evaluate": "bench_evaluate", "threads": "bench_threads"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", choices=sorted(BENCHES))
    args, rest = parser.parse_known_args()
    importlib.import_module(BENCHES[args.bench]).main(rest)


if __name__ == "__main__":
    main()
