# Stubs of the compiled module, written with pybind11-stubgen from the bindings' signatures;
# tests/python/test_package.py checks that they name every public _core function.
"""
eplb_native C++ core: placement plans, policies and the fused-operator reference
"""
import typing

import numpy
import numpy.typing

__all__: list[str] = ['MAX_ARRAY_ELEMENTS', 'MAX_THREADS', 'POLICY_NAMES', 'Plan', 'expert_load_from_slot_load', 'fused_moe_decode_ref', 'fused_moe_npu_tiling', 'fused_moe_route', 'keep_slots', 'max_load_lower_bound', 'plan_from_phy2log', 'plan_policy', 'rank_expert_maps', 'rank_loads', 'rank_log2phy', 'usable_cores', 'validate_plan', 'weight_copies_per_layer']
class Plan:
    """
    A placement plan held by the core: built by plan_from_phy2log or a policy, or from three maps (checked here); its maps are read-only views.
    """
    def __init__(self, phy2log: numpy.typing.ArrayLike, log2phy: numpy.typing.ArrayLike, logcnt: numpy.typing.ArrayLike) -> None:
        ...
    @property
    def phy2log(self) -> numpy.typing.NDArray[numpy.int64]:
        ...
    @property
    def log2phy(self) -> numpy.typing.NDArray[numpy.int64]:
        ...
    @property
    def logcnt(self) -> numpy.typing.NDArray[numpy.int64]:
        ...
    @property
    def num_layers(self) -> int:
        ...
    @property
    def num_experts(self) -> int:
        ...
    @property
    def num_physical(self) -> int:
        ...
    @property
    def max_replicas(self) -> int:
        ...
def expert_load_from_slot_load(plan: Plan, slot_load: numpy.typing.ArrayLike) -> numpy.typing.NDArray[numpy.float64]:
    """
    float64 [rows, L, N]: tokens per expert, its slots' tokens (slot_load [rows, L, P]) summed.
    """
def fused_moe_decode_ref(x: typing.Any, dtype: str, expert_ids: typing.Any, expert_scales: typing.Any, w1: list[typing.Any], w2: list[typing.Any], x_active_mask: typing.Any, out: typing.Any, expert_token_nums: typing.Any, moe_load: typing.Any = None, load_counter: typing.Any = None, num_threads: typing.SupportsInt | typing.SupportsIndex = 0, w1_scale: typing.Any = None, w2_scale: typing.Any = None, w1_scale_dtype: str = 'float32', w2_scale_dtype: str = 'float32') -> None:
    """
    Fused decode MoE CPU reference, in place. dtype 'bfloat16' | 'float16' | 'float32'; x [BS, H] (16-bit raw bits or float32), expert_ids int32 [BS, K], expert_scales float32 [BS, K], w1 list of E [H, 2I], w2 list of E [I, H] (empty for unused experts), x_active_mask bool [BS] or None; writes out [BS, H] and expert_token_nums int64 [E]; moe_load int64 [E] or int32 [T, E] with load_counter int32 [] updated. W8A8: int8 w1/w2 plus w1_scale (E arrays [2I]) and w2_scale (E arrays [H]) tagged w1_scale_dtype / w2_scale_dtype ('float32' | 'float16' | 'bfloat16').
    """
def fused_moe_npu_tiling(num_tokens: typing.SupportsInt | typing.SupportsIndex, hidden: typing.SupportsInt | typing.SupportsIndex, intermediate: typing.SupportsInt | typing.SupportsIndex, top_k: typing.SupportsInt | typing.SupportsIndex, num_experts: typing.SupportsInt | typing.SupportsIndex, dtype: str, *, w1_scale_dtype: str | None = None, w2_scale_dtype: str | None = None, load: str = 'none', load_steps: typing.SupportsInt | typing.SupportsIndex = 0, has_mask: bool = False, num_vector_cores: typing.SupportsInt | typing.SupportsIndex = 48, num_cube_cores: typing.SupportsInt | typing.SupportsIndex = 24) -> dict[str, int]:
    """
    Tiling of the Ascend kernels for one call (block counts, GEMM output row strides, workspace bytes) after checking it against their limits (ValueError naming the field). dtype 'bfloat16' | 'float16'; W8A8 when both scale dtypes are given ('float32' or the activation dtype); load 'none' | 'total' | 'ring' (load_steps rows).
    """
def fused_moe_route(expert_ids: numpy.typing.ArrayLike, num_experts: typing.SupportsInt | typing.SupportsIndex, x_active_mask: typing.Any = None) -> tuple[numpy.typing.NDArray[numpy.int64], numpy.typing.NDArray[numpy.int64], numpy.typing.NDArray[numpy.int64]]:
    """
    Routing phase only: (counts int64 [E], offsets int64 [E + 1], row_of int64 [BS, K], -1 for skipped pairs). Row order: by expert, then (token, k).
    """
def keep_slots(phy2log: numpy.typing.ArrayLike, old_phy2log: numpy.typing.ArrayLike, num_ranks: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.int64]:
    """
    int64 [L, P]: phy2log with, inside each rank, the experts old_phy2log (-1: empty slot) has there back in their old slots; the others fill the free slots in order.
    """
def plan_policy(policy: str, load: numpy.typing.ArrayLike, num_replicas: typing.SupportsInt | typing.SupportsIndex, num_groups: typing.SupportsInt | typing.SupportsIndex, num_nodes: typing.SupportsInt | typing.SupportsIndex, num_ranks: typing.SupportsInt | typing.SupportsIndex, current: numpy.typing.ArrayLike | None = None, history: numpy.typing.ArrayLike | None = None, num_threads: typing.SupportsInt | typing.SupportsIndex = 0, seed: typing.SupportsInt | typing.SupportsIndex = 0, options: dict[str, typing.Any] = {}) -> Plan:
    """
    Plan of the policy named `policy` (one of POLICY_NAMES): load float64 [L, N], P, G, H, D, current int64 [L, P] | None (the table in force), history int64 or float64 [T, L, N] | None (read in place), num_threads, seed, options {name: value} of that policy (swift_balancer: max_moves_per_layer; flashlb: z_score, max_depth, width, episode_steps, max_episodes, incremental, max_moves_per_layer, keep_margin).
    """
def layer_balance(plan: Plan, load: numpy.typing.ArrayLike, num_ranks: typing.SupportsInt | typing.SupportsIndex, num_threads: typing.SupportsInt | typing.SupportsIndex = 1) -> numpy.typing.NDArray[numpy.float64]:
    """
    float64 [rows, L]: each layer's balance per row of load [rows, L, N], mean / peak rank load (1.0 for a row with no load); equal to numpy's 1 / peak_to_average(rank_loads(...)). num_threads: 0 for all cores.
    """
def max_load_lower_bound(load: numpy.typing.ArrayLike, num_physical: typing.SupportsInt | typing.SupportsIndex, num_ranks: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.float64]:
    """
    float64 [R]: per row of load float64 [R, N] (tokens per expert), a lower bound on the busiest rank's tokens of any placement on num_physical slots over num_ranks ranks: the larger of the mean rank load and the smallest possible largest per-replica load (each expert on 1..num_ranks slots).
    """
def placement_violations(current_table: numpy.typing.ArrayLike, new_table: numpy.typing.ArrayLike) -> numpy.typing.NDArray[numpy.int64]:
    """
    int64 [L, 3]: per layer of new_table int64 [L, D, S] against current_table (the table in force, same shape; a negative id is an empty slot), the first break of each placement rule: the smallest expert of current_table with no replica left, the first rank holding an expert more than once and more often than current_table there, the first rank where an expert that stays on it changes slot; -1 for a rule kept.
    """
def plan_from_phy2log(phy2log: numpy.typing.ArrayLike, num_experts: typing.SupportsInt | typing.SupportsIndex) -> Plan:
    """
    Plan from phy2log int64 [L, P] and N: log2phy [L, N, max_replicas] (-1 padded) and logcnt [L, N] derived.
    """
def rank_expert_maps(plan: Plan, num_ranks: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.int64]:
    """
    int64 [D, L, N]: local slot of expert e on rank r, -1 if absent.
    """
def rank_loads(plan: Plan, load: numpy.typing.ArrayLike, num_ranks: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.float64]:
    """
    float64 [rows, L, D]: tokens per rank, each expert's tokens (load [rows, L, N]) split evenly among its replicas.
    """
def rank_log2phy(plan: Plan, num_ranks: typing.SupportsInt | typing.SupportsIndex, tp_size: typing.SupportsInt | typing.SupportsIndex = 0) -> numpy.typing.NDArray[numpy.int64]:
    """
    int64 [D, L, N]: physical slot that rank r routes expert e's tokens to (tp_size 0: own replica, else an even spread; >= 1: vllm-ascend's generate_log2phy_map rule).
    """
def usable_cores() -> int:
    """
    Cores this process may use: its CPU affinity, capped by a cgroup CPU quota.
    """
def validate_plan(plan: Plan, num_ranks: typing.SupportsInt | typing.SupportsIndex, allow_duplicate_on_rank: bool = False) -> None:
    """
    Raise ValueError naming the field unless the plan is a valid placement on num_ranks ranks.
    """
def scan_load_values(values: numpy.typing.ArrayLike) -> tuple[bool, float]:
    """
    (all_valid, total): one pass over float64 values of any shape, whether all are finite and >= 0 and their sum (without naming a bad value: a caller that needs its index looks for it only when all_valid is False).
    """
def weight_copies_per_layer(old: numpy.typing.ArrayLike, new: numpy.typing.ArrayLike, num_ranks: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.int64]:
    """
    int64 [L]: per layer, the slots of new int64 [L, P] whose expert is not on the same rank in old int64 [L, P] (-1: an empty slot, holding nothing in old and needing no copy in new); a replica moving between slots of one rank costs nothing.
    """
MAX_ARRAY_ELEMENTS: int
POLICY_NAMES: tuple[str, ...]
MAX_THREADS: int
__version__: str
