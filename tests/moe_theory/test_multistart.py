"""Multi-start fits (docs/theory.md#multi-start): several starts per replication in one batch."""

import pytest
import torch

import moe_theory as mt
from moe_theory.estimators.bounds import box_bounds
from moe_theory.estimators.problem import LeastSquaresProblem
from moe_theory.initialization import multi_start

NU = 0.01


@pytest.fixture(scope="module")
def dense_relu():
    """Over-specified sigmoid fit of a softmax truth: starts end at different SSRs."""
    setting = mt.get_setting("small-dense-relu")
    truth = setting.truth()
    X, Y = mt.sample(truth, n=400, reps=3, seed=21, noise_var=NU)
    return truth, X, Y, multi_start(truth, 3, seed=8, extra=3, start_jitter=0.3)


def test_a_batched_multi_start_fit_equals_a_loop_of_single_starts(dense_relu):
    truth, X, Y, starts = dense_relu
    kw = dict(k=3, gate="sigmoid", expert="relu", max_iter=40, backend="torch",
              bounds=box_bounds(truth, 3, gate="sigmoid"))
    batched = mt.fit_lse(X, Y, init=starts, noise_var=NU, **kw)
    singles = [mt.fit_lse(X, Y, init=s, **kw) for s in starts]
    n = X.shape[1]
    single_ssr = torch.stack([f.fit_loss * n for f in singles], 1)  # (R, S)
    # each problem of the batch is solved on its own: the batch changes sums over samples only
    # by rounding (the same chunks here, n = 400), so the SSRs agree to 1e-12 relative
    assert batched.n_starts == 4 and batched.start_ssr.shape == (3, 4)
    assert torch.allclose(batched.start_ssr, single_ssr, rtol=1e-12, atol=0)
    best = single_ssr.argmin(1)
    assert torch.allclose(batched.fit_loss * n, single_ssr.min(1).values, rtol=1e-12, atol=0)
    for r in range(3):
        kept = singles[int(best[r])]
        assert torch.allclose(batched.measure.gate_params[r], kept.measure.gate_params[r],
                              atol=1e-9)
        assert int(batched.n_iter[r]) == int(kept.n_iter[r])
        assert batched.stop_reason[r] == kept.stop_reason[r]
    # the starts disagree on this weakly identified fit (else the test shows nothing)
    assert float((single_ssr.max(1).values - single_ssr.min(1).values).max()) > NU
    spread = (single_ssr.max(1).values - single_ssr.min(1).values) / NU
    assert torch.allclose(batched.ssr_spread, spread, rtol=1e-9)
    near = (single_ssr - single_ssr.min(1, keepdim=True).values <= NU).sum(1)
    assert torch.equal(batched.starts_near_best, near)
    assert bool((batched.starts_near_best >= 1).all())


def test_starts_read_the_data_in_place(monkeypatch, dense_relu):
    """S starts are S * R problems of one batch over the R data sets, not S copies of X."""
    from moe_theory.estimators import problem as problem_module

    truth, X, Y, starts = dense_relu
    calls = []
    real = problem_module.moe_pass

    def spy(X_, Y_, *args, rows=None, **kw):
        calls.append((X_.data_ptr(), X_.shape[0], None if rows is None else rows.tolist()))
        return real(X_, Y_, *args, rows=rows, **kw)

    monkeypatch.setattr(problem_module, "moe_pass", spy)
    mt.fit_lse(X, Y, 3, "sigmoid", "relu", init=starts, max_iter=3, backend="torch")
    first = calls[0]
    assert first[0] == X.data_ptr() and first[1] == 3
    assert first[2] == [r for _ in range(4) for r in range(3)]  # start-major


def test_a_start_major_measure_batch_equals_the_list(dense_relu):
    truth, X, Y, starts = dense_relu
    drawn = [s.draw(3, "sigmoid") for s in starts]
    batch = drawn[0].replace(torch.cat([m.gate_params for m in drawn]),
                             torch.cat([m.expert_params for m in drawn]))
    kw = dict(k=3, gate="sigmoid", expert="relu", max_iter=10)
    a = mt.fit_lse(X, Y, init=starts, **kw)
    b = mt.fit_lse(X, Y, init=batch, **kw)
    assert torch.equal(a.start_ssr, b.start_ssr)
    assert a.ssr_spread is None and a.starts_near_best is None  # no noise variance given


def test_one_start_reports_one_start(dense_relu):
    truth, X, Y, starts = dense_relu
    fit = mt.fit_lse(X, Y, 3, "sigmoid", "relu", init=starts[0], max_iter=5, noise_var=NU)
    assert fit.n_starts == 1
    assert torch.equal(fit.ssr_spread, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(fit.starts_near_best, torch.ones(3, dtype=torch.long))


def test_starts_depend_on_their_coordinates_only(dense_relu):
    truth, X, Y, starts = dense_relu
    # the same replication in another batch starts at the same points
    whole = [s.draw(3, "sigmoid") for s in starts]
    part = [s.draw(2, "sigmoid", rep_ids=[1, 2]) for s in starts]
    for w, p in zip(whole, part, strict=True):
        assert torch.equal(w.gate_params[1:], p.gate_params)
    # and the extra starts are distinct from the near-truth one and from each other
    centres = torch.stack([w.gate_params[0] for w in whole])
    assert torch.unique(centres.reshape(4, -1), dim=0).shape[0] == 4
    again = multi_start(truth, 3, seed=8, extra=3, start_jitter=0.3)
    assert torch.equal(again[2].draw(3, "sigmoid").gate_params, whole[2].gate_params)


def test_default_start_jitter_is_ten_times_the_jitter():
    truth = mt.get_setting("small-dense-relu").truth()
    starts = multi_start(truth, 3, jitter=0.02)
    assert len(starts) == 5
    assert [s.jitter for s in starts] == [0.02] + [0.2] * 4


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"extra": -1}, "starts"), ({"extra": 1.5}, "starts"), ({"start_jitter": 0.0}, "start_jitter"),
     ({"start_jitter": float("nan")}, "start_jitter"), ({"jitter": -0.1}, "jitter")],
)
def test_bad_start_schemes_name_the_field(kwargs, field):
    truth = mt.get_setting("small-dense-relu").truth()
    with pytest.raises(ValueError, match=field):
        multi_start(truth, 3, **kwargs)


def test_bad_start_batches_name_init(dense_relu):
    truth, X, Y, starts = dense_relu
    with pytest.raises(ValueError, match="init: an empty list"):
        mt.fit_lse(X, Y, 3, "sigmoid", "relu", init=[])
    two = starts[0].draw(2, "sigmoid")
    with pytest.raises(ValueError, match="init: a batch of starting measures"):
        mt.fit_lse(X, Y, 3, "sigmoid", "relu", init=two)
    with pytest.raises(ValueError, match="init: expected"):
        mt.fit_lse(X, Y, 3, "sigmoid", "relu", init=[starts[0], "near"])


def test_problem_data_rows_map_problems_to_data(dense_relu):
    truth, X, Y, starts = dense_relu
    rows = torch.tensor([2, 0, 2])
    problem = LeastSquaresProblem(X, Y, "sigmoid", "linear", "relu", 3, "torch", rows)
    theta = problem.pack(starts[0].draw(3, "sigmoid"))
    own = LeastSquaresProblem(X[rows], Y[rows], "sigmoid", "linear", "relu", 3, "torch")
    assert torch.allclose(problem.loss(theta), own.loss(theta), rtol=1e-13)
    assert torch.equal(problem.data()[0], X[rows])


@pytest.mark.parametrize("rows", [[2, 0, 3], [-1, 0, 2]])
def test_problem_data_rows_out_of_range_are_refused(dense_relu, rows):
    # (found by an audit) data_rows past X's data sets, or negative, were not checked: the
    # Triton kernels read them out of bounds (the reference wrapped negatives round to another
    # data set). The problem checks them once when it is made, naming the field
    truth, X, Y, starts = dense_relu
    with pytest.raises(ValueError, match=r"data_rows: entries must index X's 3 data sets"):
        LeastSquaresProblem(X, Y, "sigmoid", "linear", "relu", 3, "torch", torch.tensor(rows))


def test_a_fit_checks_its_data_rows_once_not_in_every_pass(dense_relu, monkeypatch):
    """The range check of the rows costs a host synchronisation on a GPU: a multi-start fit
    makes it once, when its problem is made, and its passes (two per Levenberg-Marquardt
    iteration, on a subset of data_rows) skip it (``check_rows=False``)."""
    import kernels.moe.torch_pass as torch_pass
    from moe_theory.estimators import problem as problem_module

    truth, X, Y, starts = dense_relu
    made, passes = [], []

    def recorder(calls, real):
        def check(X, rows=None, **kw):
            calls.append((rows is not None, kw.get("check_rows", True)))
            return real(X, rows, **kw)
        return check

    monkeypatch.setattr(problem_module, "check_batch", recorder(made, problem_module.check_batch))
    monkeypatch.setattr(torch_pass, "check_batch", recorder(passes, torch_pass.check_batch))
    fit = mt.fit_lse(X, Y, 3, "sigmoid", "relu", init=starts, max_iter=5, backend="torch")
    assert fit.n_starts == 4
    assert made == [(True, True)]  # the problem's data_rows, range checked once
    # every pass read rows (start-major problems over 3 data sets) without checking them again
    assert len(passes) > 5 and set(passes) == {(True, False)}


def test_a_sweep_shard_records_the_starts_on_the_same_data():
    """run_shard fits the near-reference start plus ``starts`` more on the shard's data: the data
    (hence the reference's loss) do not depend on the starts, and the kept fit is no worse than
    the near-reference start alone."""
    from moe_theory.config import parse_config
    from moe_theory.store import Shard
    from moe_theory.sweep import RESULT_COLUMNS, run_shard

    raw = {"name": "t", "settings": ["small-sparse-relu"], "fit_gates": ["sigmoid"], "n": [300],
           "reps": 3, "max_iter": 30, "losses": ["D1"]}
    shard = Shard("small-sparse-relu", 300, 0, 3)
    one = run_shard(parse_config({**raw, "starts": 0, "bound_scale": float("inf")}), shard)
    many = run_shard(parse_config({**raw, "starts": 2}), shard)
    assert list(many.columns) == RESULT_COLUMNS
    assert (one.n_starts == 1).all() and (many.n_starts == 3).all()
    assert one.ref_loss.tolist() == many.ref_loss.tolist()
    # the near-reference start is one of the three (rounding: a larger batch)
    assert (many.fit_loss <= one.fit_loss * (1 + 1e-12)).all()
    assert set(many.stop_reason) <= {"tolerance", "max_iter", "non_finite"}
    assert (many.converged == (many.stop_reason == "tolerance")).all()
    assert ((many.starts_near_best >= 1) & (many.starts_near_best <= 3)).all()
    assert (many.ssr_spread >= 0).all() and not many.bound_active.any()


def test_a_split_of_an_atom_the_truth_lacks_is_refused_by_its_field():
    """split = (5,) of a 3-atom truth passed, and .truth() raised an IndexError later."""
    from dataclasses import replace

    base = mt.get_setting("small-k3-dense-relu")
    with pytest.raises(ValueError, match=r"^split: must be atom indices of the truth .* 0 to "
                                         r"k_true - 1 = 2\), got \(3,\)"):
        replace(base, split=(3,))
    assert replace(base, split=(2,)).split == (2,)


def test_a_setting_split_applies_to_g_star_not_to_g_bar():
    """A setting's ``split`` names atoms of G* to copy; a G_bar has the fit's k atoms already,
    so its starts and box take no split (splitting it again raised)."""
    from dataclasses import replace

    from moe_theory.sweep import reference_split

    setting = replace(mt.get_setting("small-k3-dense-relu"), split=(1,))
    truth = setting.truth()
    assert reference_split(setting, truth) == (1,)
    g_bar_like = mt.initialization.split_atoms(truth, setting.k_fit, (1,))
    assert reference_split(setting, g_bar_like) is None
    start = multi_start(g_bar_like, setting.k_fit, extra=1,
                        split=reference_split(setting, g_bar_like))[1].draw(1, "softmax")
    assert start.k == setting.k_fit
    box_bounds(g_bar_like, setting.k_fit, 10.0, split=reference_split(setting, g_bar_like))


def test_every_split_of_a_softmax_truth_keeps_its_regression_function():
    """Copying any atom, the pinned one included (re-gauged), leaves f_G unchanged, and the
    pinned atom stays last with zero gate parameters: a start in any Voronoi cell starts at the
    truth."""
    from moe_theory.initialization import all_splits, split_atoms

    truth = mt.get_setting("small-k3-dense-relu").truth()
    assert all_splits(3, 4) == [(0,), (1,), (2,)]
    assert len(all_splits(3, 5)) == 6 and all_splits(3, 3) == [()]
    X = torch.rand(1, 257, truth.d, dtype=torch.float64) * 2 - 1
    for split in all_splits(3, 5):
        four = split_atoms(truth, 5, split)
        assert four.k == 5
        torch.testing.assert_close(four(X), truth(X), rtol=1e-13, atol=1e-13)
        assert torch.equal(four.gate_params[:, -1], torch.zeros_like(four.gate_params[:, -1]))
    with pytest.raises(ValueError, match="split"):
        split_atoms(truth, 4, (3,))


def test_starts_that_cycle_through_every_split_and_their_box():
    """``every_split``: the extra starts copy each atom in turn, from the one after the
    near-reference start's; the box is the largest over the splits, and without the option
    starts and box are as before."""
    from moe_theory.initialization import all_splits

    truth = mt.get_setting("small-k3-dense-relu").truth()
    plain = multi_start(truth, 4, seed=3, extra=4)
    assert [s.split for s in plain] == [None] * 5
    cycled = multi_start(truth, 4, seed=3, extra=4, every_split=True)
    assert [s.split for s in cycled] == [None, (1,), (2,), (0,), (1,)]
    # the same seeds and jitters: only the copied atom differs
    assert [(s.seed, s.jitter) for s in cycled] == [(s.seed, s.jitter) for s in plain]
    g_bar_like = mt.initialization.split_atoms(truth, 4)
    assert [s.split for s in multi_start(g_bar_like, 4, extra=2, every_split=True)] == [None] * 3
    one = box_bounds(truth, 4, 2.0, gate="softmax")
    every = box_bounds(truth, 4, 2.0, gate="softmax", every_split=True)
    each = [box_bounds(truth, 4, 2.0, gate="softmax", split=s) for s in all_splits(3, 4)]
    assert one == each[0]
    for group in ("beta0", "beta1", "a", "b"):
        assert getattr(every, group) == max(getattr(b, group) for b in each)
    # re-gauging the pinned atom's split adds log 2 to the others' beta0
    assert every.beta0 >= one.beta0


def test_config_start_splits(tmp_path):
    """``start_splits``: ``reference`` (default, the hash of a config without the key) or
    ``every``; anything else names the key."""
    from moe_theory.config import parse_config
    from moe_theory.sweep import shard_box, shard_init

    raw = {"name": "t", "settings": ["small-k3-dense-relu"], "n": [1000], "reps": 2}
    base = parse_config(dict(raw))
    assert parse_config(dict(raw, start_splits="reference")).hash == base.hash
    every = parse_config(dict(raw, start_splits="every"))
    assert every.hash != base.hash
    with pytest.raises(ValueError, match="start_splits"):
        parse_config(dict(raw, start_splits="all"))
    setting = every.setting("small-k3-dense-relu")
    truth = setting.truth()
    assert [s.split for s in shard_init(every, setting, 1000, "softmax", truth)] == \
        [None, (1,), (2,), (0,), (1,)]
    assert shard_box(every, setting, "softmax", truth) == \
        box_bounds(truth, 4, every.bound_scale, gate="softmax", every_split=True)
    assert shard_box(base, setting, "softmax", truth) == \
        box_bounds(truth, 4, base.bound_scale, gate="softmax")


def test_a_sweep_with_starts_in_every_cell(tmp_path):
    """``start_splits = "every"`` end to end: a softmax sweep whose starts copy each atom of G*
    in turn: every replication records its 4 starts, and the manifest records the key."""
    from moe_theory.config import parse_config
    from moe_theory.sweep import run_sweep

    config = parse_config({"name": "every-cell", "settings": ["small-k3-dense-relu"],
                           "fit_gates": ["softmax"], "n": [300], "reps": 2, "starts": 3,
                           "max_iter": 30, "start_splits": "every"})
    df = run_sweep(config, tmp_path / "sweep", log=lambda msg: None)
    fits = df.drop_duplicates(["n", "rep"])
    assert len(fits) == 2 and (fits["n_starts"] == 4).all()
    assert df["loss_value"].notna().any()
    manifest = (tmp_path / "sweep" / "manifest.json").read_text()
    assert '"start_splits": "every"' in manifest


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
@pytest.mark.parametrize("split", [(0,), (2,), (1, 1)])
def test_split_order_names_the_atom_each_split_atom_copies(gate, split):
    # expert parameters are copied unchanged by split_atoms: each row is its source atom's
    from moe_theory.initialization import split_atoms, split_order

    truth = mt.get_setting("nguyen2024-measurable-relu").truth()
    if gate == "sigmoid":
        truth = mt.MixingMeasure("sigmoid", truth.score, truth.expert, truth.d, truth.gate_params,
                                 truth.expert_params)
    k = truth.k + len(split)
    order = split_order(truth, k, split)
    assert sorted(set(order)) == list(range(truth.k)) and len(order) == k
    assert torch.equal(split_atoms(truth, k, split).expert_params,
                       truth.expert_params[:, order])
    if gate == "softmax":
        assert order[-1] == truth.k - 1  # the pinned atom stays last


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"scale": float("nan")}, "scale"), ({"scale": -1.0}, "scale"), ({"scale": 0.0}, "scale"),
    ({"scale": float("inf")}, "scale"), ({"n_starts": 0}, "n_starts"), ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"), ({"seed": "a"}, "seed")])
def test_bad_random_starts_name_the_field(kwargs, field):
    """scale = NaN made every start, hence every estimate, NaN without a word."""
    with pytest.raises(ValueError, match=f"^{field}: "):
        mt.random_init(**kwargs)


@pytest.mark.parametrize("seed", [-1, 1.0, "7", None, True])
def test_a_near_truth_seed_must_be_a_non_negative_integer(seed):
    """The jitter is seeded by the seed's text: 1.0 drew other starts than 1, "7" those of 7."""
    truth = mt.get_setting("small-dense-relu").truth()
    with pytest.raises(ValueError, match="^seed: "):
        mt.near_truth(truth, 3, seed=seed)
    with pytest.raises(ValueError, match="^seed: "):
        multi_start(truth, 3, seed=seed)


@pytest.mark.parametrize("jitter", [float("nan"), -1.0, "0.1"])
def test_a_bad_jitter_is_named_jitter_not_start_jitter(jitter):
    """The extra starts' jitter is derived from it (10 x jitter) and was checked first, so a bad
    jitter was reported as a bad start_jitter."""
    truth = mt.get_setting("small-dense-relu").truth()
    with pytest.raises(ValueError, match="^jitter: must be a finite number >= 0"):
        multi_start(truth, 3, jitter=jitter)


def test_random_starts_are_a_replications_own_whatever_its_batch():
    """random_init's start s of replication r depends on (seed, s, r) alone, as near_truth's
    jitter does: one generator for the batch had given replication 2 another start in a batch
    of 4 than in the shard [2, 4), and the shards [0, 2) and [2, 4) the same starts."""
    from moe_theory.initialization import RandomInit

    kw = {"k": 3, "score": "linear", "expert": "relu", "d": 2}
    init = RandomInit(seed=5, n_starts=2)
    whole = init.draw(4, "sigmoid", **kw)
    first, second = (init.draw(2, "sigmoid", rep_ids=ids, **kw) for ids in ([0, 1], [2, 3]))
    # start-major rows: start s of replication r is row s * R + r
    for s in range(2):
        for r in range(4):
            part, row = (first, r) if r < 2 else (second, r - 2)
            assert torch.equal(whole.gate_params[s * 4 + r], part.gate_params[s * 2 + row])
            assert torch.equal(whole.expert_params[s * 4 + r], part.expert_params[s * 2 + row])
    assert not torch.equal(first.gate_params, second.gate_params)
    assert not torch.equal(whole.gate_params[0], whole.gate_params[4])  # two starts of rep 0
