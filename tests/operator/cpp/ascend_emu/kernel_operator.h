#pragma once
// Host emulation of the subset of the Ascend C API (namespace AscendC) that
// ascend_kernels/kernels/*.cpp use, so the unchanged kernel sources compile with g++ and run on
// the CPU against the C++ reference (tests/operator/cpp/ascend_emu/test_kernels_emulated.cpp).
//
// Written from the API documentation (asc-devkit docs, dav-2201 = Atlas A2/A3), not from its
// sources. It models what the kernels rely on and checks the hardware rules that host code would
// otherwise never exercise:
//   * Memories per TPipe: UB 192 KiB (184 KiB for InitBuffer) on vector cores; L1 512 KiB - 128,
//     L0A 64 KiB, L0B 64 KiB, L0C 128 KiB on cube cores. A kernel declared
//     KERNEL_TYPE_AIV_ONLY may allocate UB only and run vector ops; KERNEL_TYPE_AIC_ONLY the
//     cube memories only and run DataCopy(ND2NZ) / LoadData / Mmad / Fixpipe.
//   * Alignment: UB and L1 operands 32 bytes, L0A/L0B 512 bytes, Mmad's L0C 1024 bytes,
//     Fixpipe's L0C 64 bytes.
//   * DataCopyPad GM<->UB: documented units (bytes on the GM side, 32-byte blocks on the UB
//     side), every access inside both tensors.
//   * Cube path: ND2NZ DataCopy (zero padding of the last 32-byte column block, parameter
//     ranges), LoadData 2D (512-byte fractals, transposition for 16-bit types only),
//     LoadDataWithTranspose (int8 32x32 squares), Mmad (Zz x Zn -> Nz layouts, the dtype pairs
//     of dav-2201, m, n, k <= 4095, m = 1 rejected because it selects GEMV mode), Fixpipe
//     V220 NZ2ND (nSize a multiple of 16, rows that do not overlap), InitConstValue. Bytes of
//     L1/L0A/L0B/L0C that were never written are tracked: an Mmad or Fixpipe that consumes one
//     fails. The Mmad model accumulates in fp32 (int32 for int8) in ascending k; the hardware's
//     order inside one Mmad is not published.
//   * Pipe hazards: every write is recorded per producing pipe (S, V, MTE1, MTE2, MTE3, M, FIX)
//     and a read by another pipe of bytes not yet handed over fails, as does a dependent vector
//     op without PipeBarrier<PIPE_V> and an Mmad accumulating into L0C written by an Mmad with
//     (m/16)*(n/16) < 10 without PipeBarrier<PIPE_M> (the documented threshold). On the cube
//     memories write-after-read is checked as well (a pipe may not overwrite bytes another pipe
//     read until that pipe hands them back). Hand-overs: SetFlag<X_Y>/WaitFlag<X_Y> (the
//     WaitFlag releases what pipe X had done when the matching SetFlag was issued; a WaitFlag
//     without a pending SetFlag, a second SetFlag before its WaitFlag, or a block that ends with
//     a flag still set fails), PipeBarrier, and EnQue/DeQue of a VECIN (MTE2->V), VECOUT
//     (V->MTE3) or bound VECIN/VECOUT (MTE2->MTE3) queue.
//   * Cast: only the source/destination/rounding combinations the dav-2201 table lists.
// Blocks of a launch run one after another (the test's launch()); the kernels never
// synchronise across blocks, so this is a valid schedule.
// Exp is the reference's exp (fp32 of the double exp) so an emulated run can be bit-exact.

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <array>
#include <cstring>
#include <iterator>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "eplb_native/operator/shared/float16.h"

#define __aicore__
#define __global__
#define __gm__
#define KERNEL_TASK_TYPE_DEFAULT(type) ::AscendC::emu_set_kernel_type(type)

using GM_ADDR = uint8_t*;

// 16-bit float types with the device's conversions (exact widening, RNE narrowing).
struct bfloat16_t {
    uint16_t bits = 0;
    bfloat16_t() = default;
    bfloat16_t(float value) : bits(eplb_native::shared::f32_to_bf16_rne(value)) {}  // NOLINT
    operator float() const { return eplb_native::shared::bf16_to_f32(bits); }       // NOLINT
};
struct half {
    uint16_t bits = 0;
    half() = default;
    half(float value) : bits(eplb_native::shared::f32_to_f16_rne(value)) {}  // NOLINT
    operator float() const { return eplb_native::shared::f16_to_f32(bits); }  // NOLINT
};

enum pipe_t { PIPE_S, PIPE_V, PIPE_M, PIPE_MTE1, PIPE_MTE2, PIPE_MTE3, PIPE_FIX, PIPE_ALL };
enum KernelMetaType { KERNEL_TYPE_AIV_ONLY, KERNEL_TYPE_AIC_ONLY };
enum QuantMode_t { NoQuant, F322F16, F322BF16 };

namespace AscendC {

constexpr int64_t kEmuUbBytes = 192 * 1024;
constexpr int64_t kEmuUbUsable = 184 * 1024;
constexpr int64_t kEmuL1Usable = 512 * 1024 - 128;
constexpr int64_t kEmuL0ABytes = 64 * 1024;
constexpr int64_t kEmuL0BBytes = 64 * 1024;
constexpr int64_t kEmuL0CBytes = 128 * 1024;
constexpr int64_t kEmuBlock = 32;
constexpr int64_t kEmuFractal = 512;
constexpr int32_t kEmuEventIds = 8;

[[noreturn]] inline void emu_fail(const std::string& what) {
    throw std::logic_error("AscendC emulation: " + what);
}
inline void emu_check(bool ok, const std::string& what) {
    if (!ok) {
        emu_fail(what);
    }
}

enum class TPosition { GM, VECIN, VECOUT, VECCALC, A1, B1, A2, B2, CO1 };
enum class HardEvent {
    MTE2_S, S_MTE3, V_S, S_V, MTE2_V, V_MTE3, MTE3_V, MTE3_S, V_MTE2, MTE3_MTE2,
    MTE2_MTE1, MTE1_MTE2, MTE1_M, M_MTE1, M_FIX, FIX_M
};
enum class RoundMode { CAST_NONE, CAST_RINT };
enum class CacheLine { SINGLE_CACHE_LINE, ENTIRE_DATA_CACHE };
enum class DcciDst { CACHELINE_ALL, CACHELINE_UB, CACHELINE_OUT, CACHELINE_ATOMIC };

// ---- memories --------------------------------------------------------------------------------
enum class Memory : int { kUb = 0, kL1 = 1, kL0A = 2, kL0B = 3, kL0C = 4 };
constexpr int kMemories = 5;
inline const char* memory_name(Memory m) {
    static const char* const names[kMemories] = {"UB", "L1", "L0A", "L0B", "L0C"};
    return names[static_cast<int>(m)];
}
inline bool is_cube_memory(Memory m) { return m != Memory::kUb; }

constexpr Memory memory_of(TPosition p) {
    switch (p) {
        case TPosition::A1:
        case TPosition::B1:
            return Memory::kL1;
        case TPosition::A2:
            return Memory::kL0A;
        case TPosition::B2:
            return Memory::kL0B;
        case TPosition::CO1:
            return Memory::kL0C;
        default:
            return Memory::kUb;
    }
}

// One on-chip memory of the emulated core: its bytes, which of them were ever written (cube
// memories), and the InitBuffer cursor.
struct Arena {
    Memory kind = Memory::kUb;
    std::vector<uint8_t> bytes;
    std::vector<uint8_t> written;
    int64_t capacity = 0;
    int64_t alignment = kEmuBlock;
    int64_t used = 0;
};

// ---- pipes ------------------------------------------------------------------------------------
enum class Pipe : int { kS = 0, kV = 1, kMte1 = 2, kMte2 = 3, kMte3 = 4, kM = 5, kFix = 6 };
constexpr int kPipes = 7;
inline const char* pipe_name(Pipe p) {
    static const char* const names[kPipes] = {"S", "V", "MTE1", "MTE2", "MTE3", "M", "FIX"};
    return names[static_cast<int>(p)];
}

// Disjoint [begin, end) byte ranges, each with a value.
template <typename V>
class SegmentMap {
public:
    void assign(uintptr_t begin, uintptr_t end, const V& value) {
        auto it = first_overlap(begin);
        while (it != segments_.end() && it->first < end) {
            const uintptr_t start = it->first;
            const Segment old = it->second;
            it = segments_.erase(it);
            if (start < begin) segments_[start] = {begin, old.value};
            if (old.end > end) segments_[end] = {old.end, old.value};
        }
        segments_[begin] = {end, value};
    }
    template <typename F>
    void for_each_overlap(uintptr_t begin, uintptr_t end, F&& visit) const {
        for (auto it = first_overlap(begin); it != segments_.end() && it->first < end; ++it) {
            visit(it->second.value);
        }
    }
    void clear() { segments_.clear(); }

private:
    struct Segment {
        uintptr_t end;
        V value;
    };
    typename std::map<uintptr_t, Segment>::const_iterator first_overlap(uintptr_t begin) const {
        auto it = segments_.lower_bound(begin);
        if (it != segments_.begin() && std::prev(it)->second.end > begin) {
            --it;
        }
        return it;
    }
    typename std::map<uintptr_t, Segment>::iterator first_overlap(uintptr_t begin) {
        auto it = segments_.lower_bound(begin);
        if (it != segments_.begin() && std::prev(it)->second.end > begin) {
            --it;
        }
        return it;
    }
    std::map<uintptr_t, Segment> segments_;
};

// Happens-before between the pipes of one core, with vector clocks: every recorded access
// advances its pipe's clock; clock[p][q] is the last access of pipe q that pipe p is ordered
// after (through events, queues and barriers, transitively). A pipe executes its own accesses
// in order, except that a vector op, or an Mmad below the size threshold, that reads what an
// earlier op of the same pipe wrote needs a PipeBarrier in between.
class PipeTracker {
public:
    using Clock = std::array<uint64_t, kPipes>;

    // `self_pending`: a later access of the same pipe must wait for a barrier. `cube`: the bytes
    // are on a cube memory, where write-after-read and write-after-write are checked too.
    void write(Pipe writer, const void* data, size_t bytes, bool self_pending, bool cube,
               const char* what) {
        const auto [b, e] = range(data, bytes);
        const int w = static_cast<int>(writer);
        if (cube) {
            for (int reader = 0; reader < kPipes; ++reader) {
                if (reader == w) continue;
                reads_[reader].for_each_overlap(b, e, [&](uint64_t ts) {
                    if (ts > clock_[w][static_cast<size_t>(reader)]) {
                        fail(what, writer, "overwrites bytes pipe", static_cast<Pipe>(reader),
                             "read (write after read)");
                    }
                });
            }
            writes_.for_each_overlap(b, e, [&](const Access& prior) {
                if (prior.pipe != w && prior.ts > clock_[w][static_cast<size_t>(prior.pipe)]) {
                    fail(what, writer, "overwrites bytes pipe", static_cast<Pipe>(prior.pipe),
                         "wrote (write after write)");
                }
            });
        }
        writes_.assign(b, e, Access{w, ++time_[w], self_pending});
    }
    void read(Pipe reader, const void* data, size_t bytes, bool cube, const char* what) {
        const auto [b, e] = range(data, bytes);
        const int r = static_cast<int>(reader);
        writes_.for_each_overlap(b, e, [&](const Access& prior) {
            const uint64_t seen = clock_[r][static_cast<size_t>(prior.pipe)];
            const bool ordered = prior.pipe == r ? !prior.self_pending || barrier_[r] >= prior.ts
                                                 : seen >= prior.ts;
            if (!ordered) {
                fail(what, reader, "reads bytes written by pipe", static_cast<Pipe>(prior.pipe),
                     "");
            }
        });
        const uint64_t ts = ++time_[r];
        if (cube) {
            reads_[r].assign(b, e, ts);
        }
    }
    // What pipe p is ordered after now (its own accesses included).
    Clock clock(Pipe p) const {
        Clock c = clock_[static_cast<int>(p)];
        c[static_cast<size_t>(p)] = time_[static_cast<int>(p)];
        return c;
    }
    void merge(Pipe p, const Clock& c) {
        Clock& mine = clock_[static_cast<int>(p)];
        for (size_t q = 0; q < mine.size(); ++q) {
            mine[q] = std::max(mine[q], c[q]);
        }
    }
    void barrier(Pipe p) { barrier_[static_cast<int>(p)] = time_[static_cast<int>(p)]; }
    void barrier_all() {
        for (int p = 0; p < kPipes; ++p) {
            for (int q = 0; q < kPipes; ++q) clock_[p][static_cast<size_t>(q)] = time_[q];
            barrier_[p] = time_[p];
        }
    }
    void reset() {
        *this = PipeTracker();
    }

private:
    struct Access {
        int pipe;
        uint64_t ts;
        bool self_pending;
    };
    static std::pair<uintptr_t, uintptr_t> range(const void* data, size_t bytes) {
        const auto b = reinterpret_cast<uintptr_t>(data);
        return {b, b + bytes};
    }
    [[noreturn]] static void fail(const char* what, Pipe pipe, const char* verb, Pipe other,
                                  const char* tail) {
        emu_fail(std::string(what) + " on pipe " + pipe_name(pipe) + " " + verb + " " +
                 pipe_name(other) + (tail[0] != 0 ? std::string(" ") + tail : "") +
                 " with no synchronisation in between");
    }
    uint64_t time_[kPipes] = {};
    Clock clock_[kPipes] = {};
    uint64_t barrier_[kPipes] = {};
    SegmentMap<Access> writes_;
    SegmentMap<uint64_t> reads_[kPipes];
};

struct EmuState {
    int64_t block_idx = 0;
    int64_t block_num = 1;
    bool atomic_add_i32 = false;
    int kernel_type = -1;  // KernelMetaType of the running kernel (-1: none declared)
    class TPipe* pipe = nullptr;
    PipeTracker pipes;
    std::map<std::pair<int, int32_t>, PipeTracker::Clock> events;  // (HardEvent, id) -> producer
    int64_t peak[kMemories] = {};  // largest InitBuffer total of one TPipe, per memory
};
inline EmuState& emu_state() {
    static EmuState state;  // the emulated core; test-only
    return state;
}
inline int64_t GetBlockIdx() { return emu_state().block_idx; }
inline int64_t GetBlockNum() { return emu_state().block_num; }
inline void emu_set_kernel_type(KernelMetaType type) { emu_state().kernel_type = type; }
inline bool emu_on_cube() { return emu_state().kernel_type == KERNEL_TYPE_AIC_ONLY; }

// Called by the launcher after every block: a flag left set would be consumed by nothing.
inline void emu_finish_block() {
    auto& state = emu_state();
    std::string left;
    if (!state.events.empty()) {
        const auto [event, id] = state.events.begin()->first;
        left = "event " + std::to_string(event) + ", id " + std::to_string(id);
    }
    state.events.clear();
    state.kernel_type = -1;
    state.pipes.reset();
    emu_check(left.empty(), "block ended with SetFlag (" + left + ") never waited for");
}

template <typename T>
inline void SetAtomicAdd() {
    static_assert(std::is_same_v<T, int32_t>, "emulation models int32 atomic add only");
    emu_state().atomic_add_i32 = true;
}
inline void SetAtomicNone() { emu_state().atomic_add_i32 = false; }

// ---- tensors -----------------------------------------------------------------------------------
template <typename T>
class GlobalTensor {
public:
    void SetGlobalBuffer(T* base, uint64_t size) {
        base_ = base;
        size_ = static_cast<int64_t>(size);
    }
    GlobalTensor operator[](int64_t offset) const {
        emu_check(offset >= 0 && offset <= size_, "GlobalTensor offset out of range");
        GlobalTensor view;
        view.base_ = base_ + offset;
        view.size_ = size_ - offset;
        return view;
    }
    T GetValue(int64_t i) const {
        emu_check(i >= 0 && i < size_, "GlobalTensor::GetValue out of range");
        return base_[i];
    }
    void SetValue(int64_t i, T value) {
        emu_check(i >= 0 && i < size_, "GlobalTensor::SetValue out of range");
        base_[i] = value;
    }
    T* data() const { return base_; }
    int64_t size() const { return size_; }

private:
    T* base_ = nullptr;
    int64_t size_ = 0;
};

template <typename T>
class LocalTensor {
public:
    LocalTensor() = default;
    LocalTensor(T* base, int64_t size, int64_t offset_bytes, Arena* arena)
        : base_(base), size_(size), offset_(offset_bytes), arena_(arena) {}
    LocalTensor operator[](int64_t offset) const {
        emu_check(offset >= 0 && offset <= size_, "LocalTensor offset out of range");
        return LocalTensor(base_ + offset, size_ - offset,
                           offset_ + offset * static_cast<int64_t>(sizeof(T)), arena_);
    }
    template <typename U>
    LocalTensor<U> ReinterpretCast() const {
        const int64_t bytes = size_ * static_cast<int64_t>(sizeof(T));
        return LocalTensor<U>(reinterpret_cast<U*>(base_),
                              bytes / static_cast<int64_t>(sizeof(U)), offset_, arena_);
    }
    T GetValue(int64_t i) const {
        emu_check(i >= 0 && i < size_, "LocalTensor::GetValue out of range");
        emu_check(memory() == Memory::kUb, "scalar access to a cube memory");
        emu_state().pipes.read(Pipe::kS, base_ + i, sizeof(T), false, "LocalTensor::GetValue");
        return base_[i];
    }
    void SetValue(int64_t i, T value) const {
        emu_check(i >= 0 && i < size_, "LocalTensor::SetValue out of range");
        emu_check(memory() == Memory::kUb, "scalar access to a cube memory");
        emu_state().pipes.write(Pipe::kS, base_ + i, sizeof(T), false, false,
                                "LocalTensor::SetValue");
        base_[i] = value;
    }
    T* data() const { return base_; }
    int64_t size() const { return size_; }
    int64_t offset_bytes() const { return offset_; }
    Arena* arena() const { return arena_; }
    Memory memory() const { return arena_ == nullptr ? Memory::kUb : arena_->kind; }
    bool aligned(int64_t bytes = kEmuBlock) const { return offset_ % bytes == 0; }

private:
    T* base_ = nullptr;
    int64_t size_ = 0;
    int64_t offset_ = 0;
    Arena* arena_ = nullptr;
};

// Written-byte bookkeeping of the cube memories.
template <typename T>
void mark_written(const LocalTensor<T>& t, int64_t byte_offset, int64_t bytes) {
    Arena* arena = t.arena();
    if (arena == nullptr || !is_cube_memory(arena->kind)) return;
    const int64_t begin = t.offset_bytes() + byte_offset;
    std::fill(arena->written.begin() + begin, arena->written.begin() + begin + bytes, uint8_t{1});
}
template <typename T>
bool is_written(const LocalTensor<T>& t, int64_t byte_offset, int64_t bytes) {
    const Arena* arena = t.arena();
    const int64_t begin = t.offset_bytes() + byte_offset;
    return std::all_of(arena->written.begin() + begin, arena->written.begin() + begin + bytes,
                       [](uint8_t w) { return w != 0; });
}

// ---- pipe, queues, buffers ----------------------------------------------------------------------
struct UbRegion {
    uint8_t* base = nullptr;
    int64_t bytes = 0;
    int64_t offset = 0;
    Arena* arena = nullptr;
};

class TPipe {
public:
    TPipe() {
        emu_state().pipe = this;
        emu_state().pipes.reset();
    }
    ~TPipe() {
        if (emu_state().pipe == this) {
            emu_state().pipe = nullptr;
        }
    }
    TPipe(const TPipe&) = delete;
    TPipe& operator=(const TPipe&) = delete;

    // Queue: `num` buffers of `bytes` each.
    template <typename Q>
    void InitBuffer(Q& queue, int32_t num, int64_t bytes) {
        for (int32_t i = 0; i < num; ++i) {
            queue.add_buffer(Allocate(Q::kMemory, bytes));
        }
    }
    // TBuf: one buffer.
    template <typename B>
    void InitBuffer(B& buf, int64_t bytes) {
        buf.add_buffer(Allocate(B::kMemory, bytes));
    }

    int32_t FetchEventID(HardEvent) const { return 0; }

    UbRegion Allocate(Memory m, int64_t bytes) {
        emu_check(bytes > 0, "InitBuffer of 0 bytes");
        const int kernel = emu_state().kernel_type;
        if (kernel == KERNEL_TYPE_AIV_ONLY) {
            emu_check(!is_cube_memory(m),
                      std::string("a vector kernel allocates ") + memory_name(m));
        } else if (kernel == KERNEL_TYPE_AIC_ONLY) {
            emu_check(is_cube_memory(m), "a cube kernel allocates UB (cube cores have none)");
        }
        Arena& arena = arena_of(m);
        const int64_t aligned = (bytes + arena.alignment - 1) / arena.alignment * arena.alignment;
        emu_check(arena.used + aligned <= arena.capacity,
                  std::string(memory_name(m)) + " exhausted: " +
                      std::to_string(arena.used + aligned) + " > " +
                      std::to_string(arena.capacity) + " bytes");
        UbRegion region{arena.bytes.data() + arena.used, aligned, arena.used, &arena};
        arena.used += aligned;
        int64_t& peak = emu_state().peak[static_cast<int>(m)];
        peak = std::max(peak, arena.used);
        return region;
    }

private:
    // Memories come into existence on first use (a core has either UB or the cube memories).
    Arena& arena_of(Memory m) {
        Arena& arena = arenas_[static_cast<int>(m)];
        if (arena.capacity == 0) {
            switch (m) {
                case Memory::kUb:
                    init_arena(arena, m, kEmuUbBytes, kEmuUbUsable, kEmuBlock);
                    break;
                case Memory::kL1:
                    init_arena(arena, m, kEmuL1Usable, kEmuL1Usable, kEmuBlock);
                    break;
                case Memory::kL0A:
                    init_arena(arena, m, kEmuL0ABytes, kEmuL0ABytes, kEmuFractal);
                    break;
                case Memory::kL0B:
                    init_arena(arena, m, kEmuL0BBytes, kEmuL0BBytes, kEmuFractal);
                    break;
                case Memory::kL0C:
                    init_arena(arena, m, kEmuL0CBytes, kEmuL0CBytes, 1024);
                    break;
            }
        }
        return arena;
    }
    static void init_arena(Arena& arena, Memory m, int64_t size, int64_t capacity,
                           int64_t alignment) {
        arena.kind = m;
        arena.bytes.assign(static_cast<size_t>(size), 0xA5);  // not zero: reads of stale data show
        arena.written.assign(is_cube_memory(m) ? static_cast<size_t>(size) : 0, 0);
        arena.capacity = capacity;
        arena.alignment = alignment;
    }
    Arena arenas_[kMemories];
};

template <typename T>
LocalTensor<T> local_view(const UbRegion& region) {
    return LocalTensor<T>(reinterpret_cast<T*>(region.base),
                          region.bytes / static_cast<int64_t>(sizeof(T)), region.offset,
                          region.arena);
}

class QueueImpl {
public:
    // A tensor is produced on `producer` before EnQue and consumed on `consumer` after DeQue.
    QueueImpl(int32_t depth, Pipe producer, Pipe consumer)
        : depth_(depth), producer_(producer), consumer_(consumer) {}
    void add_buffer(const UbRegion& region) {
        emu_check(static_cast<int32_t>(buffers_.size()) < depth_,
                  "more queue buffers than the queue depth");
        buffers_.push_back(region);
        busy_.push_back(false);
    }
    template <typename T>
    LocalTensor<T> AllocTensor() {
        for (size_t i = 0; i < buffers_.size(); ++i) {
            const size_t slot = (next_ + i) % buffers_.size();
            if (!busy_[slot]) {
                busy_[slot] = true;
                next_ = (slot + 1) % buffers_.size();
                return local_view<T>(buffers_[slot]);
            }
        }
        emu_fail("AllocTensor with every buffer of the queue outstanding");
    }
    // EnQue is a producer -> consumer event, DeQue its wait.
    template <typename T>
    void EnQue(const LocalTensor<T>& tensor) {
        queued_.push_back({reinterpret_cast<uint8_t*>(tensor.data()),
                           emu_state().pipes.clock(producer_)});
    }
    template <typename T>
    LocalTensor<T> DeQue() {
        emu_check(!queued_.empty(), "DeQue on an empty queue");
        const auto [base, clock] = queued_.front();
        queued_.erase(queued_.begin());
        emu_state().pipes.merge(consumer_, clock);
        return local_view<T>(region_of(base));
    }
    template <typename T>
    void FreeTensor(const LocalTensor<T>& tensor) {
        const auto* base = reinterpret_cast<const uint8_t*>(tensor.data());
        for (size_t i = 0; i < buffers_.size(); ++i) {
            if (buffers_[i].base == base) {
                emu_check(busy_[i], "FreeTensor of a tensor that is not allocated");
                busy_[i] = false;
                return;
            }
        }
        emu_fail("FreeTensor of a tensor from another queue");
    }

private:
    const UbRegion& region_of(const uint8_t* base) const {
        for (const UbRegion& region : buffers_) {
            if (region.base == base) {
                return region;
            }
        }
        emu_fail("DeQue of a foreign tensor");
    }
    int32_t depth_;
    Pipe producer_;
    Pipe consumer_;
    std::vector<UbRegion> buffers_;
    std::vector<bool> busy_;
    std::vector<std::pair<uint8_t*, PipeTracker::Clock>> queued_;
    size_t next_ = 0;
};

template <TPosition P, int32_t Depth>
class TQue : public QueueImpl {
    static_assert(P == TPosition::VECIN || P == TPosition::VECOUT, "emulated: VECIN/VECOUT");

public:
    static constexpr Memory kMemory = Memory::kUb;
    TQue()
        : QueueImpl(Depth, P == TPosition::VECIN ? Pipe::kMte2 : Pipe::kV,
                    P == TPosition::VECIN ? Pipe::kV : Pipe::kMte3) {}
};
template <TPosition Src, TPosition Dst, int32_t Depth>
class TQueBind : public QueueImpl {
    static_assert(Src == TPosition::VECIN && Dst == TPosition::VECOUT, "emulated: VECIN->VECOUT");

public:
    static constexpr Memory kMemory = Memory::kUb;
    TQueBind() : QueueImpl(Depth, Pipe::kMte2, Pipe::kMte3) {}
};

template <TPosition P>
class TBuf {
public:
    static constexpr Memory kMemory = memory_of(P);
    void add_buffer(const UbRegion& region) {
        emu_check(region_.base == nullptr, "TBuf initialised twice");
        region_ = region;
    }
    template <typename T>
    LocalTensor<T> Get() const {
        emu_check(region_.base != nullptr, "TBuf::Get before InitBuffer");
        return local_view<T>(region_);
    }

private:
    UbRegion region_;
};

// ---- synchronisation ---------------------------------------------------------------------------
constexpr std::pair<Pipe, Pipe> event_pipes(HardEvent e) {
    switch (e) {
        case HardEvent::MTE2_S: return {Pipe::kMte2, Pipe::kS};
        case HardEvent::S_MTE3: return {Pipe::kS, Pipe::kMte3};
        case HardEvent::V_S: return {Pipe::kV, Pipe::kS};
        case HardEvent::S_V: return {Pipe::kS, Pipe::kV};
        case HardEvent::MTE2_V: return {Pipe::kMte2, Pipe::kV};
        case HardEvent::V_MTE3: return {Pipe::kV, Pipe::kMte3};
        case HardEvent::MTE3_V: return {Pipe::kMte3, Pipe::kV};
        case HardEvent::MTE3_S: return {Pipe::kMte3, Pipe::kS};
        case HardEvent::V_MTE2: return {Pipe::kV, Pipe::kMte2};
        case HardEvent::MTE3_MTE2: return {Pipe::kMte3, Pipe::kMte2};
        case HardEvent::MTE2_MTE1: return {Pipe::kMte2, Pipe::kMte1};
        case HardEvent::MTE1_MTE2: return {Pipe::kMte1, Pipe::kMte2};
        case HardEvent::MTE1_M: return {Pipe::kMte1, Pipe::kM};
        case HardEvent::M_MTE1: return {Pipe::kM, Pipe::kMte1};
        case HardEvent::M_FIX: return {Pipe::kM, Pipe::kFix};
        case HardEvent::FIX_M: return {Pipe::kFix, Pipe::kM};
    }
    return {Pipe::kS, Pipe::kS};
}

template <HardEvent E>
void SetFlag(int32_t id) {
    emu_check(id >= 0 && id < kEmuEventIds, "event id outside 0..7");
    auto& state = emu_state();
    const auto key = std::make_pair(static_cast<int>(E), id);
    emu_check(state.events.count(key) == 0,
              "SetFlag of event " + std::to_string(key.first) + " id " + std::to_string(id) +
                  " that is already set (no WaitFlag in between)");
    state.events.emplace(key, state.pipes.clock(event_pipes(E).first));
}
// Orders the waiting pipe after what the producing pipe had done (and was ordered after) when
// the matching SetFlag was issued.
template <HardEvent E>
void WaitFlag(int32_t id) {
    auto& state = emu_state();
    const auto key = std::make_pair(static_cast<int>(E), id);
    const auto it = state.events.find(key);
    emu_check(it != state.events.end(), "WaitFlag of event " + std::to_string(key.first) + " id " +
                                            std::to_string(id) + " with no SetFlag (deadlock)");
    state.pipes.merge(event_pipes(E).second, it->second);
    state.events.erase(it);
}
template <pipe_t P>
void PipeBarrier() {
    static_assert(P == PIPE_V || P == PIPE_M || P == PIPE_ALL,
                  "emulated: PIPE_V, PIPE_M, PIPE_ALL");
    if (P == PIPE_V) {
        emu_state().pipes.barrier(Pipe::kV);
    } else if (P == PIPE_M) {
        emu_state().pipes.barrier(Pipe::kM);
    } else {
        emu_state().pipes.barrier_all();
    }
}

// ---- data movement GM <-> UB -------------------------------------------------------------------
struct DataCopyExtParams {
    uint16_t blockCount = 0;
    uint32_t blockLen = 0;
    uint32_t srcStride = 0;
    uint32_t dstStride = 0;
    uint32_t rsv = 0;
};
template <typename T>
struct DataCopyPadExtParams {
    bool isPad = false;
    uint8_t leftPadding = 0;
    uint8_t rightPadding = 0;
    T paddingValue = 0;
};

inline int64_t align_block(int64_t bytes) { return (bytes + kEmuBlock - 1) / kEmuBlock * kEmuBlock; }

// GM -> UB.
template <typename T>
void DataCopyPad(const LocalTensor<T>& dst, const GlobalTensor<T>& src,
                 const DataCopyExtParams& p, const DataCopyPadExtParams<T>&) {
    emu_check(dst.memory() == Memory::kUb, "DataCopyPad GM->UB into a cube memory");
    emu_check(dst.aligned(), "DataCopyPad GM->UB: UB destination not 32-byte aligned");
    emu_check(p.blockLen % sizeof(T) == 0, "DataCopyPad GM->UB: blockLen not a multiple of T");
    emu_check(p.blockCount >= 1 && p.blockCount <= 4095, "DataCopyPad: blockCount out of range");
    const int64_t len = p.blockLen;
    const int64_t src_step = len + p.srcStride;
    const int64_t dst_step = align_block(len) + int64_t{p.dstStride} * kEmuBlock;
    const int64_t src_bytes = src.size() * static_cast<int64_t>(sizeof(T));
    const int64_t dst_bytes = dst.size() * static_cast<int64_t>(sizeof(T));
    for (int64_t b = 0; b < p.blockCount; ++b) {
        emu_check(b * src_step + len <= src_bytes, "DataCopyPad GM->UB reads past the GM tensor");
        emu_check(b * dst_step + len <= dst_bytes, "DataCopyPad GM->UB writes past the UB tensor");
        uint8_t* out = reinterpret_cast<uint8_t*>(dst.data()) + b * dst_step;
        emu_state().pipes.write(Pipe::kMte2, out, static_cast<size_t>(len), false, false,
                                "DataCopyPad");
        std::memcpy(out, reinterpret_cast<const uint8_t*>(src.data()) + b * src_step,
                    static_cast<size_t>(len));
    }
}

// UB -> GM (element-wise int32 add when SetAtomicAdd<int32_t> is on).
template <typename T>
void DataCopyPad(const GlobalTensor<T>& dst, const LocalTensor<T>& src,
                 const DataCopyExtParams& p) {
    emu_check(src.memory() == Memory::kUb, "DataCopyPad UB->GM from a cube memory");
    emu_check(src.aligned(), "DataCopyPad UB->GM: UB source not 32-byte aligned");
    emu_check(p.blockCount >= 1 && p.blockCount <= 4095, "DataCopyPad: blockCount out of range");
    const int64_t len = p.blockLen;
    const int64_t src_step = align_block(len) + int64_t{p.srcStride} * kEmuBlock;
    const int64_t dst_step = len + p.dstStride;
    const int64_t src_bytes = src.size() * static_cast<int64_t>(sizeof(T));
    const int64_t dst_bytes = dst.size() * static_cast<int64_t>(sizeof(T));
    for (int64_t b = 0; b < p.blockCount; ++b) {
        emu_check(b * src_step + len <= src_bytes, "DataCopyPad UB->GM reads past the UB tensor");
        emu_check(b * dst_step + len <= dst_bytes, "DataCopyPad UB->GM writes past the GM tensor");
        auto* out = reinterpret_cast<uint8_t*>(dst.data()) + b * dst_step;
        const auto* in = reinterpret_cast<const uint8_t*>(src.data()) + b * src_step;
        emu_state().pipes.read(Pipe::kMte3, in, static_cast<size_t>(len), false,
                               "DataCopyPad UB->GM");
        if (emu_state().atomic_add_i32) {
            emu_check(sizeof(T) == 4 && len % 4 == 0, "atomic add emulated for int32 only");
            for (int64_t i = 0; i < len / 4; ++i) {
                int32_t a = 0;
                int32_t v = 0;
                std::memcpy(&a, out + 4 * i, 4);
                std::memcpy(&v, in + 4 * i, 4);
                a += v;
                std::memcpy(out + 4 * i, &a, 4);
            }
        } else {
            std::memcpy(out, in, static_cast<size_t>(len));
        }
    }
}

template <typename T, CacheLine L, DcciDst D>
void DataCacheCleanAndInvalid(const GlobalTensor<T>&) {}

// ---- cube path: GM -> L1 -> L0A/L0B -> Mmad -> L0C -> GM ----------------------------------------
struct Nd2NzParams {
    uint16_t ndNum = 0;
    uint16_t nValue = 0;
    uint16_t dValue = 0;
    uint16_t srcNdMatrixStride = 0;
    uint16_t srcDValue = 0;
    uint16_t dstNzC0Stride = 0;
    uint16_t dstNzNStride = 0;
    uint16_t dstNzMatrixStride = 0;
};
struct LoadData2DParams {
    uint16_t startIndex = 0;
    uint16_t dstGap = 0;
    uint16_t srcStride = 0;
    bool ifTranspose = false;
    uint8_t repeatTimes = 0;
    uint8_t sid = 0;
    uint8_t addrMode = 0;
};
struct LoadData2dTransposeParams {
    uint16_t startIndex = 0;
    uint8_t repeatTimes = 0;
    uint16_t srcStride = 0;
    uint16_t dstGap = 0;
    uint16_t dstFracGap = 0;
    uint8_t addrMode = 0;
};
struct MmadParams {
    uint16_t m = 0;
    uint16_t n = 0;
    uint16_t k = 0;
    bool isBias = false;
    int32_t fmOffset = 0;
    bool enSsparse = false;
    bool enWinogradA = false;
    bool enWinogradB = false;
    uint8_t unitFlag = 0;
    bool kDirectionAlign = false;
    bool cmatrixSource = false;
    bool cmatrixInitVal = true;
};
enum class CO2Layout : uint8_t { NZ = 0, ROW_MAJOR, COLUMN_MAJOR };
struct FixpipeConfig {
    CO2Layout format;
};
constexpr FixpipeConfig CFG_ROW_MAJOR = {CO2Layout::ROW_MAJOR};
constexpr FixpipeConfig CFG_NZ = {CO2Layout::NZ};
struct FixpipeParamsV220 {
    uint16_t nSize = 0;
    uint16_t mSize = 0;
    uint16_t srcStride = 0;
    uint32_t dstStride = 0;
    QuantMode_t quantPre = NoQuant;
    uint64_t deqScalar = 0;
    uint16_t ndNum = 1;
    uint16_t srcNdStride = 0;
    uint16_t dstNdStride = 0;
    bool reluEn = false;
    uint8_t unitFlag = 0;
    bool isChannelSplit = false;
};
template <typename T>
struct InitConstValueParams {
    InitConstValueParams() = default;
    InitConstValueParams(uint16_t repeats, uint16_t blocks, uint16_t gap, T value)
        : repeatTimes(repeats), blockNum(blocks), dstGap(gap), initValue(value) {}
    uint16_t repeatTimes = 0;
    uint16_t blockNum = 0;
    uint16_t dstGap = 0;
    T initValue = 0;
};

inline void require_cube(const char* what) {
    emu_check(emu_on_cube(), std::string(what) + " outside a KERNEL_TYPE_AIC_ONLY kernel");
}

// GM -> L1 with ND -> Nz conversion (MTE2). Row r, column c of ND matrix i lands at element
// i * dstNzMatrixStride + (c / C0) * dstNzC0Stride * C0 + r * dstNzNStride * C0 + c % C0 with
// C0 = 32 / sizeof(T); the last column block is zero-padded to C0.
template <typename T>
void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const Nd2NzParams& p) {
    require_cube("DataCopy ND2NZ");
    emu_check(dst.memory() == Memory::kL1, "DataCopy ND2NZ: destination must be L1 (A1/B1)");
    emu_check(dst.aligned(), "DataCopy ND2NZ: L1 destination not 32-byte aligned");
    if (p.ndNum == 0 || p.nValue == 0 || p.dValue == 0) {
        return;  // documented NOP
    }
    emu_check(p.ndNum <= 4095 && p.nValue <= 16384, "Nd2NzParams: ndNum or nValue out of range");
    emu_check(p.srcDValue >= 1 && p.srcDValue >= p.dValue, "Nd2NzParams: srcDValue < dValue");
    emu_check(p.dstNzC0Stride >= 1 && p.dstNzC0Stride <= 16384 && p.dstNzNStride >= 1 &&
                  p.dstNzNStride <= 16384,
              "Nd2NzParams: dstNzC0Stride / dstNzNStride outside 1..16384");
    constexpr int64_t c0 = kEmuBlock / static_cast<int64_t>(sizeof(T));
    const int64_t padded = (int64_t{p.dValue} + c0 - 1) / c0 * c0;
    for (int64_t i = 0; i < p.ndNum; ++i) {
        for (int64_t r = 0; r < p.nValue; ++r) {
            for (int64_t c = 0; c < padded; c += c0) {
                const int64_t out = i * p.dstNzMatrixStride + (c / c0) * p.dstNzC0Stride * c0 +
                                    r * p.dstNzNStride * c0;
                emu_check(out + c0 <= dst.size(), "DataCopy ND2NZ writes past the L1 tensor");
                const int64_t in = i * p.srcNdMatrixStride + r * p.srcDValue + c;
                const int64_t valid = std::min<int64_t>(c0, p.dValue - c);
                emu_check(in + valid <= src.size(), "DataCopy ND2NZ reads past the GM tensor");
                T* block = dst.data() + out;
                emu_state().pipes.write(Pipe::kMte2, block, kEmuBlock, false, true,
                                        "DataCopy ND2NZ");
                for (int64_t j = 0; j < c0; ++j) {
                    block[j] = j < valid ? src.data()[in + j] : T(0);
                }
                mark_written(dst, out * static_cast<int64_t>(sizeof(T)), kEmuBlock);
            }
        }
    }
}

// Fills blocks of L1 (32-byte blocks, MTE2) or L0A/L0B (512-byte blocks, MTE1) with a value.
template <typename T>
void InitConstValue(const LocalTensor<T>& dst, const InitConstValueParams<T>& p) {
    static_assert(sizeof(T) >= 2, "InitConstValue: dav-2201 fills 16- and 32-bit types only");
    require_cube("InitConstValue");
    const Memory m = dst.memory();
    emu_check(m == Memory::kL1 || m == Memory::kL0A || m == Memory::kL0B,
              "InitConstValue: only L1, L0A and L0B");
    const int64_t block = m == Memory::kL1 ? kEmuBlock : kEmuFractal;
    emu_check(dst.aligned(block), "InitConstValue: destination misaligned");
    const Pipe pipe = m == Memory::kL1 ? Pipe::kMte2 : Pipe::kMte1;
    for (int64_t r = 0; r < p.repeatTimes; ++r) {
        const int64_t start = r * (p.blockNum + p.dstGap) * block;
        const int64_t bytes = p.blockNum * block;
        emu_check((start + bytes) / static_cast<int64_t>(sizeof(T)) <= dst.size(),
                  "InitConstValue writes past the tensor");
        T* out = dst.data() + start / static_cast<int64_t>(sizeof(T));
        emu_state().pipes.write(pipe, out, static_cast<size_t>(bytes), false, true,
                                "InitConstValue");
        std::fill(out, out + bytes / static_cast<int64_t>(sizeof(T)), p.initValue);
        mark_written(dst, start, bytes);
    }
}

// Copies `fractal_bytes` bytes (transposed as a square of 16-bit elements when asked) and the
// written state that goes with them.
template <typename T>
void move_fractal(const LocalTensor<T>& dst, int64_t dst_byte, const LocalTensor<T>& src,
                  int64_t src_byte, bool transpose) {
    const auto* in = reinterpret_cast<const uint8_t*>(src.data()) + src_byte;
    auto* out = reinterpret_cast<uint8_t*>(dst.data()) + dst_byte;
    const uint8_t* in_written = src.arena()->written.data() + src.offset_bytes() + src_byte;
    uint8_t* out_written = dst.arena()->written.data() + dst.offset_bytes() + dst_byte;
    if (!transpose) {
        std::memcpy(out, in, kEmuFractal);
        std::memcpy(out_written, in_written, kEmuFractal);
        return;
    }
    constexpr int64_t side = 16;  // 16 x 16 two-byte elements
    for (int64_t r = 0; r < side; ++r) {
        for (int64_t c = 0; c < side; ++c) {
            std::memcpy(out + (r * side + c) * 2, in + (c * side + r) * 2, 2);
            std::memcpy(out_written + (r * side + c) * 2, in_written + (c * side + r) * 2, 2);
        }
    }
}

// L1 -> L0A/L0B in 512-byte fractals (MTE1): iteration i copies fractal startIndex + i * srcStride
// to destination fractal i * (dstGap + 1); ifTranspose transposes each 16 x 16 fractal.
template <typename T>
void LoadData(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LoadData2DParams& p) {
    require_cube("LoadData");
    emu_check(src.memory() == Memory::kL1, "LoadData: source must be L1");
    emu_check(dst.memory() == Memory::kL0A || dst.memory() == Memory::kL0B,
              "LoadData: destination must be L0A or L0B");
    emu_check(dst.aligned(kEmuFractal), "LoadData: L0 destination not 512-byte aligned");
    emu_check(src.aligned(), "LoadData: L1 source not 32-byte aligned");
    emu_check(!p.ifTranspose || sizeof(T) == 2, "LoadData: ifTranspose supports b16 only");
    emu_check(p.addrMode == 0, "LoadData: addrMode 1 is for GM->L1 only");
    const int64_t src_bytes = src.size() * static_cast<int64_t>(sizeof(T));
    const int64_t dst_bytes = dst.size() * static_cast<int64_t>(sizeof(T));
    for (int64_t i = 0; i < p.repeatTimes; ++i) {
        const int64_t from = (int64_t{p.startIndex} + i * p.srcStride) * kEmuFractal;
        const int64_t to = i * (int64_t{p.dstGap} + 1) * kEmuFractal;
        emu_check(from + kEmuFractal <= src_bytes, "LoadData reads past the L1 tensor");
        emu_check(to + kEmuFractal <= dst_bytes, "LoadData writes past the L0 tensor");
        auto& pipes = emu_state().pipes;
        pipes.read(Pipe::kMte1, reinterpret_cast<const uint8_t*>(src.data()) + from, kEmuFractal,
                   true, "LoadData");
        pipes.write(Pipe::kMte1, reinterpret_cast<uint8_t*>(dst.data()) + to, kEmuFractal, false,
                    true, "LoadData");
        move_fractal(dst, to, src, from, p.ifTranspose);
    }
}

// L1 -> L0B with transposition of int8 32 x 32 squares (MTE1): iteration i reads square
// startIndex + i * srcStride (1024 bytes: two 16 x 32 Nz fractals) and writes its transpose as
// two 16 x 32 fractals at (i * (dstGap + 1) + j * (dstFracGap + 1)) * 512 bytes, j = 0, 1:
// destination fractal j, row k holds source column j * 16 + k.
template <typename T>
void LoadDataWithTranspose(const LocalTensor<T>& dst, const LocalTensor<T>& src,
                           const LoadData2dTransposeParams& p) {
    static_assert(sizeof(T) == 1, "emulated for int8 (b8) only");
    require_cube("LoadDataWithTranspose");
    emu_check(src.memory() == Memory::kL1, "LoadDataWithTranspose: source must be L1");
    emu_check(dst.memory() == Memory::kL0B || dst.memory() == Memory::kL0A,
              "LoadDataWithTranspose: destination must be L0A or L0B");
    emu_check(dst.aligned(kEmuFractal),
              "LoadDataWithTranspose: L0 destination not 512-byte aligned");
    emu_check(src.aligned(), "LoadDataWithTranspose: L1 source not 32-byte aligned");
    constexpr int64_t side = 32;
    constexpr int64_t square = side * side;
    for (int64_t i = 0; i < p.repeatTimes; ++i) {
        const int64_t from = (int64_t{p.startIndex} + i * p.srcStride) * square;
        emu_check(from + square <= src.size(), "LoadDataWithTranspose reads past the L1 tensor");
        auto& pipes = emu_state().pipes;
        pipes.read(Pipe::kMte1, src.data() + from, square, true, "LoadDataWithTranspose");
        const uint8_t* in_written = src.arena()->written.data() + src.offset_bytes() + from;
        for (int64_t j = 0; j < 2; ++j) {
            const int64_t fractal = i * (int64_t{p.dstGap} + 1) + j * (int64_t{p.dstFracGap} + 1);
            const int64_t to = fractal * kEmuFractal;
            emu_check(to + kEmuFractal <= dst.size(),
                      "LoadDataWithTranspose writes past the L0 tensor");
            pipes.write(Pipe::kMte1, dst.data() + to, kEmuFractal, false, true,
                        "LoadDataWithTranspose");
            uint8_t* out_written = dst.arena()->written.data() + dst.offset_bytes() + to;
            for (int64_t k = 0; k < 16; ++k) {
                for (int64_t r = 0; r < side; ++r) {
                    dst.data()[to + k * side + r] = src.data()[from + r * side + j * 16 + k];
                    out_written[k * side + r] = in_written[r * side + j * 16 + k];
                }
            }
        }
    }
}

// C[m x n] (Nz, 16 x 16 fractals, M1 = ceil(m/16) per column block) = A[m x k] (Zz: fractal
// (m1, k1) at m1 * K1 + k1, row-major inside) x B[k x n] (Zn: fractal (k1, n1) at k1 * N1 + n1,
// column-major inside), K0 = 32 / sizeof(input), + C unless cmatrixInitVal. Reads only the
// m x k and k x n elements in range (data past m, k, n is ignored, as documented).
template <typename C, typename S>
void Mmad(const LocalTensor<C>& c, const LocalTensor<S>& a, const LocalTensor<S>& b,
          const MmadParams& p) {
    static_assert((std::is_same_v<S, int8_t> && std::is_same_v<C, int32_t>) ||
                      ((std::is_same_v<S, half> || std::is_same_v<S, bfloat16_t>) &&
                       std::is_same_v<C, float>),
                  "Mmad dtype pairs of dav-2201: int8 -> int32, half/bfloat16 -> float");
    require_cube("Mmad");
    emu_check(c.memory() == Memory::kL0C && a.memory() == Memory::kL0A &&
                  b.memory() == Memory::kL0B,
              "Mmad: operands must be L0C (CO1), L0A (A2), L0B (B2)");
    emu_check(c.aligned(1024) && a.aligned(kEmuFractal) && b.aligned(kEmuFractal),
              "Mmad: L0C needs 1024-byte, L0A/L0B 512-byte alignment");
    emu_check(!p.isBias && !p.cmatrixSource && p.unitFlag == 0 && !p.kDirectionAlign,
              "Mmad: bias table, unitFlag and kDirectionAlign are not emulated");
    if (p.m == 0 || p.n == 0 || p.k == 0) {
        return;  // documented NOP
    }
    emu_check(p.m <= 4095 && p.n <= 4095 && p.k <= 4095, "Mmad: m, n, k must be <= 4095");
    emu_check(p.m != 1, "Mmad: m = 1 selects GEMV mode (L0A read as ND); pad m to 16");
    constexpr int64_t k0 = kEmuBlock / static_cast<int64_t>(sizeof(S));
    const int64_t m1 = (p.m + 15) / 16;
    const int64_t k1 = (p.k + k0 - 1) / k0;
    const int64_t n1 = (p.n + 15) / 16;
    emu_check(m1 * k1 * 16 * k0 <= a.size(), "Mmad reads past the L0A tensor");
    emu_check(k1 * n1 * 16 * k0 <= b.size(), "Mmad reads past the L0B tensor");
    emu_check(m1 * n1 * 256 <= c.size(), "Mmad writes past the L0C tensor");
    auto& pipes = emu_state().pipes;
    pipes.read(Pipe::kM, a.data(), static_cast<size_t>(m1 * k1 * kEmuFractal), true, "Mmad (L0A)");
    pipes.read(Pipe::kM, b.data(), static_cast<size_t>(k1 * n1 * kEmuFractal), true, "Mmad (L0B)");
    const size_t c_bytes = static_cast<size_t>(m1 * n1 * 256) * sizeof(C);
    if (!p.cmatrixInitVal) {
        pipes.read(Pipe::kM, c.data(), c_bytes, true, "Mmad accumulate (L0C)");
    }
    // Below the documented threshold consecutive Mmads into one L0C need PipeBarrier<PIPE_M>.
    const bool small = (p.m / 16) * (p.n / 16) < 10;
    pipes.write(Pipe::kM, c.data(), c_bytes, small, true, "Mmad (L0C)");
    const auto a_at = [&](int64_t m, int64_t k) {
        return ((m / 16) * k1 + k / k0) * 16 * k0 + (m % 16) * k0 + k % k0;
    };
    const auto b_at = [&](int64_t k, int64_t n) {
        return ((k / k0) * n1 + n / 16) * 16 * k0 + (n % 16) * k0 + k % k0;
    };
    const auto c_at = [&](int64_t m, int64_t n) {
        return ((n / 16) * m1 + m / 16) * 256 + (m % 16) * 16 + n % 16;
    };
    const int64_t es = static_cast<int64_t>(sizeof(S));
    for (int64_t m = 0; m < p.m; ++m) {
        for (int64_t k = 0; k < p.k; ++k) {
            emu_check(is_written(a, a_at(m, k) * es, es), "Mmad reads L0A data nothing wrote");
        }
    }
    for (int64_t k = 0; k < p.k; ++k) {
        for (int64_t n = 0; n < p.n; ++n) {
            emu_check(is_written(b, b_at(k, n) * es, es), "Mmad reads L0B data nothing wrote");
        }
    }
    for (int64_t m = 0; m < p.m; ++m) {
        for (int64_t n = 0; n < p.n; ++n) {
            C& out = c.data()[c_at(m, n)];
            if (!p.cmatrixInitVal) {
                emu_check(is_written(c, c_at(m, n) * static_cast<int64_t>(sizeof(C)), sizeof(C)),
                          "Mmad accumulates onto L0C data nothing wrote");
            }
            if constexpr (std::is_same_v<C, int32_t>) {
                int64_t acc = p.cmatrixInitVal ? 0 : out;
                for (int64_t k = 0; k < p.k; ++k) {
                    acc += int64_t{a.data()[a_at(m, k)]} * int64_t{b.data()[b_at(k, n)]};
                }
                emu_check(acc >= std::numeric_limits<int32_t>::min() &&
                              acc <= std::numeric_limits<int32_t>::max(),
                          "Mmad int32 accumulator overflow");
                out = static_cast<int32_t>(acc);
            } else {
                float acc = p.cmatrixInitVal ? 0.0F : out;
                for (int64_t k = 0; k < p.k; ++k) {
                    const float product = static_cast<float>(a.data()[a_at(m, k)]) *
                                          static_cast<float>(b.data()[b_at(k, n)]);
                    acc = acc + product;
                }
                out = acc;
            }
            mark_written(c, c_at(m, n) * static_cast<int64_t>(sizeof(C)), sizeof(C));
        }
    }
}

// L0C (Nz) -> GM (ND) without conversion (FIX): row j, column n of the result comes from element
// (n / 16) * srcStride * 16 + j * 16 + n % 16 and goes to dst[j * dstStride + n].
template <typename T, typename U, const FixpipeConfig& Config = CFG_ROW_MAJOR>
void Fixpipe(const GlobalTensor<T>& dst, const LocalTensor<U>& src, const FixpipeParamsV220& p) {
    static_assert(std::is_same_v<T, U> && (std::is_same_v<T, float> || std::is_same_v<T, int32_t>),
                  "emulated: float -> float and int32 -> int32 (NoQuant)");
    static_assert(Config.format == CO2Layout::ROW_MAJOR, "emulated: NZ2ND (CFG_ROW_MAJOR)");
    require_cube("Fixpipe");
    emu_check(src.memory() == Memory::kL0C, "Fixpipe: source must be L0C (CO1)");
    emu_check(src.aligned(64), "Fixpipe: L0C source not 64-byte aligned");
    emu_check(p.quantPre == NoQuant && !p.reluEn && !p.isChannelSplit && p.unitFlag == 0 &&
                  p.ndNum == 1,
              "Fixpipe: only NoQuant, no ReLU, no channel split, no unitFlag, ndNum = 1");
    if (p.mSize == 0 || p.nSize == 0) {
        return;  // documented NOP
    }
    emu_check(p.nSize % 16 == 0 && p.nSize <= 4095,
              "Fixpipe V220: nSize must be a multiple of 16, <= 4095");
    emu_check(p.mSize <= 8192, "Fixpipe NZ2ND: mSize must be <= 8192");
    emu_check(p.srcStride % 16 == 0 && p.srcStride >= p.mSize,
              "Fixpipe: srcStride must be mSize rounded up to 16");
    emu_check(p.dstStride >= p.nSize, "Fixpipe: dstStride < nSize makes destination rows overlap");
    auto& pipes = emu_state().pipes;
    const int64_t blocks = p.nSize / 16;
    const int64_t last = (blocks - 1) * p.srcStride * 16 + (p.mSize - 1) * 16 + 16;
    emu_check(last <= src.size(), "Fixpipe reads past the L0C tensor");
    for (int64_t blk = 0; blk < blocks; ++blk) {
        pipes.read(Pipe::kFix, src.data() + blk * p.srcStride * 16,
                   static_cast<size_t>(p.mSize) * 16 * sizeof(U), true, "Fixpipe");
    }
    for (int64_t j = 0; j < p.mSize; ++j) {
        emu_check(j * int64_t{p.dstStride} + p.nSize <= dst.size(),
                  "Fixpipe writes past the GM tensor");
        for (int64_t n = 0; n < p.nSize; ++n) {
            const int64_t from = (n / 16) * p.srcStride * 16 + j * 16 + n % 16;
            emu_check(is_written(src, from * static_cast<int64_t>(sizeof(U)), sizeof(U)),
                      "Fixpipe reads L0C data no Mmad wrote");
            dst.data()[j * int64_t{p.dstStride} + n] = src.data()[from];
        }
    }
}

// ---- vector operations (first `count` elements) ------------------------------------------------------
template <typename T>
void check_vector(const LocalTensor<T>& t, int64_t count, const char* op) {
    emu_check(!emu_on_cube(), std::string(op) + ": vector op in a cube kernel");
    emu_check(t.memory() == Memory::kUb, std::string(op) + ": operand outside the UB");
    emu_check(t.aligned(), std::string(op) + ": operand not 32-byte aligned");
    emu_check(count >= 0 && count <= t.size(), std::string(op) + ": count past the tensor");
}
template <typename T>
void vec_in(const LocalTensor<T>& t, int64_t count, const char* op) {
    check_vector(t, count, op);
    emu_state().pipes.read(Pipe::kV, t.data(), static_cast<size_t>(count) * sizeof(T), false, op);
}
template <typename T>
void vec_out(const LocalTensor<T>& t, int64_t count, const char* op) {
    check_vector(t, count, op);
    emu_state().pipes.write(Pipe::kV, t.data(), static_cast<size_t>(count) * sizeof(T), true,
                            false, op);
}

template <typename T, typename U>
void Duplicate(const LocalTensor<T>& dst, U value, int32_t count) {
    vec_out(dst, count, "Duplicate");
    for (int32_t i = 0; i < count; ++i) {
        dst.data()[i] = static_cast<T>(value);
    }
}

// Cast with the (source, destination, rounding) combinations of the dav-2201 table that the
// kernels use; CAST_RINT is round to nearest, ties to even.
template <typename D, typename S>
constexpr bool cast_supported(RoundMode mode) {
    constexpr bool widen16 = (std::is_same_v<S, half> || std::is_same_v<S, bfloat16_t>) &&
                             std::is_same_v<D, float>;
    constexpr bool narrow16 = std::is_same_v<S, float> &&
                              (std::is_same_v<D, half> || std::is_same_v<D, bfloat16_t>);
    constexpr bool f32_round = std::is_same_v<S, float> && std::is_same_v<D, float>;
    constexpr bool i32_to_f32 = std::is_same_v<S, int32_t> && std::is_same_v<D, float>;
    constexpr bool f16_to_i8 = std::is_same_v<S, half> && std::is_same_v<D, int8_t>;
    if (widen16) return mode == RoundMode::CAST_NONE;
    if (narrow16 || f32_round || i32_to_f32 || f16_to_i8) return mode == RoundMode::CAST_RINT;
    return false;
}
template <typename D, typename S>
void Cast(const LocalTensor<D>& dst, const LocalTensor<S>& src, RoundMode mode, int32_t count) {
    vec_in(src, count, "Cast");
    vec_out(dst, count, "Cast");
    emu_check(cast_supported<D, S>(mode),
              "Cast: source/destination/rounding combination not in the dav-2201 table");
    for (int32_t i = 0; i < count; ++i) {
        const S value = src.data()[i];
        if constexpr (std::is_same_v<S, float> && std::is_same_v<D, float>) {
            dst.data()[i] = std::nearbyint(value);
        } else if constexpr (std::is_same_v<D, int8_t>) {
            const float rounded = std::nearbyint(static_cast<float>(value));
            emu_check(rounded >= -128.0F && rounded <= 127.0F, "Cast to int8 out of range");
            dst.data()[i] = static_cast<int8_t>(rounded);
        } else {
            dst.data()[i] = D(static_cast<float>(value));  // int32 -> float rounds to nearest even
        }
    }
}

template <typename T>
void Muls(const LocalTensor<T>& dst, const LocalTensor<T>& src, T scalar, int32_t count) {
    vec_in(src, count, "Muls");
    vec_out(dst, count, "Muls");
    for (int32_t i = 0; i < count; ++i) {
        dst.data()[i] = src.data()[i] * scalar;
    }
}
template <typename T>
void Adds(const LocalTensor<T>& dst, const LocalTensor<T>& src, T scalar, int32_t count) {
    vec_in(src, count, "Adds");
    vec_out(dst, count, "Adds");
    for (int32_t i = 0; i < count; ++i) {
        dst.data()[i] = src.data()[i] + scalar;
    }
}
template <typename T>
void Mins(const LocalTensor<T>& dst, const LocalTensor<T>& src, T scalar, int32_t count) {
    vec_in(src, count, "Mins");
    vec_out(dst, count, "Mins");
    for (int32_t i = 0; i < count; ++i) {
        dst.data()[i] = std::min(src.data()[i], scalar);
    }
}
template <typename T>
void Maxs(const LocalTensor<T>& dst, const LocalTensor<T>& src, T scalar, int32_t count) {
    vec_in(src, count, "Maxs");
    vec_out(dst, count, "Maxs");
    for (int32_t i = 0; i < count; ++i) {
        dst.data()[i] = std::max(src.data()[i], scalar);
    }
}
template <typename T>
void Abs(const LocalTensor<T>& dst, const LocalTensor<T>& src, int32_t count) {
    vec_in(src, count, "Abs");
    vec_out(dst, count, "Abs");
    for (int32_t i = 0; i < count; ++i) {
        dst.data()[i] = std::fabs(src.data()[i]);
    }
}
// dst[0] = max of src[0, count); work is the documented shared scratch (here: at least count).
template <typename T>
void ReduceMax(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<T>& work,
               int32_t count, bool calIndex = false) {
    static_assert(std::is_same_v<T, float>, "emulated for float");
    emu_check(!calIndex, "ReduceMax: index output not emulated");
    vec_in(src, count, "ReduceMax");
    vec_out(work, count, "ReduceMax");
    vec_out(dst, 1, "ReduceMax");
    if (count == 0) {
        return;  // documented NOP on A2/A3
    }
    T best = src.data()[0];
    for (int32_t i = 1; i < count; ++i) {
        best = src.data()[i] > best ? src.data()[i] : best;
    }
    dst.data()[0] = best;
}

#define EPLB_EMU_BINARY(NAME, EXPR)                                                        \
    template <typename T>                                                                  \
    void NAME(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b, \
              int32_t count) {                                                             \
        vec_in(a, count, #NAME);                                                           \
        vec_in(b, count, #NAME);                                                           \
        vec_out(dst, count, #NAME);                                                        \
        for (int32_t i = 0; i < count; ++i) {                                              \
            const T x = a.data()[i];                                                       \
            const T y = b.data()[i];                                                       \
            dst.data()[i] = (EXPR);                                                        \
        }                                                                                  \
    }
EPLB_EMU_BINARY(Add, x + y)
EPLB_EMU_BINARY(Mul, x * y)
EPLB_EMU_BINARY(Div, x / y)
#undef EPLB_EMU_BINARY

template <typename T>
void Exp(const LocalTensor<T>& dst, const LocalTensor<T>& src, int32_t count) {
    vec_in(src, count, "Exp");
    vec_out(dst, count, "Exp");
    for (int32_t i = 0; i < count; ++i) {
        dst.data()[i] = static_cast<T>(std::exp(static_cast<double>(src.data()[i])));
    }
}

}  // namespace AscendC

// Global in the real API too (kernels call it unqualified).
inline AscendC::TPipe* GetTPipePtr() {
    AscendC::emu_check(AscendC::emu_state().pipe != nullptr, "no TPipe alive");
    return AscendC::emu_state().pipe;
}
