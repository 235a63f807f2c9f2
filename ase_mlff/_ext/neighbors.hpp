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
// by i, into buffers of that size (so there is no reallocation while writing). Large searches
// run both passes on the thread pool, over chunks of consecutive atoms: each chunk writes
// from the offset pass 1 found for it, so the list does not depend on the threads.
//
// Before any of that, the work is bounded from the cell, the cutoff and the atom count alone
// (see SearchLimits): a nearly singular cell would otherwise visit hundreds of millions of
// periodic images for a handful of atoms. Long loops call an interrupt check now and then, so
// that a caller (Python) can abandon a search that is legitimate but slow.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
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

// What the search refuses before it starts (std::invalid_argument naming the cause):
//  * max_images: the periodic images of the cell the cutoff reaches, prod over periodic d of
//    (2 ceil(cutoff / h_d) + 1), h_d the distance between the lattice planes across d. Only a
//    nearly singular or needlessly skewed cell (or an absurd cutoff) gets near 1e6: a 2 Å
//    thick cell with a 20 Å cutoff reaches 21^3 = 9261.
//  * max_pairs: the expected pairs n * (n / V) * 4/3 pi cutoff^3 (V: volume of the cell, or of
//    the atoms' extent along non-periodic directions); 1e9 pairs are 60 GB of output.
//  * max_candidates: the candidate pairs the search would test, n * (bins visited per atom) *
//    (atoms per bin); dense solids need a few per pair found, 1e10 is minutes of work.
struct SearchLimits {
    double max_images = 1e6;
    double max_pairs = 1e9;
    double max_candidates = 1e10;
};

// Called from long loops at most every few milliseconds; returning true abandons the search,
// which then throws Interrupted. Empty: never interrupted.
using InterruptCheck = std::function<bool()>;

struct Interrupted : std::runtime_error {
    Interrupted() : std::runtime_error("neighbour search interrupted") {}
};

// positions: n x 3 (row major); cell: 3 x 3, rows are cell vectors; pbc: 3 flags.
// Throws std::invalid_argument with a readable message on unusable input or on a search over
// the limits, Interrupted when `interrupted` asks to stop. `interrupted` is only ever called
// from the calling thread.
// n_threads: threads of the thread pool (pool.hpp; 0: the configured count, < 0 refused);
// small searches run on the calling thread whatever the count. The list is the same, bit for
// bit and in the same order, for any number of threads.
PairList neighbor_list(const double* positions, int64_t n, const double* cell,
                       const bool* pbc, double cutoff, bool self_interaction,
                       const InterruptCheck& interrupted = {},
                       const SearchLimits& limits = {}, int n_threads = 0);

// Recompute vectors/distances of an existing pair list for new positions/cell and keep only
// the pairs closer than `cutoff`. Used for Verlet-skin reuse between MD steps.
PairList filter_pairs(const double* positions, int64_t n, const double* cell,
                      const int64_t* first, const int64_t* second, const int32_t* shifts,
                      int64_t n_pairs, double cutoff);

// The closest pair of an existing pair list for new positions/cell, without writing a list:
// (squared distance, index of that pair; the lowest index among equals), (inf, -1) for no
// pairs. Used with a Verlet skin by models that take the skin list unfiltered (pairs beyond
// their cutoff add nothing), so that overlapping atoms are still refused every step.
std::pair<double, int64_t> closest_pair(const double* positions, int64_t n, const double* cell,
                                        const int64_t* first, const int64_t* second,
                                        const int32_t* shifts, int64_t n_pairs);

}  // namespace mlff
