// Large scratch arrays of the family cores that keep their memory between calls.
//
// A core call on 10^5 atoms needs arrays of tens to hundreds of MB (per pair, per atom and
// feature). Allocated afresh every call, each comes from the system (glibc maps blocks above
// 32 MB itself) and every page is faulted in and cleared by the kernel again: on 98,304 water
// atoms that was 40% of a SchNet call and 20% of a BPNN call. `ScratchVector<T>` is a std::vector
// whose large blocks go back to a per-thread cache when the vector dies and are handed out
// again to the next request of the same size class, so an MD run touches the same pages every
// step. Nothing else changes: the vector still value-initialises its elements (zeros), so
// results are the same bit for bit.
//
// Size classes: a request is rounded up to 1/8 of its power of two (at most 12.5% more), so a
// pair count that changes a little between steps reuses the same block. Blocks below
// kScratchMin are left to the ordinary allocator. The cache of a thread holds at most
// kScratchKeep bytes; more is returned to the system. Plain C++ (no Python, no torch).
#pragma once

#include <cstddef>
#include <map>
#include <new>
#include <vector>

namespace mlff {

constexpr std::size_t kScratchMin = std::size_t(1) << 20;   // 1 MiB
constexpr std::size_t kScratchKeep = std::size_t(8) << 30;  // 8 GiB per thread at most

namespace detail {

inline std::size_t scratch_class(std::size_t bytes) {
    std::size_t p = 1;
    while (p < bytes) p <<= 1;                // next power of two
    const std::size_t step = p >= 16 ? p / 16 : 1;  // eighths of the power below it
    return (bytes + step - 1) / step * step;
}

class BlockCache {
public:
    ~BlockCache() {
        for (auto& kv : free_) ::operator delete(kv.second);
    }
    void* take(std::size_t bytes) {
        auto it = free_.find(bytes);
        if (it == free_.end()) return ::operator new(bytes);
        void* p = it->second;
        free_.erase(it);
        held_ -= bytes;
        return p;
    }
    void give(void* p, std::size_t bytes) {
        if (held_ + bytes > kScratchKeep) {
            ::operator delete(p);
            return;
        }
        free_.emplace(bytes, p);
        held_ += bytes;
    }

private:
    std::multimap<std::size_t, void*> free_;
    std::size_t held_ = 0;
};

inline BlockCache& block_cache() {
    thread_local BlockCache cache;
    return cache;
}

}  // namespace detail

template <typename T>
struct ScratchAllocator {
    using value_type = T;
    ScratchAllocator() = default;
    template <typename U>
    ScratchAllocator(const ScratchAllocator<U>&) noexcept {}

    T* allocate(std::size_t n) {
        const std::size_t bytes = n * sizeof(T);
        if (bytes < kScratchMin) return static_cast<T*>(::operator new(bytes));
        return static_cast<T*>(detail::block_cache().take(detail::scratch_class(bytes)));
    }
    void deallocate(T* p, std::size_t n) noexcept {
        const std::size_t bytes = n * sizeof(T);
        if (bytes < kScratchMin) {
            ::operator delete(p);
            return;
        }
        detail::block_cache().give(p, detail::scratch_class(bytes));
    }
    template <typename U>
    bool operator==(const ScratchAllocator<U>&) const noexcept { return true; }
    template <typename U>
    bool operator!=(const ScratchAllocator<U>&) const noexcept { return false; }
};

template <typename T>
using ScratchVector = std::vector<T, ScratchAllocator<T>>;

}  // namespace mlff
