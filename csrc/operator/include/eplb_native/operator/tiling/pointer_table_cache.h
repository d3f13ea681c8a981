#pragma once
// Cache of device-side tables keyed by their host contents: the per-expert weight address table
// built from a tensor list and the tiling block. A table is uploaded once and
// reused while every weight keeps its data pointer; when EPLB swaps an expert buffer the key
// changes and the next call builds (uploads) a new table. Plain C++ so gtest covers the policy
// with fake pointers; the torch_npu binding instantiates it with device tensors as the payload.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <list>
#include <utility>
#include <vector>

#include "eplb_native/error.h"

namespace eplb_native::tiling {

// Least-recently-used map from a key (device index + table words) to a payload built on a miss.
// Not thread-safe: the owner serialises calls (the binding holds a mutex).
template <typename Payload>
class PointerTableCache {
public:
    explicit PointerTableCache(size_t capacity) : capacity_(capacity) {
        if (capacity == 0) {
            throw_invalid("capacity", "a pointer-table cache needs room for at least one table");
        }
    }

    // The payload for `words` on `device`, built with `build(words)` on a miss. A hit moves the
    // entry to the front; a miss beyond capacity evicts the least recently used entry.
    template <typename Build>
    const Payload& get(int32_t device, const std::vector<uint64_t>& words, Build&& build) {
        for (auto it = entries_.begin(); it != entries_.end(); ++it) {
            if (it->device == device && it->words == words) {
                entries_.splice(entries_.begin(), entries_, it);
                ++hits_;
                return entries_.front().payload;
            }
        }
        ++builds_;
        entries_.push_front(Entry{device, words, build(words)});
        if (entries_.size() > capacity_) {
            entries_.pop_back();
        }
        return entries_.front().payload;
    }

    [[nodiscard]] size_t size() const { return entries_.size(); }
    [[nodiscard]] int64_t hits() const { return hits_; }
    [[nodiscard]] int64_t builds() const { return builds_; }

private:
    struct Entry {
        int32_t device;
        std::vector<uint64_t> words;
        Payload payload;
    };
    size_t capacity_;
    std::list<Entry> entries_;
    int64_t hits_ = 0;
    int64_t builds_ = 0;
};

// The words of a POD block (e.g. FusedMoeTilingData), for use as a cache key and as the bytes
// to upload. T must be a multiple of 8 bytes.
template <typename T>
[[nodiscard]] std::vector<uint64_t> pod_words(const T& block) {
    static_assert(sizeof(T) % sizeof(uint64_t) == 0, "POD block must be a multiple of 8 bytes");
    std::vector<uint64_t> words(sizeof(T) / sizeof(uint64_t));
    std::memcpy(words.data(), &block, sizeof(T));
    return words;
}

}  // namespace eplb_native::tiling
