"""The paper's Section 3, executable: staged linear regression and gradient-ascent unlearning.

Two models are trained on the same two stages in opposite orders (θ_AB, θ_BA) by proximal ridge
regression (Eq. 1), then unlearned by gradient ascent on a forget set X_U. Theorem 3.1 says their
retrain-equivalence distance grows at least like (1 + ρ*)^{2t}; this module computes every
quantity of the theorem, checks Lemma 3.2 and the bound numerically, and runs the linear analogue
of the LLM study (forget stage U at each position, a retrain model, weakly-local unlearning).

Notation (shapes): d features, X ∈ R^{n×d} a stage's inputs, y ∈ R^n its targets, θ ∈ R^d,
X_U ∈ R^{k×d} the forget set, X_test ∈ R^{m×d} the test set. Everything is float64 numpy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, get_args

import numpy as np
from pydantic import BeforeValidator, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from pathunlearn.config import StrictModel, builtin_config_path, load_model_config
from pathunlearn.errors import ConfigError

MAX_D = 4000  # the theorem's matrices are d×d; beyond this the run stops being "seconds"
GD_MAX_ITERATIONS = 200_000  # the gradient-descent cross-check is skipped past this estimate
OVERFLOW_LIMIT = 1e250  # distances past this are reported as an overflow (float64 ends at 1e308)
GD_TOL = 1e-11  # certified distance of a gradient-descent stage to its minimiser, relative


# ---------------------------------------------------------------------------- parameters


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # float would take YAML `true` as 1.0
        raise ValueError("must be a number, not true/false")
    return value


Int = Annotated[int, Field(strict=True)]
"""An integer; YAML `true` and `2.0` are rejected."""
Real = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]
"""A finite number (ints accepted); YAML `true` is rejected."""
Distribution = Literal["gaussian", "uniform"]
DISTRIBUTIONS: tuple[str, ...] = get_args(Distribution)


class TheoryParams(StrictModel):
    """Every knob of the linear theory run, validated on construction (read from YAML and
    overrides by :func:`load_params`, whose errors are one ConfigError line naming the key)."""

    d: Int = Field(100, le=MAX_D)
    """Number of features; must exceed n_a + n_b + n_u (overparameterised)."""
    n_a: Int = Field(20, ge=1)
    """Rows of stage A."""
    n_b: Int = Field(20, ge=1)
    """Rows of stage B."""
    n_u: Int = Field(10, ge=1)
    """Rows of stage U, the forget stage of the three-position experiment."""
    forget: Literal["A", "B"] = "B"
    """Which stage of the two-stage theorem is unlearned: "A" or "B"."""
    k: Int | None = Field(None, ge=1)
    """Forget-set size: X_U is the first k rows of the forget stage (None: all of them)."""
    m: Int = Field(50, ge=1)
    """Test-set rows (half drawn like stage A, half like stage B); must be >= k."""
    mu_a: Real = Field(1.0, gt=0)
    """Proximal weight μ of stage A in L(θ) = ‖Xθ − y‖² + μ‖θ − θ_prev‖²."""
    mu_b: Real = Field(1.0, gt=0)
    """Proximal weight μ of stage B."""
    mu_u: Real = Field(1.0, gt=0)
    """Proximal weight μ of stage U (three-position experiment)."""
    eta: Real = Field(0.01, gt=0)
    """Unlearning step size η."""
    steps: Int = Field(60, ge=2)
    """Number of unlearning steps T."""
    dist_a: Distribution = "gaussian"
    """Feature distribution of stage A: "gaussian" or "uniform"."""
    shift_a: Real = 0.0
    """Mean of every feature of stage A."""
    scale_a: Real = Field(1.0, gt=0)
    """Standard deviation of every feature of stage A."""
    dist_b: Distribution = "uniform"
    """Feature distribution of stage B."""
    shift_b: Real = 0.2
    """Mean of every feature of stage B."""
    scale_b: Real = Field(1.0, gt=0)
    """Standard deviation of every feature of stage B."""
    dist_u: Distribution = "gaussian"
    """Feature distribution of stage U."""
    shift_u: Real = -0.2
    """Mean of every feature of stage U."""
    scale_u: Real = Field(0.8, gt=0)
    """Standard deviation of every feature of stage U."""
    noise: Real = Field(0.1, ge=0)
    """Standard deviation of the label noise: y = X θ_true + noise · ξ."""
    epsilon: Real = Field(1.0, gt=0)
    """Retrain-equivalence tolerance ε of Corollary 1."""
    lambdas: tuple[Annotated[Real, Field(ge=0)], ...] = (0.0, 1.0, 2.0, 4.0, 8.0)
    """Retain weights λ of the weakly-local sweep."""
    n_retain: Int | None = Field(None, ge=1)
    """Retain-sample rows for the weakly-local sweep, drawn from the rows not forgotten (None: all)."""
    seed: Int = Field(0, ge=0)
    """Seed of every random draw."""

    @model_validator(mode="after")
    def _fits_the_theorem(self) -> TheoryParams:
        """The hypotheses that tie fields together: d > n, k <= rows of the forget stage (so
        k < d), m >= k, and a retain sample no larger than the rows not forgotten."""
        n_total = self.n_a + self.n_b + self.n_u
        if self.d <= n_total:
            _invalid("d", self.d, f"must exceed n_a + n_b + n_u = {n_total} (overparameterised, "
                                  f"d > n): raise d or lower the row counts; got {self.d}")
        n_forget = self.n_a if self.forget == "A" else self.n_b
        k = self.forget_rows
        if k > n_forget:
            _invalid("k", self.k, f"must be in 1..{n_forget} (rows of stage {self.forget}), or "
                                  f"null for all of them; got {k}")
        if self.m < k:
            _invalid("m", self.m, f"must be >= k = {k} so that X_test P_U has rank k: raise m "
                                  f"or lower k; got {self.m}")
        pool = self.n_a + self.n_b - k
        if self.n_retain is not None and self.n_retain > pool:
            _invalid("n_retain", self.n_retain, f"must be in 1..{pool} (rows of A and B not "
                                                f"forgotten), or null for all of them; "
                                                f"got {self.n_retain}")
        return self

    @property
    def forget_rows(self) -> int:
        """k, with None resolved to every row of the forget stage."""
        n_forget = self.n_a if self.forget == "A" else self.n_b
        return n_forget if self.k is None else self.k


def _invalid(key: str, value: Any, why: str) -> NoReturn:
    """Fail validation at `key`, so that the one-line error names it (not the top level): a
    ValidationError raised inside a validator keeps its own location."""
    error = PydanticCustomError("theory_params", "{why}", {"why": why})
    raise ValidationError.from_exception_data(
        "TheoryParams", [InitErrorDetails(type=error, loc=(key,), input=value)]
    )


def load_params(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TheoryParams:
    """TheoryParams from a YAML file (None: the built-in configs/theory.yaml) and ``key=value``
    overrides (values parsed as YAML, applied over the file), validated once by the package's
    config loader; every problem is one ConfigError line naming the file and the key."""
    return load_model_config(TheoryParams, path or builtin_config_path("theory"), overrides)


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Stage:
    """One training stage: inputs X (n, d), targets y (n,), proximal weight μ."""

    name: str
    X: np.ndarray
    y: np.ndarray
    mu: float


@dataclass(frozen=True)
class Problem:
    """The drawn data: stages A, B, U, the test set and the teacher θ_true."""

    stages: dict[str, Stage]
    X_test: np.ndarray  # (m, d)
    theta_true: np.ndarray  # (d,)


def sample_features(
    rng: np.random.Generator, n: int, d: int, kind: str, shift: float, scale: float
) -> np.ndarray:
    """i.i.d. features with mean `shift` and standard deviation `scale`, shape (n, d).

    gaussian: N(shift, scale²); uniform: U[shift − √3·scale, shift + √3·scale].
    """
    if kind == "gaussian":
        return rng.normal(shift, scale, size=(n, d))
    if kind == "uniform":
        half = math.sqrt(3.0) * scale
        return rng.uniform(shift - half, shift + half, size=(n, d))
    raise ConfigError(f"distribution {kind!r}: must be one of {', '.join(DISTRIBUTIONS)}")


def draw_problem(p: TheoryParams) -> Problem:
    """Draw stages and test set; y = X θ_true + noise·ξ with θ_true ~ N(0, I/d).

    Each array has its own child seed, so changing n_u leaves X_A, X_B unchanged.
    """
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(p.seed).spawn(6)]
    theta_true = rngs[0].normal(0.0, 1.0 / math.sqrt(p.d), size=p.d)
    specs = {
        "A": (p.n_a, p.dist_a, p.shift_a, p.scale_a, p.mu_a),
        "B": (p.n_b, p.dist_b, p.shift_b, p.scale_b, p.mu_b),
        "U": (p.n_u, p.dist_u, p.shift_u, p.scale_u, p.mu_u),
    }
    stages = {}
    for rng, (name, (n, kind, shift, scale, mu)) in zip(rngs[1:4], specs.items(), strict=True):
        X = sample_features(rng, n, p.d, kind, shift, scale)
        y = X @ theta_true + p.noise * rng.normal(size=n)
        stages[name] = Stage(name, X, y, mu)
    m_a = (p.m + 1) // 2
    X_test = np.vstack(
        [
            sample_features(rngs[4], m_a, p.d, p.dist_a, p.shift_a, p.scale_a),
            sample_features(rngs[5], p.m - m_a, p.d, p.dist_b, p.shift_b, p.scale_b),
        ]
    )
    return Problem(stages, X_test, theta_true)


# ---------------------------------------------------------------------------- training


def stage_closed_form(
    X: np.ndarray, y: np.ndarray, theta_prev: np.ndarray, mu: float
) -> np.ndarray:
    """Minimiser of L(θ) = ‖Xθ − y‖² + μ‖θ − θ_prev‖² (the paper's Eq. 1).

    θ = (XᵀX + μI)⁻¹(Xᵀy + μθ_prev) = θ_prev + Xᵀ(XXᵀ + μI)⁻¹(y − Xθ_prev);
    the second (push-through) form solves an n×n system instead of a d×d one.
    """
    n = X.shape[0]
    residual = y - X @ theta_prev  # (n,)
    return theta_prev + X.T @ np.linalg.solve(X @ X.T + mu * np.eye(n), residual)


def stage_gradient_descent(
    X: np.ndarray, y: np.ndarray, theta_prev: np.ndarray, mu: float, tol: float = GD_TOL
) -> np.ndarray:
    """Minimise L(θ) = ‖Xθ − y‖² + μ‖θ − θ_prev‖² by gradient descent from θ_prev.

    ∇L = 2Xᵀ(Xθ − y) + 2μ(θ − θ_prev); the Hessian 2(XᵀX + μI) has eigenvalues in
    [2μ, 2(σ_max² + μ)], so the step 1/(σ_max² + 2μ) contracts by (κ − 1)/(κ + 1),
    κ = (σ_max² + μ)/μ. Stops when ‖∇L‖/(2μ) — a certified bound on ‖θ − θ*‖ — is
    at most tol·(1 + ‖θ_prev‖).
    """
    sigma_max_sq = np.linalg.norm(X, 2) ** 2
    step = 1.0 / (sigma_max_sq + 2.0 * mu)
    target = tol * (1.0 + np.linalg.norm(theta_prev))
    theta = theta_prev.copy()
    for i in range(gd_iterations_needed(X, mu, tol) * 4 + 100):
        grad = 2.0 * X.T @ (X @ theta - y) + 2.0 * mu * (theta - theta_prev)
        if i % 16 == 0 and math.sqrt(grad @ grad) / (2.0 * mu) <= target:  # checks are costly
            return theta
        theta -= step * grad
    raise RuntimeError(f"gradient descent did not converge (mu={mu})")  # a bug: κ bounds it


def gd_iterations_needed(X: np.ndarray, mu: float, tol: float = GD_TOL) -> int:
    """Rough iteration count of stage_gradient_descent: (κ + 1)/2 · ln(1/tol) (+ a margin)."""
    kappa = (np.linalg.norm(X, 2) ** 2 + mu) / mu
    return int(math.ceil((kappa + 1.0) / 2.0 * math.log(1e4 / tol)))


Solver = Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]


def train_path(stages: Sequence[Stage], d: int, solver: Solver = stage_closed_form) -> np.ndarray:
    """θ after training stage after stage from θ₀ = 0 (each stage's μ pulls toward the last θ)."""
    theta = np.zeros(d)
    for stage in stages:
        theta = solver(stage.X, stage.y, theta, stage.mu)
    return theta


# ---------------------------------------------------------------------------- unlearning


def unlearn(
    theta0: np.ndarray,
    X_u: np.ndarray,
    y_u: np.ndarray,
    eta: float,
    steps: int,
    lam: float = 0.0,
    X_r: np.ndarray | None = None,
    y_r: np.ndarray | None = None,
) -> np.ndarray:
    """Gradient ascent on the forget set, optionally plus λ·descent on a retain sample.

    θ_t = θ_{t−1} + η ∇(1/k)‖X_U θ − y_U‖² − λη ∇(1/r)‖X_R θ − y_R‖², with
    ∇(1/k)‖X_U θ − y_U‖² = (2/k) X_Uᵀ(X_U θ − y_U). λ = 0 is the paper's local GA.
    Returns the trajectory θ_0..θ_T, shape (T + 1, d).
    """
    k = X_u.shape[0]
    thetas = np.empty((steps + 1, theta0.size))
    thetas[0] = theta0
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(1, steps + 1):
            theta = thetas[t - 1]
            grad = (2.0 / k) * X_u.T @ (X_u @ theta - y_u)
            if lam > 0:
                grad -= lam * (2.0 / X_r.shape[0]) * X_r.T @ (X_r @ theta - y_r)
            thetas[t] = theta + eta * grad
    return thetas


def re_distance(X_test: np.ndarray, thetas_1: np.ndarray, thetas_2: np.ndarray) -> np.ndarray:
    """Retrain-equivalence distance (Def. 2.1) of linear models: (1/m)‖X_test(θ₁ − θ₂)‖².

    Broadcasts over leading axes: (T + 1, d) trajectories give (T + 1,) distances.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        preds = (thetas_1 - thetas_2) @ X_test.T  # (..., m)
        return np.mean(preds**2, axis=-1)


def ascent_matrix(X_u: np.ndarray, eta: float) -> np.ndarray:
    """M_U = (2η/k) X_Uᵀ X_U, so that Δθ_t = (I + M_U) Δθ_{t−1} (Lemma 3.2)."""
    return (2.0 * eta / X_u.shape[0]) * X_u.T @ X_u


def weakly_local_matrix(X_u: np.ndarray, X_r: np.ndarray, eta: float, lam: float) -> np.ndarray:
    """M_λ = M_U − λ M_R = (2η/k) X_UᵀX_U − λ(2η/r) X_RᵀX_R; Δθ_t = (I + M_λ)^t Δθ₀."""
    return ascent_matrix(X_u, eta) - lam * ascent_matrix(X_r, eta)


def lemma_32_prediction(M: np.ndarray, dtheta0: np.ndarray, steps: int) -> np.ndarray:
    """Δθ_t = (I + M)^t Δθ₀ for t = 0..T, one multiplication by I + M per step.

    Shape (T + 1, d). Uses no data but M: the y_U terms cancel between the two models.
    """
    deltas = np.empty((steps + 1, dtheta0.size))
    deltas[0] = dtheta0
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(1, steps + 1):
            deltas[t] = deltas[t - 1] + M @ deltas[t - 1]
    return deltas


# ---------------------------------------------------------------------------- theorem 3.1


def row_space_projector(X_u: np.ndarray) -> np.ndarray:
    """P_U = X_Uᵀ(X_U X_Uᵀ)⁻¹X_U, the orthogonal projector onto the row space of X_U."""
    return X_u.T @ np.linalg.solve(X_u @ X_u.T, X_u)


def growing_projector(M: np.ndarray) -> np.ndarray:
    """P_+ = projector onto the eigenvectors of symmetric M with eigenvalue > 0.

    For M = M_U this is P_U; for the weakly-local M_λ it is the subspace that grows under
    I + M_λ (our extension of Theorem 3.1, valid when every eigenvalue of M_λ is >= −2).
    """
    return positive_eigenspace(*np.linalg.eigh(M))


def positive_eigenspace(nu: np.ndarray, V: np.ndarray) -> np.ndarray:
    """V₊V₊ᵀ for the columns of V whose eigenvalue ν exceeds 1e-12·max|ν| (rounding noise)."""
    keep = nu > 1e-12 * max(np.abs(nu).max(), 1e-300)
    return V[:, keep] @ V[:, keep].T


@dataclass(frozen=True)
class BoundQuantities:
    """The quantities of Theorem 3.1 for one pair of models and one unlearning matrix M."""

    dtheta0: np.ndarray  # Δθ₀ = θ_AB − θ_BA, (d,)
    P: np.ndarray  # projector P_U (or P_+), (d, d)
    M: np.ndarray  # M_U (or M_λ), (d, d)
    rho_star: float  # ⟨PΔθ₀, M PΔθ₀⟩ / ‖PΔθ₀‖²
    sigma: float  # σ_U = smallest non-zero singular value of X_test P
    C0: float  # ‖X_test‖_op ‖(I − P)Δθ₀‖
    t0: int  # ⌈log(2C₀ / (σ_U‖PΔθ₀‖)) / log(1 + ρ*)⌉, may be negative
    norm_p: float  # ‖PΔθ₀‖
    norm_perp: float  # ‖(I − P)Δθ₀‖
    m: int  # test-set rows

    @property
    def t_start(self) -> int:
        """First step the bound is claimed for: max(t₀, 0)."""
        return max(self.t0, 0)


def bound_quantities(
    M: np.ndarray, P: np.ndarray, dtheta0: np.ndarray, X_test: np.ndarray
) -> BoundQuantities:
    """ρ*, σ_U, C₀ and t₀ of Theorem 3.1 from M, its growing projector P, Δθ₀ and X_test.

    ρ* = ⟨PΔθ₀, M PΔθ₀⟩/‖PΔθ₀‖²; σ_U = σ_r(X_test P) with r = rank P;
    C₀ = ‖X_test‖_op‖(I − P)Δθ₀‖; t₀ = ⌈log(2C₀/(σ_U‖PΔθ₀‖)) / log(1 + ρ*)⌉.
    """
    v = P @ dtheta0
    perp = dtheta0 - v
    norm_p, norm_perp = float(np.linalg.norm(v)), float(np.linalg.norm(perp))
    rho_star = float(v @ M @ v / (v @ v)) if norm_p > 0 else 0.0
    rank = int(round(np.trace(P)))
    singular = np.linalg.svd(X_test @ P, compute_uv=False)
    sigma = float(singular[rank - 1]) if rank >= 1 else 0.0
    C0 = float(np.linalg.norm(X_test, 2) * norm_perp)
    t0 = _t0(C0, sigma, norm_p, rho_star)
    return BoundQuantities(
        dtheta0, P, M, rho_star, sigma, C0, t0, norm_p, norm_perp, X_test.shape[0]
    )


def _t0(C0: float, sigma: float, norm_p: float, rho_star: float) -> int:
    """t₀ = ⌈log(2C₀/(σ_U‖P_UΔθ₀‖)) / log(1 + ρ*)⌉; C₀ = 0 gives −∞, reported as 0."""
    if C0 == 0.0:
        return 0
    if sigma * norm_p == 0.0 or rho_star <= 0.0:
        raise ConfigError("the theorem is vacuous here: P_U Δθ₀ = 0 or σ_U = 0 (try another seed)")
    return math.ceil(math.log(2.0 * C0 / (sigma * norm_p)) / math.log1p(rho_star))


def log10_bound(q: BoundQuantities, t: np.ndarray) -> np.ndarray:
    """log₁₀ of σ_U²‖P_UΔθ₀‖²(1 + ρ*)^{2t}/(4m), computed in logs so it never overflows."""
    prefactor = 2.0 * math.log10(q.sigma * q.norm_p) - math.log10(4.0 * q.m)
    return prefactor + 2.0 * np.asarray(t, dtype=float) * math.log10(1.0 + q.rho_star)


def corollary_t_star(q: BoundQuantities, epsilon: float) -> float:
    """Corollary 1: t* = max((log(16mε) − log(σ_U²‖P_UΔθ₀‖²)) / (2 log(1 + ρ*)), t₀).

    For t >= t*, one of θ_AB^t, θ_BA^t is farther than ε from any θ_r (triangle inequality).
    """
    t = (math.log(16.0 * q.m * epsilon) - math.log(q.sigma**2 * q.norm_p**2)) / (
        2.0 * math.log1p(q.rho_star)
    )
    return max(t, float(q.t0))


def measured_growth(distances: np.ndarray, start: int) -> float:
    """Per-step growth factor of d_t: exp of the least-squares slope of ln d_t over t >= start."""
    start = min(max(start, 0), distances.size - 2)
    t = np.arange(start, distances.size)
    slope = np.polyfit(t, np.log(distances[start:]), 1)[0]
    return float(np.exp(slope))


def check_full_row_rank(X_u: np.ndarray) -> int:
    """rank(X_U); the theorem needs k (full row rank) — raise ConfigError otherwise."""
    rank = int(np.linalg.matrix_rank(X_u))
    if rank < X_u.shape[0]:
        raise ConfigError(f"k: X_U has rank {rank} < k={X_u.shape[0]}; it must be full row rank")
    return rank


def _require_finite(arrays: Sequence[np.ndarray], what: str) -> None:
    """ConfigError unless every value is finite and below OVERFLOW_LIMIT (plots need headroom)."""
    for a in arrays:
        with np.errstate(invalid="ignore"):
            if not (np.all(np.isfinite(a)) and np.max(np.abs(a)) < OVERFLOW_LIMIT):
                raise ConfigError(f"{what}: unlearning overflows float64; lower eta or steps")


# ---------------------------------------------------------------------------- the two-stage run


@dataclass(frozen=True)
class TheoremRun:
    """θ_AB, θ_BA unlearned on X_U: the distances over t and every quantity of Theorem 3.1."""

    q: BoundQuantities
    distances: np.ndarray  # d(θ_AB^t, θ_BA^t), (T + 1,)
    log10_bound: np.ndarray  # (T + 1,)
    lemma_rel_error: float  # max_t ‖Δθ_t − (I + M_U)^tΔθ₀‖ / ‖(I + M_U)^tΔθ₀‖
    growth_measured: float
    growth_asymptotic: float  # (1 + ν_max(M_U))²
    x_u: np.ndarray  # the forget set X_U, (k, d)
    rank_x_u: int
    t_star: float
    corollary_holds: bool | None  # None when t* > T
    retrain_distances: np.ndarray  # (2, T + 1): d(θ_AB^t, θ_r), d(θ_BA^t, θ_r)
    gd: dict[str, Any] = field(default_factory=dict)

    @property
    def bound_holds(self) -> np.ndarray:
        """d_t >= bound_t for each t >= t_start, shape (T + 1 − t_start,)."""
        return bound_holds(self.distances, self.log10_bound)[self.q.t_start :]


def bound_holds(distances: np.ndarray, log10_bounds: np.ndarray) -> np.ndarray:
    """d_t >= bound_t elementwise, allowing 1e-9 relative rounding: log₁₀ d >= log₁₀ b − 1e-9/ln 10."""
    with np.errstate(divide="ignore"):
        return np.log10(distances) >= log10_bounds - 1e-9 / math.log(10.0)


def forget_split(p: TheoryParams, problem: Problem) -> tuple[Stage, Stage]:
    """(forgotten rows, remaining rows) of the forget stage: X_U is its first k rows."""
    stage = problem.stages[p.forget]
    k = p.forget_rows
    forgotten = Stage(f"{stage.name}[:{k}]", stage.X[:k], stage.y[:k], stage.mu)
    kept = Stage(f"{stage.name}[{k}:]", stage.X[k:], stage.y[k:], stage.mu)
    return forgotten, kept


def retrain_model(p: TheoryParams, problem: Problem) -> np.ndarray:
    """θ_r: stages A, B in that order with the forgotten rows removed (empty stages skipped)."""
    _, kept = forget_split(p, problem)
    stages = [kept if name == p.forget else problem.stages[name] for name in ("A", "B")]
    return train_path([s for s in stages if s.X.shape[0] > 0], p.d)


def run_theorem(p: TheoryParams, problem: Problem) -> TheoremRun:
    """Train θ_AB and θ_BA (Eq. 1), unlearn both by GA on X_U, check Lemma 3.2 and Theorem 3.1."""
    A, B = problem.stages["A"], problem.stages["B"]
    forgotten, _ = forget_split(p, problem)
    X_u, y_u = forgotten.X, forgotten.y
    rank = check_full_row_rank(X_u)
    thetas_ab = unlearn(train_path([A, B], p.d), X_u, y_u, p.eta, p.steps)
    thetas_ba = unlearn(train_path([B, A], p.d), X_u, y_u, p.eta, p.steps)
    theta_r = retrain_model(p, problem)
    M = ascent_matrix(X_u, p.eta)
    dtheta0 = thetas_ab[0] - thetas_ba[0]
    q = bound_quantities(M, row_space_projector(X_u), dtheta0, problem.X_test)
    distances = re_distance(problem.X_test, thetas_ab, thetas_ba)
    retrain = np.stack([re_distance(problem.X_test, th, theta_r) for th in (thetas_ab, thetas_ba)])
    _require_finite([distances, retrain], f"eta={p.eta}, steps={p.steps}")
    t = np.arange(p.steps + 1)
    t_star = corollary_t_star(q, p.epsilon)
    return TheoremRun(
        q=q,
        distances=distances,
        log10_bound=log10_bound(q, t),
        lemma_rel_error=lemma_error(
            thetas_ab - thetas_ba, lemma_32_prediction(M, dtheta0, p.steps)
        ),
        growth_measured=measured_growth(distances, q.t_start),
        growth_asymptotic=float((1.0 + top_eigenvalue(X_u, p.eta)) ** 2),
        x_u=X_u,
        rank_x_u=rank,
        t_star=t_star,
        corollary_holds=_corollary_holds(retrain, t_star, p.epsilon),
        retrain_distances=retrain,
        gd=gd_cross_check(p, problem),
    )


def lemma_error(simulated: np.ndarray, predicted: np.ndarray) -> float:
    """max_t ‖simulated_t − predicted_t‖ / ‖predicted_t‖ over the trajectory (T + 1, d)."""
    num = np.linalg.norm(simulated - predicted, axis=1)
    den = np.linalg.norm(predicted, axis=1)
    return float(np.max(num / np.where(den > 0, den, 1.0)))


def _corollary_holds(retrain: np.ndarray, t_star: float, epsilon: float) -> bool | None:
    """max(d(θ_AB^t, θ_r), d(θ_BA^t, θ_r)) > ε for every t >= t* (None if t* is past T)."""
    first = max(math.ceil(t_star), 0)
    if first >= retrain.shape[1]:
        return None
    return bool(np.all(retrain[:, first:].max(axis=0) > epsilon))


def gd_cross_check(p: TheoryParams, problem: Problem) -> dict[str, Any]:
    """θ_AB, θ_BA by gradient descent vs closed form: max |difference| (skipped if too slow)."""
    A, B = problem.stages["A"], problem.stages["B"]
    needed = max(gd_iterations_needed(s.X, s.mu) for s in (A, B))
    if needed > GD_MAX_ITERATIONS:
        return {"skipped": f"ill-conditioned (~{needed} iterations); raise mu_a/mu_b to run it"}
    diffs = []
    for path in ([A, B], [B, A]):
        closed = train_path(path, p.d)
        descent = train_path(path, p.d, solver=stage_gradient_descent)
        diffs.append(float(np.max(np.abs(closed - descent))))
    return {"max_abs_diff": max(diffs), "iterations_estimate": needed}


# ---------------------------------------------------------------------------- three positions


POSITION_PATHS = (("U", "A", "B"), ("A", "U", "B"), ("A", "B", "U"))  # stage U at 1, 2, 3


@dataclass(frozen=True)
class PositionsRun:
    """Stage U at positions 1, 2, 3, a retrain model on A, B, then GA on U (the LLM study)."""

    labels: tuple[str, ...]
    pairwise: np.ndarray  # d(θ_i^t, θ_j^t), (T + 1, 3, 3)
    to_retrain: np.ndarray  # d(θ_i^t, θ_r), (3, T + 1)
    forget_loss: np.ndarray  # (1/n_u)‖X_U θ_i^t − y_U‖², (3, T + 1)
    retain_loss: np.ndarray  # mean squared error on A ∪ B, (3, T + 1)


def run_positions(p: TheoryParams, problem: Problem) -> PositionsRun:
    """Train the three paths and the retrain path A-B, unlearn U by GA, track distances and losses."""
    U = problem.stages["U"]
    theta_r = train_path([problem.stages["A"], problem.stages["B"]], p.d)
    trajectories = np.stack(
        [
            unlearn(train_path([problem.stages[s] for s in path], p.d), U.X, U.y, p.eta, p.steps)
            for path in POSITION_PATHS
        ]
    )  # (3, T + 1, d)
    X_retain = np.vstack([problem.stages["A"].X, problem.stages["B"].X])
    y_retain = np.concatenate([problem.stages["A"].y, problem.stages["B"].y])
    pairwise = re_distance(problem.X_test, trajectories[:, None], trajectories[None, :])
    run = PositionsRun(
        labels=tuple("-".join(path) for path in POSITION_PATHS),
        pairwise=np.moveaxis(pairwise, -1, 0),
        to_retrain=re_distance(problem.X_test, trajectories, theta_r),
        forget_loss=mean_squared_error(U.X, U.y, trajectories),
        retain_loss=mean_squared_error(X_retain, y_retain, trajectories),
    )
    arrays = [run.pairwise, run.to_retrain, run.forget_loss, run.retain_loss]
    _require_finite(arrays, f"eta={p.eta}, steps={p.steps} (stage U)")
    return run


def mean_squared_error(X: np.ndarray, y: np.ndarray, thetas: np.ndarray) -> np.ndarray:
    """(1/n)‖Xθ − y‖² for every θ on the trailing axis: (..., d) → (...)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.mean((thetas @ X.T - y) ** 2, axis=-1)


# ---------------------------------------------------------------------------- weakly local


@dataclass(frozen=True)
class WeaklyLocalRun:
    """θ_AB, θ_BA unlearned by GA on X_U plus λ·descent on a retain sample X_R."""

    lam: float
    distances: np.ndarray  # d(θ_AB^t, θ_BA^t), (T + 1,)
    nu_max: float  # largest eigenvalue of M_λ: the asymptotic per-step growth is (1 + ν_max)²
    nu_min: float  # smallest eigenvalue; < −2 means the descent part itself diverges
    lam_stable: float  # 2/ν_max(M_R): every λ up to this is stable (sufficient, not necessary)
    nu_limit: float  # max of vᵀM_Uv/‖v‖² over v ⟂ row(X_R): ν_max(M_λ) >= this for every λ
    growth_measured: float
    lemma_rel_error: float
    q: BoundQuantities | None  # the bound with P_+ in place of P_U (None if unstable/vacuous)
    log10_bound: np.ndarray | None

    @property
    def stable(self) -> bool:
        """Every eigenvalue of I + M_λ outside the growing subspace lies in [−1, 1]."""
        return self.nu_min >= -2.0


def retain_sample(p: TheoryParams, problem: Problem) -> Stage:
    """The retain rows (A ∪ B minus X_U), shuffled with the run's seed, first n_retain of them."""
    _, kept = forget_split(p, problem)
    other = problem.stages["B" if p.forget == "A" else "A"]
    X = np.vstack([other.X, kept.X])
    y = np.concatenate([other.y, kept.y])
    order = np.random.default_rng([p.seed, 7]).permutation(X.shape[0])[: p.n_retain]
    return Stage("retain", X[order], y[order], 0.0)


def top_eigenvalue(X: np.ndarray, eta: float) -> float:
    """ν_max((2η/n) XᵀX) = (2η/n)‖X‖₂², from the n×d matrix (no d×d eigenproblem)."""
    return float(2.0 * eta / X.shape[0] * np.linalg.norm(X, 2) ** 2)


def retain_proof_growth(X_u: np.ndarray, X_r: np.ndarray, eta: float) -> float:
    """ν_∞ = max over unit v ⟂ row(X_R) of vᵀM_U v = (2η/k) λ_max(X_U(I − P_R)X_Uᵀ).

    Since vᵀM_λv = vᵀM_Uv on null(X_R), ν_max(M_λ) >= ν_∞ for every λ, and ν_max(M_λ) → ν_∞
    as λ → ∞: no retain weight pushes the growth factor (1 + ν_max)² below (1 + ν_∞)².
    ν_∞ > 0 unless row(X_U) ⊂ row(X_R) (probability 0 for continuous draws when r < d).
    (I − P_R) is a projector, so the k×k matrix B Bᵀ, B = X_U(I − P_R), has the eigenvalues.
    """
    B = X_u - (X_u @ X_r.T) @ np.linalg.solve(X_r @ X_r.T, X_r)  # (k, d)
    return top_eigenvalue(B, eta) * B.shape[0] / X_u.shape[0]


def run_weakly_local(p: TheoryParams, problem: Problem, lam: float) -> WeaklyLocalRun:
    """Unlearn θ_AB, θ_BA with retain weight λ; Lemma 3.2 becomes Δθ_t = (I + M_λ)^t Δθ₀."""
    A, B = problem.stages["A"], problem.stages["B"]
    forgotten, _ = forget_split(p, problem)
    R = retain_sample(p, problem)
    args = (forgotten.X, forgotten.y, p.eta, p.steps, lam, R.X, R.y)
    thetas_ab = unlearn(train_path([A, B], p.d), *args)
    thetas_ba = unlearn(train_path([B, A], p.d), *args)
    distances = re_distance(problem.X_test, thetas_ab, thetas_ba)
    _require_finite([distances], f"lambdas (λ={lam:g}), eta={p.eta}, steps={p.steps}")
    M = weakly_local_matrix(forgotten.X, R.X, p.eta, lam)
    nu, V = np.linalg.eigh(M)
    dtheta0 = thetas_ab[0] - thetas_ba[0]
    q = None
    if nu[0] >= -2.0:  # the extension's hypothesis; past it the descent part diverges
        try:
            q = bound_quantities(M, positive_eigenspace(nu, V), dtheta0, problem.X_test)
        except ConfigError:  # P_+Δθ₀ = 0: nothing to bound
            q = None
    return WeaklyLocalRun(
        lam=lam,
        distances=distances,
        nu_max=float(nu[-1]),
        nu_min=float(nu[0]),
        lam_stable=2.0 / top_eigenvalue(R.X, p.eta),
        nu_limit=retain_proof_growth(forgotten.X, R.X, p.eta),
        growth_measured=measured_growth(distances, 0 if q is None else q.t_start),
        lemma_rel_error=lemma_error(
            thetas_ab - thetas_ba, lemma_32_prediction(M, dtheta0, p.steps)
        ),
        q=q,
        log10_bound=None if q is None else log10_bound(q, np.arange(p.steps + 1)),
    )


# ---------------------------------------------------------------------------- everything


@dataclass(frozen=True)
class TheoryResult:
    """One full run: parameters, the theorem check, the three-position study, the λ sweep."""

    params: TheoryParams
    theorem: TheoremRun
    positions: PositionsRun
    weakly_local: tuple[WeaklyLocalRun, ...]
    runtime_s: float


def run_theory(p: TheoryParams) -> TheoryResult:
    """Draw the data once and run the two-stage theorem, the three positions and the λ sweep."""
    start = time.perf_counter()
    problem = draw_problem(p)
    theorem = run_theorem(p, problem)
    positions = run_positions(p, problem)
    sweep = tuple(run_weakly_local(p, problem, lam) for lam in p.lambdas)
    return TheoryResult(p, theorem, positions, sweep, time.perf_counter() - start)
