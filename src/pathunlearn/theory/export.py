"""The linear theory's results as plain JSON: every quantity of Theorem 3.1, its hypotheses,
the per-step table, the positions experiment and the weakly-local sweep."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pathunlearn.theory.linear import (
    PositionsRun,
    TheoremRun,
    TheoryParams,
    TheoryResult,
    WeaklyLocalRun,
    bound_holds,
)


def to_json(result: TheoryResult, matrices: bool = False) -> dict[str, Any]:
    """Every quantity of the run as plain JSON types (log10 beside values that grow fast)."""
    p, th = result.params, result.theorem
    return _jsonable(
        {
            "params": p.model_dump() | {"k": p.forget_rows},
            "hypotheses": hypotheses_json(p, th),
            "theorem": theorem_json(p, th, matrices),
            "table": theorem_table(th),
            "positions": positions_json(result.positions),
            "weakly_local": [weakly_local_json(w) for w in result.weakly_local],
            "runtime_s": result.runtime_s,
        }
    )


def hypotheses_json(p: TheoryParams, th: TheoremRun) -> dict[str, Any]:
    """The theorem's hypotheses, checked: d > n, k < d, X_U full row rank, m >= k."""
    n = p.n_a + p.n_b
    return {
        "d": p.d,
        "n": n,
        "d_gt_n": p.d > n,
        "k": p.forget_rows,
        "k_lt_d": p.forget_rows < p.d,
        "rank_X_U": th.rank_x_u,
        "X_U_full_row_rank": th.rank_x_u == p.forget_rows,
        "m_ge_k": p.m >= p.forget_rows,
    }


def theorem_json(p: TheoryParams, th: TheoremRun, matrices: bool) -> dict[str, Any]:
    """Δθ₀, P_U, M_U, ρ*, σ_U, C₀, t₀, the bound, Lemma 3.2, growth rates, Corollary 1."""
    q = th.q
    nu = 2.0 * p.eta / p.forget_rows * np.linalg.svd(th.x_u, compute_uv=False) ** 2
    out = {
        "delta_theta_0": q.dtheta0,
        "norm_delta_theta_0": float(np.linalg.norm(q.dtheta0)),
        "norm_P_U_delta_theta_0": q.norm_p,
        "norm_perp_delta_theta_0": q.norm_perp,
        "P_U": {
            "rank": int(round(np.trace(q.P))),
            "trace": float(np.trace(q.P)),
            "idempotence_error": float(np.max(np.abs(q.P @ q.P - q.P))),
        },
        "M_U": {
            "eigenvalues_nonzero": nu,
            "trace": float(np.trace(q.M)),
            "op_norm": float(nu[0]),
        },
        "rho_star": q.rho_star,
        "sigma_U": q.sigma,
        "C0": q.C0,
        "t0": q.t0,
        "t_start": q.t_start,
        "bound_formula": "sigma_U^2 ||P_U dtheta0||^2 (1 + rho*)^(2t) / (4m)",
        "log10_bound_prefactor": float(th.log10_bound[0]),
        "bound_holds_for_all_t_ge_t_start": bool(np.all(th.bound_holds)),
        "bound_checked_steps": int(th.bound_holds.size),  # 0 when t₀ > T: raise steps
        "lemma_3_2_max_rel_error": th.lemma_rel_error,
        "growth_rate_measured": th.growth_measured,
        "growth_rate_bound": (1.0 + q.rho_star) ** 2,
        "growth_rate_asymptotic": th.growth_asymptotic,
        "corollary_1": {
            "epsilon": p.epsilon,
            "t_star": th.t_star,
            "t_star_steps": max(math.ceil(th.t_star), 0),
            "holds_for_t_ge_t_star": th.corollary_holds,
        },
        "closed_form_vs_gradient_descent": th.gd,
    }
    if matrices:
        out["P_U"]["matrix"] = q.P
        out["M_U"]["matrix"] = q.M
    return out


def theorem_table(th: TheoremRun) -> list[dict[str, Any]]:
    """Per-t rows: t, d(θ_AB^t, θ_BA^t), the bound, their log10, and whether the bound holds."""
    rows = []
    log10_d = np.log10(th.distances)
    holds = bound_holds(th.distances, th.log10_bound)
    for t, (d, lb) in enumerate(zip(th.distances, th.log10_bound, strict=True)):
        applies = t >= th.q.t_start
        rows.append(
            {
                "t": t,
                "d": float(d),
                "bound": float(10.0**lb) if lb < 308 else math.inf,
                "log10_d": float(log10_d[t]),
                "log10_bound": float(lb),
                "bound_applies": applies,
                "holds": bool(holds[t]) if applies else None,
                "d_to_retrain_AB": float(th.retrain_distances[0, t]),
                "d_to_retrain_BA": float(th.retrain_distances[1, t]),
            }
        )
    return rows


def positions_json(pos: PositionsRun) -> dict[str, Any]:
    """Per-path curves and the pairwise distance matrices at t = 0 and t = T."""
    return {
        "labels": list(pos.labels),
        "retrain_path": "A-B",
        "pairwise_t0": pos.pairwise[0],
        "pairwise_final": pos.pairwise[-1],
        "pairwise": {
            f"{a} vs {b}": pos.pairwise[:, i, j]
            for i, a in enumerate(pos.labels)
            for j, b in enumerate(pos.labels)
            if i < j
        },
        "to_retrain": {lab: pos.to_retrain[i] for i, lab in enumerate(pos.labels)},
        # the best early-stopping point of each path: GA may first approach θ_r, then overshoot
        "closest_to_retrain": {
            lab: {"t": int(np.argmin(pos.to_retrain[i])), "d": float(pos.to_retrain[i].min())}
            for i, lab in enumerate(pos.labels)
        },
        "forget_loss": {lab: pos.forget_loss[i] for i, lab in enumerate(pos.labels)},
        "retain_loss": {lab: pos.retain_loss[i] for i, lab in enumerate(pos.labels)},
    }


def weakly_local_json(w: WeaklyLocalRun) -> dict[str, Any]:
    """One λ of the sweep: distances, the spectrum of M_λ, growth, and the extended bound."""
    out = {
        "lambda": w.lam,
        "distances": w.distances,
        "final_d": float(w.distances[-1]),
        "log10_final_d": float(np.log10(w.distances[-1])),
        "nu_max": w.nu_max,
        "nu_min": w.nu_min,
        "stable": w.stable,
        "lambda_stable_sufficient": w.lam_stable,
        "nu_limit": w.nu_limit,
        "growth_rate_measured": w.growth_measured,
        "growth_rate_asymptotic": (1.0 + w.nu_max) ** 2,
        "lemma_rel_error": w.lemma_rel_error,
        "bound": None,
    }
    if w.q is not None and w.log10_bound is not None:
        holds = bound_holds(w.distances, w.log10_bound)
        out["bound"] = {
            "rho_star": w.q.rho_star,
            "sigma": w.q.sigma,
            "C0": w.q.C0,
            "t0": w.q.t0,
            "holds_for_all_t_ge_t_start": bool(np.all(holds[w.q.t_start :])),
        }
    return out


def _jsonable(obj: Any) -> Any:
    """numpy → lists/floats; non-finite floats → None (JSON has no inf/nan)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
