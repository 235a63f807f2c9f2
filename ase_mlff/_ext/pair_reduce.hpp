// From per-pair gradients to atoms: forces and per-atom virials, the last step every family
// core shares. Plain C++ (no Python, no torch): the same header serves the Python extension
// and a LAMMPS pair style.
//
// Convention (that of ase_mlff.graph.Graph): pair p goes from its centre i = first[p] to
// neighbour j = second[p] with vector d_p = r_j - r_i + S_p . cell, and g_p = dE/d(d_p).
// Then
//
//   forces[k] = -dE/dr_k = sum over p with first[p] = k of g_p - sum over p with second[p] = k of g_p
//   virial[k] = sum over p with first[p] = k of d_p (outer) g_p            (dE/d(strain) of atom k)
//
// and the virial of a structure is the symmetric part of the sum of its atoms' virials.
//
// Results do not depend on the thread count or the schedule, bit for bit: pairs are gathered
// per atom (never scattered), each atom's sum runs over its pairs in list order, and a task
// writes only its own atoms. The two gathers need the pairs grouped by first and by second:
// PairIndex does that once per pair list by a stable counting sort, O(pairs + atoms).
#pragma once

#include "pool.hpp"
#include "scratch.hpp"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace mlff {

struct PairIndex {
    int64_t n_atoms = 0, n_pairs = 0;
    ScratchVector<int64_t> first_start;   // (n_atoms + 1): pairs of centre k are by_first[first_start[k]:first_start[k+1]]
    ScratchVector<int64_t> by_first;      // empty when the pairs are already sorted by first (the usual case)
    ScratchVector<int64_t> second_start;  // (n_atoms + 1)
    ScratchVector<int64_t> by_second;     // (n_pairs) pair indices grouped by second, list order inside a group

    int64_t first_pair(int64_t slot) const { return by_first.empty() ? slot : by_first[slot]; }
};

// Checks every index (std::out_of_range naming the pair) and builds both groupings.
inline PairIndex index_pairs(int64_t n_atoms, int64_t n_pairs, const int64_t* first, const int64_t* second) {
    PairIndex x;
    x.n_atoms = n_atoms;
    x.n_pairs = n_pairs;
    x.first_start.assign(n_atoms + 1, 0);
    x.second_start.assign(n_atoms + 1, 0);
    bool sorted = true;
    for (int64_t p = 0; p < n_pairs; ++p) {
        const int64_t a = first[p], b = second[p];
        if (a < 0 || a >= n_atoms || b < 0 || b >= n_atoms)
            throw std::out_of_range("pair " + std::to_string(p) + " refers to an atom out of range");
        if (p > 0 && a < first[p - 1]) sorted = false;
        ++x.first_start[a + 1];
        ++x.second_start[b + 1];
    }
    for (int64_t k = 0; k < n_atoms; ++k) {
        x.first_start[k + 1] += x.first_start[k];
        x.second_start[k + 1] += x.second_start[k];
    }
    x.by_second.resize(n_pairs);
    std::vector<int64_t> fill(x.second_start.begin(), x.second_start.end() - 1);
    for (int64_t p = 0; p < n_pairs; ++p) x.by_second[fill[second[p]]++] = p;
    if (!sorted) {
        x.by_first.resize(n_pairs);
        fill.assign(x.first_start.begin(), x.first_start.end() - 1);
        for (int64_t p = 0; p < n_pairs; ++p) x.by_first[fill[first[p]]++] = p;
    }
    return x;
}

// Splits [0, n) into tasks of a size that depends only on n, never on the thread count.
template <typename Fn>
void for_atom_blocks(int64_t n, int n_threads, Fn&& fn) {
    constexpr int64_t kBlock = 256;
    const int64_t tasks = (n + kBlock - 1) / kBlock;
    const int threads = n >= 2 * kBlock ? resolve_threads(n_threads) : 1;
    parallel_for(tasks, threads, [&](int64_t t) {
        const int64_t lo = t * kBlock, hi = std::min(n, lo + kBlock);
        for (int64_t k = lo; k < hi; ++k) fn(k);
    });
}

// forces (n_atoms, 3) = -dE/dr from g (n_pairs, 3) = dE/d(pair vector); accumulated in double.
template <typename G, typename F>
void pair_forces(const PairIndex& x, const G* g, F* forces, int n_threads) {
    for_atom_blocks(x.n_atoms, n_threads, [&](int64_t k) {
        double f[3] = {0.0, 0.0, 0.0};
        for (int64_t s = x.first_start[k]; s < x.first_start[k + 1]; ++s) {
            const G* gp = g + 3 * x.first_pair(s);
            f[0] += gp[0], f[1] += gp[1], f[2] += gp[2];
        }
        for (int64_t s = x.second_start[k]; s < x.second_start[k + 1]; ++s) {
            const G* gp = g + 3 * x.by_second[s];
            f[0] -= gp[0], f[1] -= gp[1], f[2] -= gp[2];
        }
        for (int c = 0; c < 3; ++c) forces[3 * k + c] = static_cast<F>(f[c]);
    });
}

// virial (n_atoms, 3, 3): row a, column b = sum over the centre's pairs of d_p[a] g_p[b].
template <typename D, typename G>
void pair_virials(const PairIndex& x, const D* d, const G* g, double* virial, int n_threads) {
    for_atom_blocks(x.n_atoms, n_threads, [&](int64_t k) {
        double w[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t s = x.first_start[k]; s < x.first_start[k + 1]; ++s) {
            const int64_t p = x.first_pair(s);
            for (int a = 0; a < 3; ++a)
                for (int b = 0; b < 3; ++b) w[3 * a + b] += double(d[3 * p + a]) * double(g[3 * p + b]);
        }
        for (int c = 0; c < 9; ++c) virial[9 * k + c] = w[c];
    });
}

}  // namespace mlff
