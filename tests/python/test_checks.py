"""The shared integer and index checks: what they accept, and messages that name the field."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_native.checks import check_divisor, check_int, check_layer_ids, check_positive_int


def test_integers_pass_as_python_ints() -> None:
    assert check_int(np.int32(3), "rank", minimum=0, below=4) == 3
    assert type(check_int(np.int64(3), "rank", minimum=0, below=4)) is int
    assert check_positive_int(np.uint8(7), "top_k") == 7
    assert check_divisor(np.int64(4), "ranks_per_node", 8, "8 ranks") == 4
    assert check_layer_ids([2, 0], 3).tolist() == [2, 0]
    assert check_layer_ids([], 3).size == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: check_int(4, "rank", minimum=0, below=4), "rank: expected an integer in [0, 4), got 4"),
        (lambda: check_int(True, "rank", minimum=0, below=4), "rank: expected an integer in [0, 4), got True"),
        (lambda: check_int(-1, "first_k_dense", minimum=0), "first_k_dense: expected an integer >= 0, got -1"),
        (lambda: check_int(2**63, "seed", minimum=0), "seed: expected an integer < 2**63"),
        (lambda: check_int(1.0, "layer", minimum=0, below=2), "layer: expected an integer in [0, 2), got 1.0"),
        (lambda: check_positive_int(0, "collection_interval"), "collection_interval: expected a positive integer"),
        (lambda: check_divisor(3, "ranks_per_node", 8, "8 ranks"), "ranks_per_node: expected a positive divisor of 8 ranks, got 3"),
        (lambda: check_divisor(0, "ranks_per_node", 8, "8 ranks"), "ranks_per_node: expected a positive divisor of 8 ranks, got 0"),
        (lambda: check_layer_ids([0, 0], 2), "layers: expected distinct layer ids in [0, 2), got [0, 0]"),
        (lambda: check_layer_ids([2], 2), "layers: expected distinct layer ids in [0, 2), got [2]"),
    ],
)
def test_bad_values_name_the_field(call, message: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)
