"""Bad input to the plan model: one table, each case through the Python API and through _core."""

from __future__ import annotations

import numpy as np
import pytest

import eplb_native
from eplb_native import _core

GOOD = eplb_native.Plan.from_phy2log(np.array([[7, 2, 0, 3, 5, 6, 1, 4, 7, 2]]), 8)


def _with(**arrays):
    """A Plan of GOOD's maps with ``arrays`` in place of some (checked as it is built)."""
    maps = {"phy2log": GOOD.phy2log, "log2phy": GOOD.log2phy, "logcnt": GOOD.logcnt}
    return eplb_native.Plan(**{**maps, **{k: np.asarray(v) for k, v in arrays.items()}})


# (case id, python call, _core call or None, field named in the message)
CASES = [
    (
        "phy2log id out of range",
        lambda: eplb_native.Plan.from_phy2log([[0, 1, 9]], 3),
        lambda: _core.plan_from_phy2log(np.array([[0, 1, 9]]), 3),
        "phy2log: layer 0, slot 2: expert id 9 outside [0, 3)",
    ),
    (
        "expert without replica",
        lambda: eplb_native.Plan.from_phy2log([[0, 0, 1]], 3),
        lambda: _core.plan_from_phy2log(np.array([[0, 0, 1]]), 3),
        "phy2log: layer 0: expert 2 has no replica",
    ),
    (
        "phy2log wrong ndim",
        lambda: eplb_native.Plan.from_phy2log(np.zeros((1, 2, 3), dtype=np.int64), 3),
        lambda: _core.plan_from_phy2log(np.zeros((1, 2, 3), dtype=np.int64), 3),
        "phy2log: expected a non-empty",
    ),
    (
        "phy2log empty",
        lambda: eplb_native.Plan.from_phy2log(np.zeros((1, 0), dtype=np.int64), 3),
        lambda: _core.plan_from_phy2log(np.zeros((1, 0), dtype=np.int64), 3),
        "phy2log: expected a non-empty",
    ),
    (
        "phy2log float ids",
        lambda: eplb_native.Plan.from_phy2log([[0.5, 1.0]], 2),
        None,
        "phy2log: expected integer expert ids",
    ),
    (
        "logcnt disagrees",
        lambda: eplb_native.validate_plan(_with(logcnt=GOOD.logcnt + 1), 2),
        lambda: _core.validate_plan(_core.Plan(GOOD.phy2log, GOOD.log2phy, GOOD.logcnt + 1), 2, False),
        "logcnt: layer 0, expert 0",
    ),
    (
        "log2phy points elsewhere",
        lambda: eplb_native.validate_plan(_with(log2phy=GOOD.log2phy[:, ::-1]), 2),
        lambda: _core.validate_plan(_core.Plan(GOOD.phy2log, GOOD.log2phy[:, ::-1].copy(), GOOD.logcnt), 2, False),
        "log2phy: layer 0, expert 0",
    ),
    (
        "log2phy wrong shape",
        lambda: eplb_native.validate_plan(_with(log2phy=GOOD.log2phy[:, :4]), 2),
        lambda: _core.validate_plan(_core.Plan(GOOD.phy2log, GOOD.log2phy[:, :4].copy(), GOOD.logcnt), 2, False),
        "log2phy: shape (1, 4, 2) does not match",
    ),
    (
        "ranks do not divide slots",
        lambda: eplb_native.validate_plan(GOOD, 3),
        lambda: _core.validate_plan(GOOD.core, 3, False),
        "num_ranks: 10 physical slots cannot be split evenly over 3 ranks",
    ),
    (
        "zero ranks",
        lambda: eplb_native.validate_plan(GOOD, 0),
        lambda: _core.validate_plan(GOOD.core, 0, False),
        "num_ranks: expected a positive",
    ),
    (
        "duplicate on rank",
        lambda: eplb_native.validate_plan(eplb_native.Plan.from_phy2log([[0, 0, 1, 2]], 3), 2),
        lambda: _core.validate_plan(_core.plan_from_phy2log(np.array([[0, 0, 1, 2]]), 3), 2, False),
        "phy2log: layer 0: rank 0 holds expert 0 twice",
    ),
    (
        "rank maps with uneven ranks",
        lambda: eplb_native.rank_expert_maps(GOOD, 4),
        lambda: _core.rank_expert_maps(GOOD.core, 4),
        "num_ranks: 10 physical slots cannot be split evenly over 4 ranks",
    ),
    (
        "NaN load",
        lambda: eplb_native.evaluate(GOOD, [[np.nan] * 8], 2),
        None,
        "load: NaN at index (0, 0)",
    ),
    (
        "negative load",
        lambda: eplb_native.evaluate(GOOD, [[1, 2, 3, -4, 5, 6, 7, 8]], 2),
        None,
        "load: negative value at index (0, 3)",
    ),
    (
        "load wrong shape",
        lambda: eplb_native.evaluate(GOOD, np.ones((1, 7)), 2),
        None,
        "load: expected [..., L, N] = [..., 1, 8], got (1, 7)",
    ),
    (
        "load wrong ndim",
        lambda: eplb_native.evaluate(GOOD, np.ones(8), 2),
        None,
        "load: expected a non-empty array",
    ),
    (
        "copies shape mismatch",
        lambda: eplb_native.count_weight_copies(GOOD, np.zeros((2, 10), dtype=np.int64), 2),
        None,
        "new: shape (2, 10) does not match old (1, 10)",
    ),
    (
        "default placement uneven",
        lambda: eplb_native.default_placement(2, 8, 3, 0),
        None,
        "num_redundant_experts: 8 experts + 0 redundant = 8 slots, not a multiple of num_ranks=3",
    ),
    (
        "default placement bool ranks",
        lambda: eplb_native.default_placement(2, 8, True, 0),
        None,
        "num_ranks: expected a positive integer",
    ),
]


@pytest.mark.parametrize(("case", "python_call", "core_call", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_names_the_field(case, python_call, core_call, message):
    with pytest.raises(ValueError) as info:
        python_call()
    assert message in str(info.value), f"{case}: {info.value}"
    if core_call is not None:
        with pytest.raises(ValueError) as info:
            core_call()
        field = message.split(":")[0]
        assert str(info.value).startswith(field + ":"), f"{case}: {info.value}"
