#pragma once
// Host emulation of the subset of the Ascend C API (namespace AscendC) that
// ascend_kernels/kernels/*.cpp use, so the unchanged kernel sources compile with g++ and run on
// the CPU against the C++ reference (tests/cpp/ascend_emu/test_kernels_emulated.cpp).
//
// Written from the API documentation (asc-devkit docs / hiascend API reference), not from its
// sources. It models what the kernels rely on and checks the hardware rules that host code
// would otherwise never exercise:
//   * UB: one 192 KiB arena per TPipe; InitBuffer beyond the 184 KiB a TPipe may use throws.
//   * DataCopyPad: blockCount/blockLen/srcStride/dstStride with the documented units (bytes on
//     the GM side, 32-byte blocks on the UB side; each UB block starts 32-byte aligned), UB
//     addresses 32-byte aligned, every access inside the GlobalTensor / LocalTensor extent.
//   * Vector ops: operands 32-byte aligned in UB, counts inside the tensors.
//   * Queues: no more tensors outstanding than the queue depth.
//   * Pipe hazards: every UB write is recorded per producing pipe (MTE2 = GM->UB DMA, V = vector,
//     S = scalar) and per consuming pipe; a read by another pipe (or a dependent vector op) of
//     bytes not yet handed over throws. Hand-overs are what the real code uses: WaitFlag<X_Y>
//     (after SetFlag), PipeBarrier<PIPE_V>, and EnQue/DeQue of a VECIN (MTE2->V), VECOUT
//     (V->MTE3) or VECIN/VECOUT bound (MTE2->MTE3) queue. Write-after-read hazards are not
//     modelled (every operation completes immediately).
// Blocks of a launch run one after another (the test's launch()); the kernels never
// synchronise across blocks, so this is a valid schedule.
// Exp is the reference's exp (fp32 of the double exp) so an emulated run can be bit-exact.

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "eplb_native/shared/float16.h"

#define __aicore__
#define __global__
#define __gm__
#define KERNEL_TASK_TYPE_DEFAULT(type)

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

enum pipe_t { PIPE_S, PIPE_V, PIPE_MTE2, PIPE_MTE3, PIPE_ALL };

namespace AscendC {

constexpr int64_t kEmuUbBytes = 192 * 1024;
constexpr int64_t kEmuUbUsable = 184 * 1024;
constexpr int64_t kEmuBlock = 32;

[[noreturn]] inline void emu_fail(const std::string& what) {
    throw std::logic_error("AscendC emulation: " + what);
}
inline void emu_check(bool ok, const std::string& what) {
    if (!ok) {
        emu_fail(what);
    }
}

enum class TPosition { GM, VECIN, VECOUT, VECCALC };
enum class HardEvent { MTE2_S, S_MTE3, V_S, S_V, MTE2_V, V_MTE3, MTE3_V, MTE3_S };
enum class RoundMode { CAST_NONE, CAST_RINT };
enum class CacheLine { SINGLE_CACHE_LINE, ENTIRE_DATA_CACHE };
enum class DcciDst { CACHELINE_ALL, CACHELINE_UB, CACHELINE_OUT, CACHELINE_ATOMIC };

// ---- launch state ----------------------------------------------------------------------------
// Pipes of one AI vector core that touch the unified buffer.
enum class Pipe : int { kS = 0, kV = 1, kMte2 = 2, kMte3 = 3 };
constexpr int kPipes = 4;
inline const char* pipe_name(Pipe p) {
    static const char* const names[kPipes] = {"S", "V", "MTE2", "MTE3"};
    return names[static_cast<int>(p)];
}

// Disjoint [begin, end) byte ranges of UB.
class IntervalSet {
public:
    void add(uintptr_t begin, uintptr_t end) {
        auto it = ranges_.lower_bound(begin);
        if (it != ranges_.begin() && std::prev(it)->second >= begin) {
            --it;
        }
        while (it != ranges_.end() && it->first <= end) {
            begin = std::min(begin, it->first);
            end = std::max(end, it->second);
            it = ranges_.erase(it);
        }
        ranges_[begin] = end;
    }
    void remove(uintptr_t begin, uintptr_t end) {
        auto it = ranges_.lower_bound(begin);
        if (it != ranges_.begin() && std::prev(it)->second > begin) {
            --it;
        }
        while (it != ranges_.end() && it->first < end) {
            const uintptr_t lo = it->first;
            const uintptr_t hi = it->second;
            it = ranges_.erase(it);
            if (lo < begin) ranges_[lo] = begin;
            if (hi > end) ranges_[end] = hi;
        }
    }
    bool overlaps(uintptr_t begin, uintptr_t end) const {
        auto it = ranges_.lower_bound(begin);
        if (it != ranges_.end() && it->first < end) return true;
        return it != ranges_.begin() && std::prev(it)->second > begin;
    }
    void clear() { ranges_.clear(); }

private:
    std::map<uintptr_t, uintptr_t> ranges_;
};

// pending[writer][reader]: UB bytes written by `writer` that `reader` may not read yet.
class PipeTracker {
public:
    void write(Pipe writer, const void* data, size_t bytes) {
        const auto b = reinterpret_cast<uintptr_t>(data);
        for (int reader = 0; reader < kPipes; ++reader) {
            // Same-pipe ordering matters for the vector pipe only (PipeBarrier<PIPE_V>).
            if (reader != static_cast<int>(writer) || writer == Pipe::kV) {
                pending_[static_cast<int>(writer)][reader].add(b, b + bytes);
            }
        }
    }
    void read(Pipe reader, const void* data, size_t bytes, const char* what) const {
        const auto b = reinterpret_cast<uintptr_t>(data);
        for (int writer = 0; writer < kPipes; ++writer) {
            if (pending_[writer][static_cast<int>(reader)].overlaps(b, b + bytes)) {
                throw std::logic_error(std::string("AscendC emulation: ") + what + " on pipe " +
                                       pipe_name(reader) + " reads UB written by pipe " +
                                       pipe_name(static_cast<Pipe>(writer)) +
                                       " with no synchronisation in between");
            }
        }
    }
    void sync(Pipe writer, Pipe reader) {
        pending_[static_cast<int>(writer)][static_cast<int>(reader)].clear();
    }
    void sync_region(Pipe writer, Pipe reader, const void* data, size_t bytes) {
        const auto b = reinterpret_cast<uintptr_t>(data);
        pending_[static_cast<int>(writer)][static_cast<int>(reader)].remove(b, b + bytes);
    }
    void reset() {
        for (auto& row : pending_) {
            for (auto& set : row) set.clear();
        }
    }

private:
    IntervalSet pending_[kPipes][kPipes];
};

struct EmuState {
    int64_t block_idx = 0;
    int64_t block_num = 1;
    bool atomic_add_i32 = false;
    class TPipe* pipe = nullptr;
    PipeTracker pipes;
};
inline EmuState& emu_state() {
    static EmuState state;  // the emulated core; test-only
    return state;
}
inline int64_t GetBlockIdx() { return emu_state().block_idx; }
inline int64_t GetBlockNum() { return emu_state().block_num; }

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
    LocalTensor(T* base, int64_t size, int64_t ub_offset_bytes)
        : base_(base), size_(size), ub_offset_(ub_offset_bytes) {}
    LocalTensor operator[](int64_t offset) const {
        emu_check(offset >= 0 && offset <= size_, "LocalTensor offset out of range");
        return LocalTensor(base_ + offset, size_ - offset,
                           ub_offset_ + offset * static_cast<int64_t>(sizeof(T)));
    }
    T GetValue(int64_t i) const {
        emu_check(i >= 0 && i < size_, "LocalTensor::GetValue out of range");
        emu_state().pipes.read(Pipe::kS, base_ + i, sizeof(T), "LocalTensor::GetValue");
        return base_[i];
    }
    void SetValue(int64_t i, T value) const {
        emu_check(i >= 0 && i < size_, "LocalTensor::SetValue out of range");
        emu_state().pipes.write(Pipe::kS, base_ + i, sizeof(T));
        base_[i] = value;
    }
    T* data() const { return base_; }
    int64_t size() const { return size_; }
    bool aligned() const { return ub_offset_ % kEmuBlock == 0; }

private:
    T* base_ = nullptr;
    int64_t size_ = 0;
    int64_t ub_offset_ = 0;
};

// ---- pipe, queues, buffers ----------------------------------------------------------------------
struct UbRegion {
    uint8_t* base = nullptr;
    int64_t bytes = 0;
    int64_t offset = 0;
};

class TPipe {
public:
    TPipe() : arena_(static_cast<size_t>(kEmuUbBytes)) {
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
            queue.add_buffer(Allocate(bytes));
        }
    }
    // TBuf: one buffer.
    template <typename B>
    void InitBuffer(B& buf, int64_t bytes) {
        buf.add_buffer(Allocate(bytes));
    }

    int32_t FetchEventID(HardEvent) const { return 0; }
    int64_t used() const { return used_; }

    UbRegion Allocate(int64_t bytes) {
        emu_check(bytes > 0, "InitBuffer of 0 bytes");
        const int64_t aligned = (bytes + kEmuBlock - 1) / kEmuBlock * kEmuBlock;
        emu_check(used_ + aligned <= kEmuUbUsable,
                  "unified buffer exhausted: " + std::to_string(used_ + aligned) + " > " +
                      std::to_string(kEmuUbUsable) + " bytes");
        UbRegion region{arena_.data() + used_, aligned, used_};
        used_ += aligned;
        return region;
    }

private:
    std::vector<uint8_t> arena_;
    int64_t used_ = 0;
};

template <typename T>
LocalTensor<T> local_view(const UbRegion& region) {
    return LocalTensor<T>(reinterpret_cast<T*>(region.base),
                          region.bytes / static_cast<int64_t>(sizeof(T)), region.offset);
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
    template <typename T>
    void EnQue(const LocalTensor<T>& tensor) {
        queued_.push_back(reinterpret_cast<uint8_t*>(tensor.data()));
    }
    template <typename T>
    LocalTensor<T> DeQue() {
        emu_check(!queued_.empty(), "DeQue on an empty queue");
        uint8_t* base = queued_.front();
        queued_.erase(queued_.begin());
        const UbRegion& region = region_of(base);
        emu_state().pipes.sync_region(producer_, consumer_, region.base,
                                      static_cast<size_t>(region.bytes));
        return local_view<T>(region);
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
    std::vector<uint8_t*> queued_;
    size_t next_ = 0;
};

template <TPosition P, int32_t Depth>
class TQue : public QueueImpl {
    static_assert(P == TPosition::VECIN || P == TPosition::VECOUT, "emulated: VECIN/VECOUT");

public:
    TQue()
        : QueueImpl(Depth, P == TPosition::VECIN ? Pipe::kMte2 : Pipe::kV,
                    P == TPosition::VECIN ? Pipe::kV : Pipe::kMte3) {}
};
template <TPosition Src, TPosition Dst, int32_t Depth>
class TQueBind : public QueueImpl {
    static_assert(Src == TPosition::VECIN && Dst == TPosition::VECOUT, "emulated: VECIN->VECOUT");

public:
    TQueBind() : QueueImpl(Depth, Pipe::kMte2, Pipe::kMte3) {}
};

template <TPosition P>
class TBuf {
public:
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

// ---- data movement ---------------------------------------------------------------------------------
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
        emu_state().pipes.write(Pipe::kMte2, out, static_cast<size_t>(len));
        std::memcpy(out, reinterpret_cast<const uint8_t*>(src.data()) + b * src_step,
                    static_cast<size_t>(len));
    }
}

// UB -> GM (element-wise int32 add when SetAtomicAdd<int32_t> is on).
template <typename T>
void DataCopyPad(const GlobalTensor<T>& dst, const LocalTensor<T>& src,
                 const DataCopyExtParams& p) {
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
        emu_state().pipes.read(Pipe::kMte3, in, static_cast<size_t>(len), "DataCopyPad UB->GM");
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

constexpr Pipe event_writer(HardEvent e) {
    switch (e) {
        case HardEvent::MTE2_S:
        case HardEvent::MTE2_V:
            return Pipe::kMte2;
        case HardEvent::S_MTE3:
        case HardEvent::S_V:
            return Pipe::kS;
        case HardEvent::V_S:
        case HardEvent::V_MTE3:
            return Pipe::kV;
        default:
            return Pipe::kMte3;
    }
}
constexpr Pipe event_reader(HardEvent e) {
    switch (e) {
        case HardEvent::MTE2_S:
        case HardEvent::V_S:
        case HardEvent::MTE3_S:
            return Pipe::kS;
        case HardEvent::S_MTE3:
        case HardEvent::V_MTE3:
            return Pipe::kMte3;
        default:
            return Pipe::kV;
    }
}

template <HardEvent E>
void SetFlag(int32_t) {}
// The hand-over completes at the wait (the emulation runs SetFlag and WaitFlag back to back).
template <HardEvent E>
void WaitFlag(int32_t) {
    emu_state().pipes.sync(event_writer(E), event_reader(E));
}
template <pipe_t P>
void PipeBarrier() {
    static_assert(P == PIPE_V || P == PIPE_ALL, "emulated barriers: PIPE_V, PIPE_ALL");
    if (P == PIPE_V) {
        emu_state().pipes.sync(Pipe::kV, Pipe::kV);
    } else {
        emu_state().pipes.reset();
    }
}

// ---- vector operations (first `count` elements) ------------------------------------------------------
template <typename T>
void check_vector(const LocalTensor<T>& t, int32_t count, const char* op) {
    emu_check(t.aligned(), std::string(op) + ": operand not 32-byte aligned");
    emu_check(count >= 0 && count <= t.size(), std::string(op) + ": count past the tensor");
}
template <typename T>
void vec_in(const LocalTensor<T>& t, int32_t count, const char* op) {
    check_vector(t, count, op);
    emu_state().pipes.read(Pipe::kV, t.data(), static_cast<size_t>(count) * sizeof(T), op);
}
template <typename T>
void vec_out(const LocalTensor<T>& t, int32_t count, const char* op) {
    check_vector(t, count, op);
    emu_state().pipes.write(Pipe::kV, t.data(), static_cast<size_t>(count) * sizeof(T));
}

template <typename T, typename U>
void Duplicate(const LocalTensor<T>& dst, U value, int32_t count) {
    vec_out(dst, count, "Duplicate");
    for (int32_t i = 0; i < count; ++i) {
        dst.data()[i] = static_cast<T>(value);
    }
}

// Widening (CAST_NONE, exact) or narrowing to a 16-bit float with CAST_RINT.
template <typename D, typename S>
void Cast(const LocalTensor<D>& dst, const LocalTensor<S>& src, RoundMode mode, int32_t count) {
    vec_in(src, count, "Cast");
    vec_out(dst, count, "Cast");
    constexpr bool narrowing = sizeof(D) < sizeof(S);
    emu_check(!narrowing || mode == RoundMode::CAST_RINT, "narrowing Cast needs a rounding mode");
    for (int32_t i = 0; i < count; ++i) {
        dst.data()[i] = D(static_cast<float>(src.data()[i]));
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
