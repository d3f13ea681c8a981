"""Which model layers are MoE layers: the explicit map from model layer index to MoE layer index.

Dense layers (no routed experts, e.g. DeepSeek-V3's first three) have no placement; every plan,
heat buffer and expert map is indexed by MoE layer, and this map translates.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from eplb_native.checks import check_int, check_positive_int

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MoeLayerMap:
    """Model layers and which of them are MoE layers.

    Example:
        >>> layers = MoeLayerMap.from_first_k_dense(num_model_layers=61, first_k_dense=3)
        >>> layers.num_moe_layers, layers.moe_index(3), layers.moe_index(0)
        (58, 0, None)

    Attributes:
        num_model_layers: all decoder layers of the model.
        moe_layer_ids: the model layer index of each MoE layer, ascending.
    """

    num_model_layers: int
    moe_layer_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        check_positive_int(self.num_model_layers, "num_model_layers")
        ids = self.moe_layer_ids
        if not ids:
            msg = "moe_layer_ids: the model has no MoE layer; there is nothing to balance"
            raise ValueError(msg)
        if list(ids) != sorted(set(ids)) or ids[0] < 0 or ids[-1] >= self.num_model_layers:
            msg = (
                f"moe_layer_ids: expected distinct ascending ids in [0, {self.num_model_layers}), "
                f"got {list(ids)}"
            )
            raise ValueError(msg)

    @classmethod
    def all_moe(cls, num_layers: int) -> MoeLayerMap:
        """Every layer is a MoE layer."""
        return cls(num_layers, tuple(range(num_layers)))

    @classmethod
    def from_mask(cls, is_moe: Sequence[bool]) -> MoeLayerMap:
        """From one flag per model layer (True: MoE layer)."""
        layer_map = cls(len(is_moe), tuple(i for i, flag in enumerate(is_moe) if flag))
        if layer_map.dense_layer_ids:
            logger.info("dense layers skipped (no routed experts): %s", list(layer_map.dense_layer_ids))
        return layer_map

    @classmethod
    def from_first_k_dense(
        cls, num_model_layers: int, first_k_dense: int = 0, moe_layer_freq: int = 1
    ) -> MoeLayerMap:
        """DeepSeek/Qwen config style: layers ``>= first_k_dense`` with index divisible by
        ``moe_layer_freq`` (counted from ``first_k_dense``) are MoE layers."""
        check_int(first_k_dense, "first_k_dense", minimum=0)
        check_positive_int(moe_layer_freq, "moe_layer_freq")
        return cls.from_mask(
            [i >= first_k_dense and (i - first_k_dense) % moe_layer_freq == 0 for i in range(num_model_layers)]
        )

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layer_ids)

    @property
    def dense_layer_ids(self) -> tuple[int, ...]:
        moe = set(self.moe_layer_ids)
        return tuple(i for i in range(self.num_model_layers) if i not in moe)

    def moe_index(self, model_layer_idx: int) -> int | None:
        """The MoE layer index of a model layer, or None for a dense layer."""
        layer_idx = check_int(model_layer_idx, "model_layer_idx", minimum=0, below=self.num_model_layers)
        return self.moe_layer_ids.index(layer_idx) if layer_idx in self.moe_layer_ids else None
