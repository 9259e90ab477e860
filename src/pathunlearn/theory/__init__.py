"""The paper's linear theory (Section 3), executable: see `pathunlearn.theory.linear`.

    from pathunlearn.theory import TheoryParams, run_theory, to_json
    result = run_theory(TheoryParams(d=200, eta=0.05))
    to_json(result)["theorem"]["rho_star"]

Figures and files: `pathunlearn.theory.plots.write_outputs` (imports matplotlib).
"""

from pathunlearn.theory.export import to_json
from pathunlearn.theory.linear import (
    TheoryParams,
    TheoryResult,
    load_params,
    params_from_mapping,
    run_theory,
)

__all__ = [
    "TheoryParams",
    "TheoryResult",
    "load_params",
    "params_from_mapping",
    "run_theory",
    "to_json",
]
