"""The theory's report on the terminal (``pathunlearn theory``): the theorem's quantities, d
vs its bound over t, the positions and the weakly-local sweep as rich tables."""

from __future__ import annotations

from rich.console import Console


def print_theory(report: dict, console: Console) -> None:
    """Rich tables: the theorem's quantities, d vs bound over t, positions, λ sweep."""
    from rich.table import Table

    th = report["theorem"]
    summary = Table(title="Theorem 3.1 (two stages, A and B; forget set X_U)", show_header=False)
    for key in (
        "rho_star",
        "sigma_U",
        "C0",
        "t0",
        "norm_P_U_delta_theta_0",
        "lemma_3_2_max_rel_error",
    ):
        summary.add_row(key, f"{th[key]:.6g}")
    summary.add_row("growth/step: measured", f"{th['growth_rate_measured']:.6g}")
    summary.add_row("growth/step: (1+ρ*)² bound", f"{th['growth_rate_bound']:.6g}")
    summary.add_row("growth/step: (1+ν_max)² asymptotic", f"{th['growth_rate_asymptotic']:.6g}")
    cor = th["corollary_1"]
    cor_holds = cor["holds_for_t_ge_t_star"]
    cor_text = "t* > T, not reached" if cor_holds is None else f"holds: {cor_holds}"
    summary.add_row(f"Corollary 1 t* (ε={cor['epsilon']:g})", f"{cor['t_star']:.4g} ({cor_text})")
    gd = th["closed_form_vs_gradient_descent"]
    gd_text = (
        gd["skipped"] if "skipped" in gd else f"max |θ_closed − θ_gd| = {gd['max_abs_diff']:.3g}"
    )
    summary.add_row("closed form vs gradient descent", gd_text)
    checked = th["bound_checked_steps"]
    holds = f"{th['bound_holds_for_all_t_ge_t_start']} ({checked} steps checked)"
    if checked == 0:
        holds = "not checked: t0 > T (raise steps)"
    summary.add_row("bound holds for all t ≥ max(t0, 0)", holds)
    console.print(summary)
    console.print(theory_rows_table(report["table"], th["t_start"]))
    console.print(positions_table(report["positions"]))
    console.print(weakly_local_table(report["weakly_local"]))
    console.print(
        f"runtime {report['runtime_s']:.2f}s; wrote " + ", ".join(report["files"]), highlight=False
    )


def theory_rows_table(rows: list[dict], t_start: int):
    """t, d, bound, log10 of each, holds — about 25 rows, always t_start and the last."""
    from rich.table import Table

    stride = max(1, -(-len(rows) // 25))
    keep = {r["t"] for r in rows[::stride]} | {t_start, rows[-1]["t"]}
    table = Table(title="d(θ_AB^t, θ_BA^t) vs the bound")
    for col in ("t", "d(AB,BA)", "bound", "log10 d", "log10 bound", "holds"):
        table.add_column(col, justify="right")
    for r in rows:
        if r["t"] in keep:
            holds = "—" if r["holds"] is None else ("yes" if r["holds"] else "[red]NO[/]")
            cells = (r["d"], r["bound"], r["log10_d"], r["log10_bound"])
            table.add_row(
                str(r["t"]), *(f"{c:.4g}" if c is not None else "inf" for c in cells), holds
            )
    return table


def positions_table(pos: dict):
    """Per path: forget loss and distance to the retrain model at t = 0, T, and closest."""
    from rich.table import Table

    table = Table(title="Stage U at each position, GA on U (retrain model: A-B)")
    columns = ("path", "forget loss t=0", "forget loss t=T", "d(θ, θ_r) t=0", "d(θ, θ_r) t=T")
    for col in (*columns, "closest d(θ, θ_r) (at t)"):
        table.add_column(col, justify="right")
    for label in pos["labels"]:
        f, r = pos["forget_loss"][label], pos["to_retrain"][label]
        best = pos["closest_to_retrain"][label]
        cells = (f"{v:.4g}" for v in (f[0], f[-1], r[0], r[-1]))
        table.add_row(label, *cells, f"{best['d']:.4g} ({best['t']})")
    return table


def weakly_local_table(sweep: list[dict]):
    """Per λ: final distance, largest eigenvalue of M_λ, growth, stability, extended bound."""
    from rich.table import Table

    table = Table(title="Weakly-local unlearning: GA on X_U + λ · GD on retain sample")
    if sweep:
        table.caption = (
            f"ν_max(M_λ) ≥ ν_∞ = {sweep[0]['nu_limit']:.4g} for every λ (growth (1+ν_∞)² > 1 persists); "
            f"λ ≤ {sweep[0]['lambda_stable_sufficient']:.3g} is stable"
        )
    for col in ("λ", "log10 d(T)", "ν_max(M_λ)", "growth measured", "stable", "bound holds"):
        table.add_column(col, justify="right")
    for w in sweep:
        holds = "—" if w["bound"] is None else str(w["bound"]["holds_for_all_t_ge_t_start"])
        table.add_row(
            f"{w['lambda']:g}",
            f"{w['log10_final_d']:.4g}",
            f"{w['nu_max']:.4g}",
            f"{w['growth_rate_measured']:.4g}",
            str(w["stable"]),
            holds,
        )
    return table
