"""Tests of the linear theory (src/pathunlearn/theory/linear.py): hand-checked formulas,
validation, and property tests of Lemma 3.2 and Theorem 3.1 over random dimensions and seeds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from pathunlearn.config import validate_model
from pathunlearn.errors import ConfigError
from pathunlearn.theory import linear as L
from pathunlearn.theory.export import to_json

CONFIG = Path(__file__).parents[2] / "src" / "pathunlearn" / "configs" / "theory.yaml"
# database=None: no .hypothesis/ directory in the checkout; examples are cheap, so 40 each.
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ---------------------------------------------------------------------------- hand-checked


def test_closed_form_solves_the_normal_equations():
    """θ = (XᵀX + μI)⁻¹(Xᵀy + μθ_prev) (Eq. 1), here via the n×n push-through form."""
    rng = np.random.default_rng(0)
    X, y, prev = rng.normal(size=(4, 9)), rng.normal(size=4), rng.normal(size=9)
    theta = L.stage_closed_form(X, y, prev, mu=0.7)
    expected = np.linalg.solve(X.T @ X + 0.7 * np.eye(9), X.T @ y + 0.7 * prev)
    np.testing.assert_allclose(theta, expected, rtol=1e-12, atol=1e-12)


def test_gradient_descent_matches_closed_form():
    rng = np.random.default_rng(1)
    X, y, prev = rng.normal(size=(5, 12)), rng.normal(size=5), rng.normal(size=12)
    np.testing.assert_allclose(
        L.stage_gradient_descent(X, y, prev, 0.5), L.stage_closed_form(X, y, prev, 0.5), atol=1e-9
    )


def test_re_distance_by_hand():
    """(1/m)‖X_test(θ₁ − θ₂)‖²: X_test = I₂, θ₁ − θ₂ = (3, 4) → 25/2."""
    assert L.re_distance(np.eye(2), np.array([3.0, 4.0]), np.zeros(2)) == pytest.approx(12.5)


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_features_have_the_requested_mean_and_std(kind):
    X = L.sample_features(np.random.default_rng(0), 4000, 50, kind, shift=0.3, scale=2.0)
    assert X.mean() == pytest.approx(0.3, abs=0.01)
    assert X.std() == pytest.approx(2.0, rel=0.01)


def hand_example() -> L.BoundQuantities:
    """X_U = e₁ᵀ (k=1), η = 1/2 → M_U = P_U = e₁e₁ᵀ; Δθ₀ = (1, 1, 0); X_test = I₃ (m = 3)."""
    X_u = np.array([[1.0, 0.0, 0.0]])
    M = L.ascent_matrix(X_u, eta=0.5)
    return L.bound_quantities(M, L.row_space_projector(X_u), np.array([1.0, 1.0, 0.0]), np.eye(3))


def test_theorem_quantities_by_hand():
    """ρ* = 1, σ_U = 1, C₀ = ‖I‖·‖(0,1,0)‖ = 1, t₀ = ⌈log(2)/log(2)⌉ = 1, bound = 4^t/12."""
    q = hand_example()
    np.testing.assert_allclose(q.M, np.diag([1.0, 0.0, 0.0]))
    np.testing.assert_allclose(q.P, np.diag([1.0, 0.0, 0.0]))
    assert (q.rho_star, q.sigma, q.C0, q.t0) == pytest.approx((1.0, 1.0, 1.0, 1))
    np.testing.assert_allclose(10 ** L.log10_bound(q, np.arange(4)), 4.0 ** np.arange(4) / 12)


def test_lemma_and_corollary_by_hand():
    """Δθ_t = (2^t, 1, 0), so d_t = (4^t + 1)/3; t* = max(log(16·3·1)/(2 log 2), t₀) = log₂(48)/2."""
    q = hand_example()
    predicted = L.lemma_32_prediction(q.M, q.dtheta0, 3)
    np.testing.assert_allclose(predicted, [[1, 1, 0], [2, 1, 0], [4, 1, 0], [8, 1, 0]], atol=1e-12)
    d = L.re_distance(np.eye(3), predicted, np.zeros(3))
    np.testing.assert_allclose(d, (4.0 ** np.arange(4) + 1) / 3)
    assert L.corollary_t_star(q, epsilon=1.0) == pytest.approx(math.log2(48) / 2)


def test_measured_growth_of_a_geometric_sequence():
    assert L.measured_growth(3.0 * 1.7 ** np.arange(20), start=5) == pytest.approx(1.7)


def test_growing_projector_of_m_u_is_p_u():
    X_u = np.random.default_rng(2).normal(size=(3, 10))
    P = L.row_space_projector(X_u)
    np.testing.assert_allclose(P @ P, P, atol=1e-12)
    assert np.trace(P) == pytest.approx(3)
    np.testing.assert_allclose(L.growing_projector(L.ascent_matrix(X_u, 0.1)), P, atol=1e-10)


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"d": 50}, "d"),  # d = n_a + n_b + n_u: not overparameterised
        ({"k": 21}, "k"),  # more rows than stage B has
        ({"k": 0}, "k"),
        ({"m": 5}, "m"),  # m < k: X_test P_U cannot have rank k
        ({"eta": 0.0}, "eta"),
        ({"steps": 1}, "steps"),
        ({"mu_b": -1.0}, "mu_b"),
        ({"scale_a": 0.0}, "scale_a"),
        ({"dist_b": "cauchy"}, "dist_b"),
        ({"forget": "U"}, "forget"),
        ({"lambdas": (1.0, -2.0)}, "lambdas"),
        ({"n_retain": 99}, "n_retain"),
        ({"d": True}, "d"),  # YAML `true` is not an int
        ({"eta": True}, "eta"),  # nor a number
        ({"eta": "fast"}, "eta"),
        ({"foo": 1}, "foo"),  # unknown key
    ],
)
def test_bad_parameters_raise_one_line_config_error(overrides, key):
    with pytest.raises(ConfigError) as info:
        validate_model(L.TheoryParams, overrides, source="TheoryParams")
    message = str(info.value)
    assert "\n" not in message and f"TheoryParams: {key}" in message  # the key, first


def test_unknown_config_key_is_named(tmp_path):
    path = tmp_path / "theory.yaml"
    path.write_text("d: 120\nlearning_rate: 3\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        L.load_params(path, [])


def test_overrides_override_config(tmp_path):
    path = tmp_path / "theory.yaml"
    path.write_text("d: 120\neta: 0.02\nlambdas: [0, 3]\n")
    p = L.load_params(path, ["eta=0.03"])
    assert (p.d, p.eta, p.lambdas) == (120, 0.03, (0, 3))


@pytest.mark.parametrize(
    ("override", "key"),
    [("d=true", "d"), ("k=500", "k"), ("lambdas=0,1", "lambdas"), ("foo=1", "foo")],
)
def test_bad_override_is_one_line_naming_the_override(override, key):
    # the override as typed is what is wrong (not the packaged theory.yaml it was applied to)
    with pytest.raises(ConfigError) as info:
        L.load_params(None, [override])
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{override}: ")
    assert "theory.yaml" not in message


def test_override_values_are_yaml():
    p = L.load_params(None, ["lambdas=[0,1,2]", "eta=1e-3", "k=null", "forget=A"])
    assert (p.lambdas, p.eta, p.k, p.forget) == ((0.0, 1.0, 2.0), 0.001, None, "A")


def test_shipped_config_documents_the_defaults():
    first_line = CONFIG.read_text().splitlines()[0]
    assert first_line.startswith(
        "# pathunlearn theory src/pathunlearn/configs/theory.yaml --out runs/theory"
    )
    assert L.load_params(CONFIG, []) == L.TheoryParams()
    assert L.load_params(None, []) == L.TheoryParams()  # None: the same built-in file


def test_overflowing_run_is_a_config_error():
    with pytest.raises(ConfigError, match="eta"):
        L.run_theory(L.TheoryParams(eta=5.0, steps=600, lambdas=()))


# ---------------------------------------------------------------------------- the default run


@pytest.fixture(scope="module")
def default_run() -> L.TheoryResult:
    return L.run_theory(L.TheoryParams())


def test_default_run_checks_the_theorem(default_run):
    th = default_run.theorem
    assert th.rank_x_u == default_run.params.forget_rows  # X_U full row rank
    assert 0 <= th.q.t0 < default_run.params.steps  # the bound is exercised, not vacuous
    assert th.bound_holds.all() and th.bound_holds.size > 0
    assert th.lemma_rel_error < 1e-9
    assert th.gd["max_abs_diff"] < 1e-6
    # d grows at least as fast as the bound's rate; at most as fast as the top eigenvalue's
    assert (1 + th.q.rho_star) ** 2 < th.growth_measured <= th.growth_asymptotic
    assert th.corollary_holds is True


def test_three_positions_distance_matrix(default_run):
    pos, T = default_run.positions, default_run.params.steps
    assert pos.pairwise.shape == (T + 1, 3, 3)
    np.testing.assert_array_equal(np.diagonal(pos.pairwise, axis1=1, axis2=2), 0.0)
    np.testing.assert_allclose(pos.pairwise, np.swapaxes(pos.pairwise, 1, 2))
    assert pos.to_retrain.shape == pos.forget_loss.shape == (3, T + 1)
    # recency, linear version: the path that learned U last starts with the best fit of U
    assert np.argmin(pos.forget_loss[:, 0]) == pos.labels.index("A-B-U")
    assert np.all(pos.pairwise[-1][~np.eye(3, dtype=bool)] > 100 * pos.pairwise[0].max())


def test_weakly_local_sweep(default_run):
    """λ > 0 changes d, lowers ν_max(M_λ) (Weyl) but never below ν_∞ > 0: divergence persists."""
    sweep = default_run.weakly_local
    assert [w.lam for w in sweep] == list(default_run.params.lambdas)
    base = sweep[0]
    assert base.lam == 0 and base.nu_max == pytest.approx(
        default_run.theorem.growth_asymptotic**0.5 - 1
    )
    for w in sweep[1:]:
        assert not np.allclose(w.distances[1:], base.distances[1:], rtol=1e-6)
    nu = [w.nu_max for w in sweep]
    assert all(a >= b - 1e-12 for a, b in zip(nu, nu[1:], strict=False))
    assert all(w.nu_max >= w.nu_limit - 1e-12 > 0 for w in sweep)
    for w in sweep:
        assert w.lemma_rel_error < 1e-9
        assert w.stable and w.q is not None
        assert L.bound_holds(w.distances, w.log10_bound)[w.q.t_start :].all()


def test_to_json_has_every_quantity(default_run):
    out = to_json(default_run)
    th = out["theorem"]
    for key in ("delta_theta_0", "P_U", "M_U", "rho_star", "sigma_U", "C0", "t0", "corollary_1"):
        assert key in th
    assert len(th["delta_theta_0"]) == default_run.params.d
    assert th["P_U"]["rank"] == default_run.params.forget_rows
    assert len(out["table"]) == default_run.params.steps + 1
    assert "matrix" in to_json(default_run, matrices=True)["theorem"]["M_U"]


# ---------------------------------------------------------------------------- properties


@st.composite
def theory_params(draw) -> L.TheoryParams:
    """Small random problems that satisfy the theorem's hypotheses by construction."""
    n_a, n_b, n_u = (draw(st.integers(1, 6)) for _ in range(3))
    d = draw(st.integers(n_a + n_b + n_u + 1, 40))
    forget = draw(st.sampled_from(["A", "B"]))
    k = draw(st.integers(1, n_a if forget == "A" else n_b))
    dists = st.sampled_from(["gaussian", "uniform"])
    return L.TheoryParams(
        d=d,
        n_a=n_a,
        n_b=n_b,
        n_u=n_u,
        forget=forget,
        k=k,
        m=draw(st.integers(k, k + 10)),
        mu_a=draw(st.floats(0.5, 5.0)),
        mu_b=draw(st.floats(0.5, 5.0)),
        eta=draw(st.floats(0.002, 0.05)),
        dist_a=draw(dists),
        dist_b=draw(dists),
        shift_b=draw(st.floats(-0.5, 0.5)),
        scale_b=draw(st.floats(0.5, 2.0)),
        lambdas=(),
        seed=draw(st.integers(0, 2**20)),
    )


def trained_pair(p: L.TheoryParams) -> tuple[L.Problem, np.ndarray, np.ndarray, L.Stage]:
    problem = L.draw_problem(p)
    A, B = problem.stages["A"], problem.stages["B"]
    forgotten, _ = L.forget_split(p, problem)
    return problem, L.train_path([A, B], p.d), L.train_path([B, A], p.d), forgotten


def assert_hypotheses(p: L.TheoryParams, X_u: np.ndarray) -> None:
    """The theorem's hypotheses, checked rather than assumed: d > n, k < d, X_U full row rank."""
    assert p.d > p.n_a + p.n_b
    assert X_u.shape == (p.forget_rows, p.d) and p.forget_rows < p.d
    assert np.linalg.matrix_rank(X_u) == p.forget_rows
    assert p.m >= p.forget_rows


def check_bound(M, P, dtheta0, X_test, simulate) -> None:
    """Simulate to t_start + 10 steps; the bound must hold at every t in [max(t₀, 0), T]."""
    q = L.bound_quantities(M, P, dtheta0, X_test)
    note(f"rho*={q.rho_star:.3g} sigma={q.sigma:.3g} C0={q.C0:.3g} t0={q.t0}")
    # A far-off t₀ would need hundreds of exponentially growing steps (float64 overflow).
    assume(q.t_start <= 150)
    T = q.t_start + 10
    distances = simulate(T)
    assume(np.all(distances < 1e250))  # reason: the growth overflows float64 before T
    holds = L.bound_holds(distances, L.log10_bound(q, np.arange(T + 1)))
    assert holds[q.t_start :].all(), np.flatnonzero(~holds)


@PROPERTY
@given(theory_params())
def test_lemma_32_and_theorem_31(p):
    problem, theta_ab, theta_ba, U = trained_pair(p)
    assert_hypotheses(p, U.X)
    dtheta0 = theta_ab - theta_ba
    P = L.row_space_projector(U.X)
    # reason: with P_UΔθ₀ = 0 the theorem is vacuous (ρ*, t₀ undefined)
    assume(np.linalg.norm(P @ dtheta0) > 1e-8 * np.linalg.norm(dtheta0))
    M = L.ascent_matrix(U.X, p.eta)

    def simulate(T):
        thetas = [L.unlearn(th, U.X, U.y, p.eta, T) for th in (theta_ab, theta_ba)]
        return L.re_distance(problem.X_test, *thetas)

    steps = 30
    simulated = L.unlearn(theta_ab, U.X, U.y, p.eta, steps) - L.unlearn(
        theta_ba, U.X, U.y, p.eta, steps
    )
    assert L.lemma_error(simulated, L.lemma_32_prediction(M, dtheta0, steps)) < 1e-9
    check_bound(M, P, dtheta0, problem.X_test, simulate)


@PROPERTY
@given(theory_params(), st.floats(0.0, 1.0))
def test_weakly_local_extension(p, fraction):
    """With λ in the stable range, Δθ_t = (I + M_λ)^tΔθ₀ and the bound holds with P_+ for P_U."""
    problem, theta_ab, theta_ba, U = trained_pair(p)
    assert_hypotheses(p, U.X)
    R = L.retain_sample(p, problem)
    lam_stable = 2.0 / np.linalg.eigvalsh(L.ascent_matrix(R.X, p.eta))[-1]
    lam = fraction * lam_stable
    M = L.weakly_local_matrix(U.X, R.X, p.eta, lam)
    assert np.linalg.eigvalsh(M)[0] >= -2.0 - 1e-12  # the stability hypothesis
    P = L.growing_projector(M)
    dtheta0 = theta_ab - theta_ba
    assume(np.linalg.norm(P @ dtheta0) > 1e-8 * np.linalg.norm(dtheta0))  # reason: vacuous

    def trajectories(T):
        return [L.unlearn(th, U.X, U.y, p.eta, T, lam, R.X, R.y) for th in (theta_ab, theta_ba)]

    ab, ba = trajectories(30)
    assert L.lemma_error(ab - ba, L.lemma_32_prediction(M, dtheta0, 30)) < 1e-9
    assert np.linalg.eigvalsh(M)[-1] >= L.retain_proof_growth(U.X, R.X, p.eta) - 1e-12 > 0
    check_bound(
        M, P, dtheta0, problem.X_test, lambda T: L.re_distance(problem.X_test, *trajectories(T))
    )


@PROPERTY
@given(theory_params())
def test_closed_form_equals_gradient_descent(p):
    problem = L.draw_problem(p)
    A, B = problem.stages["A"], problem.stages["B"]
    for path in ([A, B], [B, A]):
        closed = L.train_path(path, p.d)
        descent = L.train_path(path, p.d, solver=L.stage_gradient_descent)
        assert np.max(np.abs(closed - descent)) <= 1e-6 * max(1.0, np.linalg.norm(closed))
