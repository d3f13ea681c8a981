"""DeepSeek EPLB's published algorithm (deepseek-ai/EPLB) in plain numpy: the baseline that
bench_planning_time.py times against the C++ default_eplb. Written from the algorithm's
description, in the same shape as the published torch version: the replication step is
vectorised over layers, the packing steps loop in Python. float32 as DeepSeek (``weight.float()``);
sort ties go to the lower index (a stable sort).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


def balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[IntArray, IntArray]:
    """weight float32 [X, n] -> (pack_index, rank_in_pack) int64 [X, n], n / num_packs per pack."""
    num_rows, num_items = weight.shape
    per_pack = num_items // num_packs
    if per_pack == 1:
        return np.tile(np.arange(num_items), (num_rows, 1)), np.zeros(
            (num_rows, num_items), np.int64
        )
    order = np.argsort(-weight, axis=-1, kind="stable")
    pack_index = np.full((num_rows, num_items), -1, dtype=np.int64)
    rank_in_pack = np.full((num_rows, num_items), -1, dtype=np.int64)
    for row in range(num_rows):
        pack_weight = np.zeros(num_packs, dtype=np.float32)
        pack_items = [0] * num_packs
        for item in order[row]:
            pack = min(
                (p for p in range(num_packs) if pack_items[p] < per_pack),
                key=pack_weight.__getitem__,
            )
            pack_index[row, item] = pack
            rank_in_pack[row, item] = pack_items[pack]
            pack_weight[pack] += weight[row, item]
            pack_items[pack] += 1
    return pack_index, rank_in_pack


def replicate_experts(weight: np.ndarray, num_physical: int) -> tuple[IntArray, IntArray, IntArray]:
    """weight float32 [X, n] -> (phy2log, replica_rank int64 [X, num_physical], logcnt [X, n])."""
    num_rows, num_items = weight.shape
    phy2log = np.tile(np.arange(num_physical), (num_rows, 1))
    replica_rank = np.zeros((num_rows, num_physical), dtype=np.int64)
    logcnt = np.ones((num_rows, num_items), dtype=np.int64)
    rows = np.arange(num_rows)
    for slot in range(num_items, num_physical):
        chosen = (weight / logcnt.astype(np.float32)).argmax(axis=-1)  # first maximum on ties
        phy2log[:, slot] = chosen
        replica_rank[rows, slot] = logcnt[rows, chosen]
        logcnt[rows, chosen] += 1
    return phy2log, replica_rank, logcnt


def _inverse(perm: IntArray) -> IntArray:
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.broadcast_to(np.arange(perm.shape[1]), perm.shape), axis=1)
    return inv


def _hierarchical(
    weight: np.ndarray, num_physical: int, num_groups: int, num_nodes: int, num_ranks: int
) -> IntArray:
    num_layers, num_experts = weight.shape
    group_size = num_experts // num_groups
    groups_per_node = num_groups // num_nodes
    slots_per_rank = num_physical // num_ranks
    group_load = weight.reshape(num_layers, num_groups, group_size).sum(axis=-1)
    group_pack, group_rank = balanced_packing(group_load, num_nodes)
    log2mlog = (
        ((group_pack * groups_per_node + group_rank) * group_size)[:, :, None]
        + np.arange(group_size)
    ).reshape(num_layers, num_experts)
    mlog2log = _inverse(log2mlog)
    mlog_load = np.take_along_axis(weight, mlog2log, axis=-1).reshape(-1, num_experts // num_nodes)
    phy2mlog, _, mlogcnt = replicate_experts(mlog_load, num_physical // num_nodes)
    phy_load = np.take_along_axis(mlog_load / mlogcnt.astype(np.float32), phy2mlog, axis=-1)
    pack, rank_in_pack = balanced_packing(phy_load, num_ranks // num_nodes)
    pphy2phy = _inverse(pack * slots_per_rank + rank_in_pack)
    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, axis=-1)
    offsets = np.arange(0, num_experts, num_experts // num_nodes)[None, :, None]
    pphy2mlog = (pphy2mlog.reshape(num_layers, num_nodes, -1) + offsets).reshape(num_layers, -1)
    return np.take_along_axis(mlog2log, pphy2mlog, axis=-1)


def rebalance_experts(
    weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int, num_ranks: int
) -> IntArray:
    """phy2log int64 [L, P] for weight [L, N], as DeepSeek EPLB plans it."""
    weight32 = np.asarray(weight, dtype=np.float32)
    if num_groups % num_nodes == 0:
        return _hierarchical(weight32, num_replicas, num_groups, num_nodes, num_ranks)
    return _hierarchical(weight32, num_replicas, 1, 1, num_ranks)
