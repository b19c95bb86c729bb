"""World Models (Ha & Schmidhuber 2018) as practical software (README)."""

import os

# OpenMP threads that wait for work spin by default. When anything else shares the cores (a
# second run, another job's Ray workers), torch's two training threads then ran 5-10x slower;
# waiting passively costs nothing measurable on idle cores (README, Speed). OpenMP reads the
# policy once, when torch loads, so it is set here, before any module imports torch; a value
# the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
