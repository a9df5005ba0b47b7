"""Teacher-student attention (exploratory, docs/theory.md#teacher-student-attention): the model, the
fit and the head errors."""

import math

import pytest
import torch

from moe_theory.attention_moe import attention_rows
from moe_theory.attention_teacher import (
    AttentionTeacher,
    attention_heads,
    fit_attention,
    head_errors,
    near_teacher,
    sample_sequences,
)
from moe_theory.rates import rates_table
from moe_theory.studies import attention_teacher as teacher_study


def teacher(gate="sigmoid", noise_var=0.0, seq_len=5):
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(2, 3, 3, generator=gen, dtype=torch.float64)
    V = torch.randn(2, 3, 2, generator=gen, dtype=torch.float64) / math.sqrt(3)
    return AttentionTeacher(gate, W, V, seq_len, noise_var=noise_var)


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_heads_are_single_head_attention_summed(gate):
    t = teacher(gate)
    X, Y = sample_sequences(t, n=4, reps=2, seed=1)
    # head h is attention with W_Q = W_h, W_K = I, W_V = V_h and scale 1/sqrt(d)
    eye = torch.eye(3, dtype=torch.float64)
    by_head = sum(attention_rows(X.reshape(-1, 5, 3), t.W[h], eye, t.V[h], gate=gate,
                                 scale=1 / math.sqrt(3), bias=-math.log(5)) for h in range(2))
    torch.testing.assert_close(Y, by_head.reshape(Y.shape), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_fit_recovers_a_noise_free_teacher(gate):
    t = teacher(gate)
    X, Y = sample_sequences(t, n=32, reps=2, seed=2)
    W0, V0 = near_teacher(t, 2, reps=2, seed=3, jitter=0.05)
    fit = fit_attention(X, Y, W0, V0, gate=gate, max_iter=1000)
    errors = head_errors(fit.W, fit.V, t)
    # noise-free, well specified: the fit is the teacher up to the optimiser's tolerance
    assert float(errors["err_W_exact"].max()) < 1e-4
    assert float(errors["err_V_exact"].max()) < 1e-4
    assert bool(torch.isnan(errors["err_W_over"]).all())  # H = H*: no over-specified cell
    assert float(fit.fit_loss.max()) < 1e-12
    assert bool(fit.converged.all())


def test_head_errors_are_zero_at_the_teacher_and_ignore_head_order():
    t = teacher()
    W0, V0 = near_teacher(t, 3, reps=2, seed=4, jitter=0.0)  # head 2 copies head 0, V shared
    errors = head_errors(W0, V0, t)
    for name in ("err_W_exact", "err_V_exact", "err_W_over", "err_V_over"):
        assert float(errors[name].abs().max()) == pytest.approx(0.0, abs=1e-15)
    W1, V1 = near_teacher(t, 3, reps=2, seed=5, jitter=0.1)
    perm = torch.tensor([2, 0, 1])
    before, after = head_errors(W1, V1, t), head_errors(W1[:, perm], V1[:, perm], t)
    for name in before:
        torch.testing.assert_close(before[name], after[name], rtol=0, atol=1e-15)


def test_split_heads_leave_the_function_unchanged():
    t = teacher("softmax")
    X, Y = sample_sequences(t, n=3, reps=1, seed=6)
    W0, V0 = near_teacher(t, 4, reps=1, seed=7, jitter=0.0)
    out = attention_heads(X, W0, V0, gate="softmax", bias=t.bias, scale=t.scale)
    torch.testing.assert_close(out, Y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("make", "field"), [
    (lambda t: near_teacher(t, 1, reps=1), "H"),
    (lambda t: AttentionTeacher("sigmoid", torch.zeros(2, 3, 4), torch.zeros(2, 3, 2), 5), "W"),
    (lambda t: AttentionTeacher("sigmoid", t.W, torch.zeros(2, 4, 2), 5), "V"),
    (lambda t: AttentionTeacher("sigmoid", t.W, t.V, 0), "seq_len"),
    (lambda t: AttentionTeacher("tanh", t.W, t.V, 5), "gate"),
    (lambda t: AttentionTeacher("sigmoid", t.W, t.V, 5, noise_var=-1.0), "noise_var"),
    (lambda t: fit_attention(torch.zeros(1, 2, 0, 3), torch.zeros(1, 2, 0, 2),
                             torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 2), gate="sigmoid"), "X"),
    (lambda t: fit_attention(torch.zeros(1, 2, 5, 3), torch.zeros(1, 2, 5, 2),
                             torch.zeros(1, 2, 3, 2), torch.zeros(1, 2, 3, 2), gate="sigmoid"), "W0"),
])
def test_bad_input_names_the_field(make, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        make(teacher())


def test_the_studys_table_marks_the_curves_its_figure_draws():
    """The table listed all 12 curves unmarked, while the figure draws 8 (each panel's own
    cell type): as a sweep's table does, it marks them and lists them first."""
    from pathlib import Path

    import pandas as pd

    from moe_theory.rates import format_rates_table
    from moe_theory.studies import attention_teacher as study

    folder = Path(__file__).resolve().parents[2] / "paper_figures" / "attention-teacher"
    df = pd.read_csv(folder / "results.csv.gz")
    table = study.study_table(df, study.FULL_STUDY)
    drawn = table[table["plotted"]]
    assert len(drawn) == 8 and len(table) == 12
    cells = drawn["loss_name"].str.rsplit("_", n=1).str[1]
    assert set(zip(drawn["setting"], cells, strict=True)) == {
        ("attention-exact", "exact"), ("attention-over", "over")}
    assert format_rates_table(table) + "\n" == (folder / "rates.txt").read_text()


def test_attention_teacher_counts_a_collapsed_students_nan():
    """A fit whose heads collapse onto fewer teacher heads has no exact cell: its err_*_exact is
    NaN. The study dropped every NaN row, so that replication vanished from its curve, the table
    said "dropped 0" and the figure's legend nothing; only losses NaN in every fit (an exact
    student's over-specified cells) may go."""
    study = teacher_study.TeacherStudentStudy(d=2, d_v=1, seq_len=3, teacher_heads=1,
                                              extra_heads=1, n=(6, 12), reps=2, max_iter=2)
    real = teacher_study.head_errors

    def collapsed_rep0(W, V, teacher):
        errors = real(W, V, teacher)
        if W.shape[1] == teacher.heads:  # the exact student: replication 0 collapsed
            errors["err_W_exact"][0] = float("nan")
        return errors

    mp = pytest.MonkeyPatch()
    mp.setattr(teacher_study, "head_errors", collapsed_rep0)
    try:
        df = teacher_study.run_study(study, log=lambda _: None)
    finally:
        mp.undo()
    exact = df[df.setting == "attention-exact"]
    # an exact student of one teacher head never has an over-specified cell: no such curve
    assert not exact.loss_name.str.endswith("_over").any()
    curve = exact[(exact.fit_gate == "sigmoid") & (exact.loss_name == "err_W_exact")]
    assert len(curve) == len(study.n) * study.reps
    assert int(curve.loss_value.isna().sum()) == len(study.n)
    table = rates_table(df, theory=teacher_study.exploratory_rate)
    row = table[(table.setting == "attention-exact") & (table.fit_gate == "sigmoid")
                & (table.loss_name == "err_W_exact")].iloc[0]
    assert row["dropped_nan"] == len(study.n)
