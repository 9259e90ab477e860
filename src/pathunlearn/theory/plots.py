"""Figures and files of `pathunlearn theory`: distance vs t with the bound, the three positions,
the weakly-local sweep; every file written atomically (:mod:`pathunlearn.figures`,
:func:`pathunlearn.files.write_bytes`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from pathunlearn.errors import UserError
from pathunlearn.figures import save_figure
from pathunlearn.files import write_bytes
from pathunlearn.theory.export import to_json
from pathunlearn.theory.linear import TheoryResult


def theorem_figure(result: TheoryResult) -> Figure:
    """log d(θ_AB^t, θ_BA^t) vs t with the Theorem 3.1 bound, t₀ and Corollary 1's t* marked."""
    th, p = result.theorem, result.params
    t = np.arange(th.distances.size)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    ax.semilogy(t, th.distances, lw=2, label=r"$d(\theta_{AB}^t, \theta_{BA}^t)$")
    start = th.q.t_start
    bound = 10.0 ** np.minimum(th.log10_bound, 300.0)
    ax.semilogy(
        t[start:],
        bound[start:],
        "k--",
        label=r"bound $\sigma_U^2\|P_U\Delta\theta_0\|^2(1+\rho^*)^{2t}/4m$",
    )
    if start > 0:
        ax.semilogy(
            t[: start + 1],
            bound[: start + 1],
            "k:",
            alpha=0.4,
            label="bound (not claimed, t < t$_0$)",
        )
    ax.axvline(
        start, color="tab:red", lw=1, label=f"$t_0$ = {th.q.t0}" + (" (< 0)" if th.q.t0 < 0 else "")
    )
    if th.t_star <= t[-1]:
        ax.axvline(
            th.t_star,
            color="tab:purple",
            ls="-.",
            lw=1,
            label=f"Corollary 1 $t^*$ (ε = {p.epsilon:g})",
        )
    ax.set_xlabel("unlearning step t")
    ax.set_ylabel("RE distance (log scale)")
    ax.set_title(
        f"Theorem 3.1: d={p.d}, k={p.forget_rows}, η={p.eta:g}; "
        f"ρ*={th.q.rho_star:.3g}, measured growth {th.growth_measured:.3g}/step",
        fontsize=9,
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def positions_figure(result: TheoryResult) -> Figure:
    """Stage U at positions 1-3: forget loss, distance to the retrain model, pairwise distance."""
    pos = result.positions
    t = np.arange(pos.forget_loss.shape[1])
    fig = Figure(figsize=(13, 4))
    axes = fig.subplots(1, 3)
    for i, label in enumerate(pos.labels):
        axes[0].semilogy(t, pos.forget_loss[i], label=label)
        axes[1].semilogy(t, pos.to_retrain[i], label=label)
    for i in range(len(pos.labels)):
        for j in range(i + 1, len(pos.labels)):
            axes[2].semilogy(t, pos.pairwise[:, i, j], label=f"{pos.labels[i]} vs {pos.labels[j]}")
    titles = (
        "forget loss on U (higher = more forgotten)",
        r"$d(\theta_{path}^t, \theta_r)$, $\theta_r$ trained on A-B",
        "distance between paths",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("unlearning step t")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Linear analogue of the LLM study: gradient ascent on stage U", fontsize=10)
    return fig


def weakly_local_figure(result: TheoryResult) -> Figure:
    """Left: d(θ_AB^t, θ_BA^t) per retain weight λ. Right: per-step growth factors against λ."""
    sweep = result.weakly_local
    fig = Figure(figsize=(12, 4.5))
    left, right = fig.subplots(1, 2)
    for w in sweep:
        t = np.arange(w.distances.size)
        label = f"λ = {w.lam:g}" + ("" if w.stable else " (unstable: ν_min < −2)")
        left.semilogy(t, w.distances, "-" if w.stable else "--", label=label)
    left.set_ylabel(r"$d(\theta_{AB}^t, \theta_{BA}^t)$ (log scale)")
    left.set_title("GA on X_U + λ · descent on a retain sample", fontsize=9)
    lams = [w.lam for w in sweep]
    right.plot(lams, [w.growth_measured for w in sweep], "o-", label="measured")
    right.plot(
        lams, [(1 + w.nu_max) ** 2 for w in sweep], "s--", label=r"$(1+\nu_{max}(M_\lambda))^2$"
    )
    bound = [np.nan if w.q is None else (1 + w.q.rho_star) ** 2 for w in sweep]
    right.plot(lams, bound, "^:", label=r"$(1+\rho^*_\lambda)^2$ (extended bound)")
    right.axhline(
        (1 + sweep[0].nu_limit) ** 2, color="gray", lw=1, label=r"$(1+\nu_\infty)^2$ (λ → ∞)"
    )
    right.set_xlabel("retain weight λ")
    right.set_ylabel("growth of d per step")
    right.set_title("Growth factor vs λ (stays > 1: the divergence persists)", fontsize=9)
    left.set_xlabel("unlearning step t")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def write_outputs(result: TheoryResult, out_dir: Path, matrices: bool = False) -> dict[str, Any]:
    """Write the figures (PNG + SVG) and theory.json to out_dir; return the JSON object."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out_dir}: cannot create directory ({e.strerror})") from None
    files = save_figure(theorem_figure(result), out_dir, "theory")
    files += save_figure(positions_figure(result), out_dir, "theory_positions")
    if result.weakly_local:
        files += save_figure(weakly_local_figure(result), out_dir, "theory_weakly_local")
    json_path = out_dir / "theory.json"
    report = to_json(result, matrices) | {"files": [str(f) for f in [*files, json_path]]}
    write_bytes(json_path, (json.dumps(report, indent=1) + "\n").encode())
    return report
