"""World Models (Ha & Schmidhuber 2018) as practical software (README)."""

import os

# OpenMP threads that wait for work spin by default. When another process holds one of the
# cores (a second run, another job's Ray workers), torch's two training threads then fight it
# and train at a third of their idle speed; waiting passively keeps the one free core's worth
# and costs little alone (`scripts/bench.py threads`; README, Speed). OpenMP reads the policy
# once, when torch loads, so it is set here, before any module imports torch; a value the
# user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
