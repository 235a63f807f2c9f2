// Cell-list neighbour search for any triclinic cell with full, mixed or no periodicity.
//
// The search works in a basis B whose rows are the periodic cell vectors and, for each
// non-periodic direction, a unit vector orthogonal to the periodic ones. Atoms are wrapped
// into the periodic cell along periodic directions only, binned on a grid of that basis, and
// each atom is compared with the atoms of the bins within reach of the cutoff. A pair is
// reported as (i, j, S) with  d = r_j - r_i + S . cell,  |d| < cutoff,  S integer, S = 0
// along non-periodic directions; the list is "full" (both (i,j,S) and (j,i,-S)).
// Bins are cutoff/2 thick in dense systems; the bins within reach are visited as runs of
// consecutive bins along the last axis. A first pass counts the candidates (an upper bound),
// the second computes the exact vectors from the caller's positions and writes them, sorted
// by i, into buffers of that size (so there is no reallocation while writing).
#pragma once

#include <cstdint>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

namespace mlff {

// Allocator whose resize() leaves new elements uninitialised: output buffers are sized to an
// upper bound and then written, so zero-filling them first would be wasted memory traffic.
template <typename T>
struct uninit_allocator : std::allocator<T> {
    using std::allocator<T>::allocator;
    template <typename U>
    struct rebind { using other = uninit_allocator<U>; };
    template <typename U>
    void construct(U* p) noexcept(std::is_nothrow_default_constructible<U>::value) {
        ::new (static_cast<void*>(p)) U;
    }
    template <typename U, typename... Args>
    void construct(U* p, Args&&... args) {
        ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
    }
};

template <typename T>
using buffer = std::vector<T, uninit_allocator<T>>;

struct PairList {
    buffer<int64_t> first;    // i
    buffer<int64_t> second;   // j
    buffer<int32_t> shifts;   // 3 per pair
    buffer<double> vectors;   // 3 per pair, r_j - r_i + S . cell
    buffer<double> distances; // 1 per pair
};

// positions: n x 3 (row major); cell: 3 x 3, rows are cell vectors; pbc: 3 flags.
// Throws std::invalid_argument with a readable message on unusable input.
PairList neighbor_list(const double* positions, int64_t n, const double* cell,
                       const bool* pbc, double cutoff, bool self_interaction);

// Recompute vectors/distances of an existing pair list for new positions/cell and keep only
// the pairs closer than `cutoff`. Used for Verlet-skin reuse between MD steps.
PairList filter_pairs(const double* positions, int64_t n, const double* cell,
                      const int64_t* first, const int64_t* second, const int32_t* shifts,
                      int64_t n_pairs, double cutoff);

}  // namespace mlff
