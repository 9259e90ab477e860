"""The paper's linear theory (Section 3), executable: see `pathunlearn.theory.linear`.

    from pathunlearn.theory import TheoryParams, load_params, run_theory, to_json
    result = run_theory(TheoryParams(d=200, eta=0.05))
    to_json(result)["theorem"]["rho_star"]
    params = load_params("my.yaml", ["eta=0.05", "steps=100"])  # None: configs/theory.yaml

Figures and files: `pathunlearn.theory.plots.write_outputs` (imports matplotlib).
"""

from pathunlearn.theory.export import to_json
from pathunlearn.theory.linear import (
    TheoryParams,
    TheoryResult,
    load_params,
    run_theory,
)

__all__ = [
    "TheoryParams",
    "TheoryResult",
    "load_params",
    "run_theory",
    "to_json",
]
