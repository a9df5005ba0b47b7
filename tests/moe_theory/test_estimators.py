"""The least-squares estimator (docs/theory.md#estimator)."""

import pytest
import torch

import moe_theory as mt
from moe_theory.estimators.problem import LeastSquaresProblem


@pytest.fixture(scope="module")
def sparse_relu():
    return mt.get_setting("small-sparse-relu").truth()


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_recovers_the_truth_on_noise_free_data(gate):
    # every sigmoid gate depends on x: a constant gate times a ReLU expert has a scale ambiguity
    # (sigma(b) relu(z) = relu(sigma(b) z)), so only input-dependent gates pin the truth down
    from moe_theory.settings import SMALL_ATOMS

    rows = torch.tensor(SMALL_ATOMS, dtype=torch.float64)[None]
    truth = mt.MixingMeasure(gate, "linear", "relu", 2, rows[..., :3], rows[..., 3:])
    X, _ = mt.sample(truth, n=3000, reps=3, seed=1)
    Y = truth(X)  # noise-free
    fit = mt.fit_lse(X, Y, k=truth.k, gate=gate, expert="relu",
                     init=mt.near_truth(truth, truth.k, seed=2, jitter=0.05), reference=truth)
    # exactly specified and noise-free: the LSE is the truth; LM converges quadratically there
    err = mt.voronoi_loss(fit.measure, truth, "D1")
    assert float(err.max()) < 1e-6
    assert bool(fit.certified.all())
    assert float(fit.fit_loss.max()) < 1e-14


def test_batched_fits_equal_a_loop_of_scipy_single_fits():
    from moe_theory.settings import SMALL_ATOMS

    rows = torch.tensor(SMALL_ATOMS, dtype=torch.float64)[None]
    truth = mt.MixingMeasure("sigmoid", "linear", "tanh", 2, rows[..., :3], rows[..., 3:])
    X, Y = mt.sample(truth, n=400, reps=3, seed=4)
    init = mt.near_truth(truth, 2, seed=5, jitter=0.05)
    batched = mt.fit_lse(X, Y, 2, "sigmoid", "tanh", init=init, reference=truth)
    single = mt.fit_lse(X, Y, 2, "sigmoid", "tanh", init=init, backend="scipy")
    # exactly specified, every gate input-dependent: the LSE is an isolated minimum, and two
    # independent optimisers from the same start must both reach it. Agreement is limited by
    # their stopping tolerances (ftol 1e-10): 1e-8 relative in the objective, and parameters to
    # about sqrt(1e-10 / smallest Hessian eigenvalue) ~ 1e-3, so D3 between the fits < 1e-2.
    assert torch.allclose(batched.fit_loss, single.fit_loss, rtol=1e-8)
    between = mt.voronoi_loss(batched.measure, single.measure, "D3")
    assert float(between.max()) < 1e-2


def test_batch_of_R_equals_R_batches_of_one(sparse_relu):
    X, Y = mt.sample(sparse_relu, n=800, reps=3, seed=6)
    init = mt.near_truth(sparse_relu, 3, seed=7)
    together = mt.fit_lse(X, Y, 3, "sigmoid", "relu", init=init)
    for r in range(3):
        alone = mt.fit_lse(X[r:r + 1], Y[r:r + 1], 3, "sigmoid", "relu", init=init, rep_ids=[r])
        assert torch.allclose(alone.measure.gate_params, together.measure.gate_params[r:r + 1],
                              atol=1e-8)


def test_sample_is_reproducible_and_depends_only_on_coordinates(sparse_relu):
    X1, Y1 = mt.sample(sparse_relu, n=50, reps=4, seed=3)
    X2, Y2 = mt.sample(sparse_relu, n=50, reps=2, seed=3, first_rep=2)
    assert torch.equal(X1[2:], X2)
    assert torch.allclose(Y1[2:], Y2, rtol=0, atol=1e-14)  # batched f differs only by rounding
    X3, _ = mt.sample(sparse_relu, n=51, reps=1, seed=3)
    assert not torch.equal(X1[0, :50], X3[0, :50])


@pytest.mark.parametrize("x_dist", ["uniform", "normal"])
def test_inputs_filled_in_place_are_numpys_draws(x_dist):
    """The in-place fill gives the numbers of ``rng.uniform(-1, 1)`` / ``rng.standard_normal``
    bit for bit, so data drawn before it (committed figures) are drawn again unchanged."""
    import numpy as np

    from moe_theory.data import sample_inputs

    want_rng, got_rng = (np.random.default_rng([5, 301, 2]) for _ in range(2))
    want = (want_rng.uniform(-1.0, 1.0, size=(301, 3)) if x_dist == "uniform"
            else want_rng.standard_normal(size=(301, 3)))
    assert np.array_equal(sample_inputs(301, 3, got_rng, x_dist), want)
    # the generators stay in step: the noise drawn next is the same too
    assert np.array_equal(got_rng.standard_normal(7), want_rng.standard_normal(7))


def test_threaded_draw_gives_the_numbers_of_one_thread(sparse_relu, monkeypatch):
    """Large draws fill each replication on its own thread; each replication's generator is
    seeded by its coordinates alone, so the numbers are those of the serial draw, bit for bit."""
    from moe_theory import data

    serial = mt.sample(sparse_relu, n=300, reps=5, seed=7, first_rep=1)
    monkeypatch.setattr(data, "THREADED_DRAW", 1)  # every draw threaded
    threaded = mt.sample(sparse_relu, n=300, reps=5, seed=7, first_rep=1)
    assert all(torch.equal(a, b) for a, b in zip(serial, threaded, strict=True))


@pytest.mark.parametrize("x_dist", ["uniform", "normal"])
def test_staged_draw_gives_the_numbers_of_the_host_draw(x_dist):
    """The CUDA path draws each replication in chunks of rows (here 64: n = 300 crosses four
    chunk boundaries and ends on a partial one) through two staging buffers in turn; a generator
    fills an array in pieces as in one call, so X and the noise are those of the host draw, bit
    for bit. On a CPU device the same loop runs without pinned memory or streams."""
    from moe_theory import data

    args = (3, 300, 5, 7, 1, 0.3, x_dist)
    want_x, want_eps = data._draw_host(*args, workers=1)
    got_x, got_eps = data._draw_staged(*args, torch.device("cpu"), workers=3, rows=64)
    assert torch.equal(got_x, torch.from_numpy(want_x))
    assert torch.equal(got_eps, torch.from_numpy(want_eps))


@pytest.mark.parametrize("algorithm", ["adam", "lbfgs", "sgd-paper"])
def test_first_order_algorithms_lower_the_loss(sparse_relu, algorithm):
    X, Y = mt.sample(sparse_relu, n=400, reps=2, seed=8)
    start = mt.near_truth(sparse_relu, 3, seed=9, jitter=0.2)
    fit = mt.fit_lse(X, Y, 3, "sigmoid", "relu", init=start, algorithm=algorithm, max_iter=100,
                     sgd=mt.SGDProtocol(epochs=2, batch_size=50))
    start_loss = mt.objective(X, Y, start.draw(2, "sigmoid"))
    assert bool((fit.fit_loss < start_loss).all())


def test_a_replications_sgd_fit_does_not_depend_on_its_batch(sparse_relu):
    """SGD's minibatch order is seeded by the replication (and start) alone: replication 2 fitted
    alone is the same fit as in a batch of four, as the optimiser check's refits of the first
    replications must be to compare with a sweep's fits. Two replications of the same data are
    shuffled differently. Tolerance: a batch of one and of four run the same float64 operations
    row by row; 1e-12 allows the last-bit differences a batched matmul may make over 40 steps."""
    X, Y = mt.sample(sparse_relu, n=200, reps=4, seed=8)
    start = mt.near_truth(sparse_relu, 3, seed=9, jitter=0.2)
    sgd = mt.SGDProtocol(epochs=2, batch_size=10)
    batch = mt.fit_lse(X, Y, 3, "sigmoid", "relu", init=start, algorithm="sgd-paper", sgd=sgd)
    alone = mt.fit_lse(X[2:3], Y[2:3], 3, "sigmoid", "relu", init=start, algorithm="sgd-paper",
                       sgd=sgd, rep_ids=[2])
    for got, want in ((alone.measure.gate_params, batch.measure.gate_params[2:3]),
                      (alone.measure.expert_params, batch.measure.expert_params[2:3])):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # the same data and start (no jitter) under two replication numbers: only the order differs
    same_start = mt.near_truth(sparse_relu, 3, seed=9, jitter=0.0)
    twin = mt.fit_lse(X[[2, 2]], Y[[2, 2]], 3, "sigmoid", "relu", init=same_start,
                      algorithm="sgd-paper", sgd=sgd, rep_ids=[2, 3])
    assert float((twin.measure.expert_params[0] - twin.measure.expert_params[1]).abs().max()) > 1e-6


def test_random_multistart_keeps_the_best_start(sparse_relu):
    X, Y = mt.sample(sparse_relu, n=600, reps=2, seed=10)
    fit = mt.fit_lse(X, Y, 2, "sigmoid", "relu", init=mt.random_init(seed=1, n_starts=4))
    assert fit.measure.R == 2
    one = mt.fit_lse(X, Y, 2, "sigmoid", "relu", init=mt.random_init(seed=1, n_starts=1))
    assert bool((fit.fit_loss <= one.fit_loss * (1 + 1e-12)).all())


def test_pack_unpack_round_trip_pins_softmax():
    X = torch.rand(2, 5, 3, dtype=torch.float64)
    prob = LeastSquaresProblem(X, X[..., 0], "softmax", "quadratic", "gelu", 4, "torch")
    theta = torch.randn(2, prob.p, dtype=torch.float64)
    m = prob.measure(theta)
    assert torch.equal(m.gate_params[:, -1], torch.zeros_like(m.gate_params[:, -1]))
    assert torch.equal(prob.pack(m), theta)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"gate": "tanh"}, "gate"), ({"expert": "swish"}, "expert"), ({"score": "cubic"}, "score"),
     ({"k": 0}, "k"), ({"k": 1}, "k"), ({"algorithm": "newton"}, "algorithm"),
     ({"backend": "cuda"}, "backend")],
)
def test_bad_arguments_name_the_field(sparse_relu, kwargs, field):
    X, Y = mt.sample(sparse_relu, n=20, reps=1)
    args = {"k": 3, "gate": "sigmoid", "expert": "relu", "score": "linear"} | kwargs
    if field == "k" and args["k"] == 1:
        args["gate"] = "softmax"
    with pytest.raises(ValueError, match=field):
        mt.fit_lse(X, Y, **args)


def test_nan_in_data_and_bad_sizes_are_named(sparse_relu):
    X, Y = mt.sample(sparse_relu, n=20, reps=1)
    Y[0, 3] = float("nan")
    with pytest.raises(ValueError, match="Y: contains 1 NaN"):
        mt.fit_lse(X, Y, 3, "sigmoid", "relu")
    with pytest.raises(ValueError, match="n: must be a positive integer"):
        mt.sample(sparse_relu, n=-5, reps=1)
    with pytest.raises(ValueError, match="reps"):
        mt.sample(sparse_relu, n=5, reps=0)
    with pytest.raises(ValueError, match="k: the fitted number of atoms"):
        mt.near_truth(sparse_relu, k=1)
    with pytest.raises(ValueError, match="init: the truth has d = 2 but X has d = 3"):
        mt.fit_lse(torch.rand(1, 20, 3, dtype=torch.float64), Y.nan_to_num(), 3, "sigmoid", "relu",
                   init=mt.near_truth(sparse_relu, 3))


def test_sizes_no_machine_holds_and_bad_objective_input_are_named(sparse_relu):
    """sample's n = 10^20 reached numpy ("Maximum allowed dimension exceeded", no key) and
    reps = 10^12 a MemoryError; objective (public) took NaN data to a NaN loss and data of
    another d to an einsum's traceback. Each is now a ValueError naming its argument."""
    with pytest.raises(ValueError, match=r"^n: must be at most 1099511627776"):
        mt.sample(sparse_relu, n=10**20, reps=1)
    with pytest.raises(ValueError, match=r"^reps: 1000000000000 data sets of n = 5"):
        mt.sample(sparse_relu, n=5, reps=10**12)
    X, Y = mt.sample(sparse_relu, n=20, reps=2)
    assert torch.isfinite(mt.objective(X, Y, sparse_relu)).all()
    bad = X.clone()
    bad[1, 4, 0] = float("nan")
    with pytest.raises(ValueError, match="X: contains 1 NaN"):
        mt.objective(bad, Y, sparse_relu)
    with pytest.raises(ValueError, match="X: last dimension is 3 but the measure has d = 2"):
        mt.objective(torch.rand(2, 20, 3, dtype=torch.float64), Y, sparse_relu)
    with pytest.raises(ValueError, match="Y: must have shape"):
        mt.objective(X, Y[:, :5], sparse_relu)
    with pytest.raises(ValueError, match="measure: 3 measures for 2 data sets"):
        mt.objective(X, Y, sparse_relu.repeat(3))
    with pytest.raises(ValueError, match="measure: expected a MixingMeasure"):
        mt.objective(X, Y, {"gate": "softmax"})


def test_float32_data_keeps_float64_parameters(sparse_relu):
    X, Y = mt.sample(sparse_relu, n=500, reps=2, seed=11)
    init = mt.near_truth(sparse_relu, 3, seed=12)
    f64 = mt.fit_lse(X, Y, 3, "sigmoid", "relu", init=init)
    f32 = mt.fit_lse(X.float(), Y.float(), 3, "sigmoid", "relu", init=init)
    assert f32.measure.gate_params.dtype == torch.float64
    # float32 rounds each pass (~1e-7 relative on the loss), so both reach the same minimum of
    # the objective to well under 1e-4; the parameters of over-specified atoms differ more
    # (measured up to 1e-2 relative in Voronoi losses), which is why float64 is the default
    assert torch.allclose(f32.fit_loss, f64.fit_loss, rtol=1e-4)


def test_cached_feature_pairs_leave_the_fit_unchanged(monkeypatch, sparse_relu):
    """A fit that keeps the Gram route's feature pairs (GPU default) takes the same iterates as one
    that forms them every pass: V depends on X alone, and the product is the same, bit for bit."""
    from kernels.moe import gram

    X, Y = mt.sample(sparse_relu, n=300, reps=3, seed=6)
    init = mt.near_truth(sparse_relu, 3, seed=7, jitter=0.05)
    kw = dict(k=3, gate="sigmoid", expert="relu", init=init, max_iter=15, backend="torch")
    plain = mt.fit_lse(X, Y, **kw)
    formed = []
    real = gram.feature_pairs
    monkeypatch.setattr(gram, "feature_pairs", lambda X, dtype=None: formed.append(1) or real(X, dtype))
    monkeypatch.setitem(gram.CACHE_BYTES, "cpu", 2**30)
    cached = mt.fit_lse(X, Y, **kw)
    assert formed == [1]  # formed once for the whole fit
    assert torch.equal(plain.measure.gate_params, cached.measure.gate_params)
    assert torch.equal(plain.n_iter, cached.n_iter)


@pytest.mark.parametrize("gram_dtype", ["float32", "tf32", "tf32x3"])
def test_mixed_precision_gram_reaches_the_float64_minimiser(gram_dtype):
    """docs/kernels.md#mixed-precision-gauss-newton: a float32 ``J^T J`` changes LM's path, not
    its fixed points (loss and ``J^T r`` stay float64). Exactly specified smooth (tanh) experts
    with input-dependent gates: an isolated minimum whose mean-loss Hessian ``H = 2 J^T J / n``
    has smallest eigenvalue ``lam`` (~5e-5 here, computed below). Both fits stop with the
    projected gradient's max-norm ``g`` below gtol (or at the damping bound to rounding), so to
    first order ``||theta_32 - theta_64|| <= sqrt(p) (g_32 + g_64) / lam`` (~2e-6 here; observed
    ~1e-7); the test allows twice that for the curvature's change over that distance. The losses
    then differ by about ``lam ||dtheta||^2``: far below 1e-12 relative."""
    from moe_theory.settings import SMALL_ATOMS

    rows = torch.tensor(SMALL_ATOMS, dtype=torch.float64)[None]
    truth = mt.MixingMeasure("sigmoid", "linear", "tanh", 2, rows[..., :3], rows[..., 3:])
    X, Y = mt.sample(truth, n=2000, reps=3, seed=21)
    kw = dict(k=truth.k, gate="sigmoid", expert="tanh", backend="torch", max_iter=100,
              init=mt.near_truth(truth, truth.k, seed=22, jitter=0.05), ftol=0, xtol=0,
              gtol=1e-11)
    f64 = mt.fit_lse(X, Y, **kw)
    mixed = mt.fit_lse(X, Y, gram_dtype=gram_dtype, **kw)
    assert mixed.extra["gram_dtype"] == gram_dtype
    for fit in (f64, mixed):
        assert set(fit.stop_test) <= {"gtol", "damping"}
        assert float(fit.proj_grad_max.max()) < 1e-10
    problem = LeastSquaresProblem(X, Y, "sigmoid", "linear", "tanh", truth.k, "torch")
    theta64, theta32 = problem.pack(f64.measure), problem.pack(mixed.measure)
    lam = torch.linalg.eigvalsh(2 * problem.evaluate(theta64).jtj / X.shape[1])[:, 0]
    assert bool((lam > 0).all())
    bound = problem.p**0.5 * (f64.proj_grad_max + mixed.proj_grad_max) / lam
    assert bool(((theta32 - theta64).norm(dim=-1) <= 2 * bound).all())
    assert torch.allclose(mixed.fit_loss, f64.fit_loss, rtol=1e-12, atol=0)


def test_gram_dtype_is_named(sparse_relu):
    X, Y = mt.sample(sparse_relu, n=20, reps=1)
    with pytest.raises(ValueError, match="gram_dtype"):
        mt.fit_lse(X, Y, 3, "sigmoid", "relu", gram_dtype="half")


@pytest.mark.parametrize("seed", ["a", None, -1, 1.5, 1.0, True, 2**63])
def test_a_seed_that_is_not_a_non_negative_integer_is_named(sparse_relu, seed):
    """-1 drew the data of 2**63 - 1 (masked to 63 bits) and 1.5 those of 1 (truncated): a seed
    that would silently alias another is refused, as are ones numpy could not take."""
    with pytest.raises(ValueError, match="^seed: must be an integer"):
        mt.sample(sparse_relu, 5, 1, seed=seed)


def test_a_valid_seed_draws_what_it_drew(sparse_relu):
    """The check changes no valid seed's numbers (committed results depend on them): the inputs
    are the generator's of (seed, n, rep), a numpy integer's as a Python int's."""
    import numpy as np

    X, _ = mt.sample(sparse_relu, 5, 2, seed=2**63 - 1)
    want = np.random.default_rng([2**63 - 1, 5, 1]).uniform(-1.0, 1.0, size=(5, 2))
    assert np.array_equal(X[1].numpy(), want)
    assert all(torch.equal(a, b) for a, b in zip(mt.sample(sparse_relu, 5, 2, seed=3),
                                                 mt.sample(sparse_relu, 5, 2, seed=np.int64(3)),
                                                 strict=True))


def test_empty_data_and_mixed_dtypes_are_named(sparse_relu):
    """No sample gave NaN fit losses (0 / 0), no replication a ZeroDivisionError, and float32 X
    with float64 Y a torch error naming neither tensor."""
    X, Y = mt.sample(sparse_relu, n=20, reps=2)
    with pytest.raises(ValueError, match=r"^X: must hold at least one sample \(n >= 1\)"):
        mt.fit_lse(X[:, :0], Y[:, :0], 3, "sigmoid", "relu")
    with pytest.raises(ValueError, match=r"^X: must hold at least one replication \(R >= 1\)"):
        mt.fit_lse(X[:0], Y[:0], 3, "sigmoid", "relu")
    for x, y in ((X.float(), Y), (X, Y.float())):
        with pytest.raises(ValueError, match="^X, Y: must have the same dtype, got torch.float"):
            mt.fit_lse(x, y, 3, "sigmoid", "relu")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"lr": float("inf")}, "sgd.lr"), ({"lr": float("nan")}, "sgd.lr"), ({"lr": -0.1}, "sgd.lr"),
    ({"epochs": 0}, "sgd.epochs"), ({"batch_size": True}, "sgd.batch_size"),
    ({"seed": -1}, "sgd.seed")])
def test_a_bad_sgd_protocol_is_named(kwargs, field):
    """fit_lse's ``sgd`` is checked where it is made, as a config's ``sgd`` table is."""
    with pytest.raises(ValueError, match=f"^{field}: "):
        mt.SGDProtocol(**kwargs)


def test_arguments_the_fit_would_silently_misread_are_refused(sparse_relu):
    """``rep_ids=[0]`` for R = 3 gave every replication replication 0's start, 5 ids a
    RuntimeError; the scipy backend ran its own solver whatever ``algorithm`` asked, and the
    result named the one asked for."""
    X, Y = mt.sample(sparse_relu, n=200, reps=3, seed=6)
    init = mt.near_truth(sparse_relu, 3, seed=7)
    for ids in ([0], [0, 1, 2, 3, 4]):
        with pytest.raises(ValueError, match=rf"^rep_ids: one per replication, R = 3, got {len(ids)}$"):
            mt.fit_lse(X, Y, 3, "sigmoid", "relu", init=init, rep_ids=ids)
    with pytest.raises(ValueError, match=r"^rep_ids\[1\]: must be an integer"):
        mt.fit_lse(X, Y, 3, "sigmoid", "relu", init=init, rep_ids=[0, -1, 2])
    with pytest.raises(ValueError, match="^algorithm: backend 'scipy' runs scipy's own"):
        mt.fit_lse(X, Y, 3, "sigmoid", "relu", init=init, algorithm="adam", backend="scipy")
    fit = mt.fit_lse(X[:1], Y[:1], 3, "sigmoid", "relu", init=init, backend="scipy", max_iter=2)
    assert fit.algorithm == "lm" and fit.backend == "scipy"


def test_a_measure_argument_that_is_none_or_not_finite_is_named(sparse_relu):
    """A truth or reference with a NaN gave NaN data, fits (n_iter 0) or losses without a word,
    and ``None`` an AttributeError; an ``sgd`` dict an AttributeError."""
    import math

    nan = mt.MixingMeasure(sparse_relu.gate, sparse_relu.score, sparse_relu.expert, sparse_relu.d,
                           sparse_relu.gate_params.clone(), sparse_relu.expert_params.clone())
    nan.expert_params[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"^truth: its parameters hold NaN or infinity$"):
        mt.sample(nan, n=10, reps=2)
    with pytest.raises(ValueError, match=r"^truth: expected a MixingMeasure, got NoneType$"):
        mt.sample(None, n=10, reps=2)
    with pytest.raises(ValueError, match=r"^truth: its parameters hold NaN"):
        mt.near_truth(nan, 3)
    X, Y = mt.sample(sparse_relu, n=100, reps=2, seed=0)
    with pytest.raises(ValueError, match=r"^reference: its parameters hold NaN"):
        mt.fit_lse(X, Y, 3, "sigmoid", "relu", reference=nan, max_iter=1)
    with pytest.raises(ValueError, match=r"^init: its parameters hold NaN"):
        mt.fit_lse(X, Y, 3, "sigmoid", "relu", init=nan, max_iter=1)
    with pytest.raises(ValueError, match=r"^fitted: expected a MixingMeasure, got str$"):
        mt.voronoi_loss("x", sparse_relu, "D1")
    # NaN in, NaN out for a loss: a diverged fit's losses are NaN, counted as dropped
    assert bool(mt.voronoi_loss(nan, sparse_relu, "D1").isnan().all())
    with pytest.raises(ValueError, match=r"^sgd: unknown key\(s\) \['rate'\]"):
        mt.fit_lse(X, Y, 3, "sigmoid", "relu", algorithm="sgd-paper", sgd={"rate": 1})
    with pytest.raises(ValueError, match=r"^sgd.lr: must be a finite number > 0"):
        mt.fit_lse(X, Y, 3, "sigmoid", "relu", algorithm="sgd-paper", sgd={"lr": -1.0})
    fit = mt.fit_lse(X, Y, 3, "sigmoid", "relu", algorithm="sgd-paper", sgd={"epochs": 1},
                     init=mt.near_truth(sparse_relu, 3))
    assert fit.algorithm == "sgd-paper" and fit.measure.R == 2


def test_lbfgs_stopped_by_its_evaluation_budget_is_not_converged():
    """torch's L-BFGS stops after max_eval = 5/4 max_iter evaluations, before max_iter: every
    stop short of max_iter read as ftol, so a budget's stop counted as converged (random starts
    of seed 3: 18 iterations, projected gradients 0.08 and 0.03 against gtol 1e-10)."""
    import moe_theory as mt

    setting = mt.get_setting("small-dense-relu")
    X, Y = mt.sample(setting.truth(), n=300, reps=2, seed=3, noise_var=0.01)
    fit = mt.fit_lse(X, Y, setting.k_fit, "softmax", setting.expert,
                     init=mt.random_init(3, n_starts=1, scale=2.0), algorithm="lbfgs",
                     max_iter=20, backend="torch")
    assert (fit.n_iter < 20).all() and (fit.proj_grad_max > 1e-10).all()
    assert list(fit.stop_test) == ["max_iter", "max_iter"] and not fit.converged.any()


def test_adam_keeps_a_stopped_fit_where_it_stopped_whatever_its_batch():
    """A stopped problem's gradient was zeroed but Adam's momentum moved it on until the batch
    stopped: replication 0 fitted beside a slower one ended 0.015 away from its fit alone."""
    import moe_theory as mt
    from moe_theory.initialization import near_truth

    setting = mt.get_setting("small-sparse-relu")
    truth = setting.truth()
    X, Y = mt.sample(truth, n=300, reps=2, seed=3, noise_var=0.01)
    start = near_truth(truth, setting.k_fit, seed=1, jitter=0.05).draw(2, "sigmoid", rep_ids=[0, 1])
    gp, ep = start.gate_params.clone(), start.expert_params.clone()
    gp[1] += 1.5  # replication 1 starts far off, so runs on after replication 0 stops
    ep[1] -= 1.0
    kw = dict(k=setting.k_fit, gate="sigmoid", expert=setting.expert, algorithm="adam",
              max_iter=3000, ftol=1e-6, backend="torch")
    both = mt.fit_lse(X, Y, init=start.replace(gp, ep), rep_ids=[0, 1], **kw)
    alone = mt.fit_lse(X[:1], Y[:1], init=start.replace(gp, ep).select(0), rep_ids=[0], **kw)
    assert both.stop_test[0] == alone.stop_test[0] == "ftol" and both.n_iter[1] > both.n_iter[0]
    # the same point, to rounding (the batch's sums)
    assert torch.allclose(both.measure.gate_params[0], alone.measure.gate_params[0], atol=1e-12)
    assert torch.allclose(both.measure.expert_params[0], alone.measure.expert_params[0],
                          atol=1e-12)
