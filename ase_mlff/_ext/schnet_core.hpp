// SchNet serving core: energies, forces and per-atom virials of a SchNet model in plain C++
// (no Python, no torch), so that the same sources serve the Python extension (schnet_py.cpp)
// and a LAMMPS pair style. The network is the one of ase_mlff/models/schnet.py:
//
//   x_i = A[s_i]                                                     embedding (S, F)
//   each block b:  y = x W_in^T                                        in2f, no bias
//                  m_i = sum over pairs p with first[p] = i of y[second[p]] * W_b(r_p)
//                  z = m W_1^T + b_1,  x <- x + ssp(z) W_2^T + b_2     f2out1, f2out2
//   h = x W_o1^T + b_o1,  out_i = w_o2 . ssp(h_i) + b_o2                output network F -> H -> 1
//   E_i = e0[s_i] + scale * out_i + prior_i                            (float64)
//
// with ssp(x) = ln(1/2 e^x + 1/2) and W_b(r) each block's filter network (Gaussians, two dense
// layers, cosine cutoff) tabulated as cubic Hermite pieces (filter_piece below; the tables are
// built in Python at load, SchNetModel.filter_tables). The prior is the ZBL wall of
// ase_mlff/models/prior.py: half of each pair's ZBL(r) sw(r) goes to the centre.
//
// Forces and virials: one hand-written backward pass to g_p = dE/d(d_p), d_p the pair vectors,
// then mlff::pair_forces / mlff::pair_virials (pair_reduce.hpp). Every atom runs the network
// (message passing needs the neighbours' features), but only the energies of atoms
// 0 .. n_energy_atoms-1 are differentiated: LAMMPS passes its owned atoms first and ghosts
// after, and the forces on the ghosts are those of the owned atoms' energies.
//
// Parameters: one flat array of T (float or double) per model, built once at load, in this
// order (row-major; "^T" is the transpose of torch's (out, in) weight, stored so that both
// passes read rows of B in C = A B):
//
//   embedding                 (S, F)
//   for each block b = 0 .. n_blocks-1:
//     in2f^T (F, F), in2f (F, F)
//     f2out1^T (F, F), f2out1 (F, F), f2out1 bias (F)
//     f2out2^T (F, F), f2out2 (F, F), f2out2 bias (F)
//     filter table (G, 4, F): power-form cubic pieces of W_b on [0, r_c], spacing 1 / inv_h
//   output1^T (F, H), output1 (H, F), output1 bias (H)
//   output2 (H), output2 bias (1)
//
// (Layout computes the offsets). Float64 constants: e0 (S) eV, energy_scale eV, and for the
// prior inner (S, S) Å, width Å and the atomic number of each species (S).
//
// Arithmetic is in T like the torch path (a float32 model computes in float32); energies,
// forces and virials are float64. Threads (pool.hpp): atoms are cut into blocks of a fixed
// size, each task computes and writes only its own atoms' rows (and its own centres' pairs),
// every sum runs in a fixed order: results are bit-identical for any thread count.
#pragma once

#include "pair_reduce.hpp"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

namespace mlff {
namespace schnet {

// Sizes of a model: S species, F features, H hidden units of the output network, n_blocks
// interaction blocks, G intervals of the filter tables.
struct Layout {
    int64_t S = 0, F = 0, H = 0, n_blocks = 0, G = 0;

    int64_t block_size() const { return 6 * F * F + 2 * F + 4 * G * F; }
    int64_t block(int64_t b) const { return S * F + b * block_size(); }
    int64_t output() const { return block(n_blocks); }
    int64_t size() const { return output() + 2 * F * H + 2 * H + 1; }
};

// Offsets inside one block's part of the flat array.
struct BlockOffsets {
    int64_t in2f_t, in2f, w1_t, w1, b1, w2_t, w2, b2, table;
    explicit BlockOffsets(int64_t F) {
        const int64_t FF = F * F;
        in2f_t = 0, in2f = FF, w1_t = 2 * FF, w1 = 3 * FF, b1 = 4 * FF;
        w2_t = 4 * FF + F, w2 = 5 * FF + F, b2 = 6 * FF + F, table = 6 * FF + 2 * F;
    }
};

// The model as handed to compute(): pointers stay owned by the caller.
template <typename T>
struct Model {
    Layout layout;
    const T* weights = nullptr;            // layout.size() values, in the order above
    double inv_h = 0;                      // 1 / table spacing (1/Å)
    double cutoff = 0;                     // Å, what a host's neighbour list must cover (the
                                           // tables end there: pairs beyond add nothing)
    const double* e0 = nullptr;            // (S) eV
    double energy_scale = 1;               // eV
    // the short-range prior; inner == nullptr: none
    const double* inner = nullptr;         // (S, S) Å
    double width = 0;                      // Å
    const double* atomic_numbers = nullptr;  // (S)
};

// Halo exchange between the interaction blocks, for a domain-decomposed host (LAMMPS with MPI):
// atoms 0 .. n_energy_atoms-1 are the host's own, the others are copies (ghosts) of atoms owned
// elsewhere, and only own atoms are centres of pairs. After each block's in2f output y is
// computed, forward(y, F) must overwrite the ghosts' rows with their owners' rows; in the
// backward pass, after dE/dy of a block is gathered, reverse(gy, F) must add each ghost's row
// into its owner's and set the ghost rows to zero. Then the ghost shell needs only one cutoff
// (plus skin) whatever the number of blocks, and each atom's network runs on one process: the
// ghosts' rows are neither computed nor differentiated here (their energies are 0).
// float64 models only (the rows are double).
struct Halo {
    std::function<void(double* rows, int64_t width)> forward;
    std::function<void(double* rows, int64_t width)> reverse;
};

// One structure (or several: the pairs never join two of them).
struct Input {
    int64_t n_atoms = 0;
    const int64_t* species = nullptr;  // (n_atoms) index into the model's species, 0 .. S-1
    int64_t n_pairs = 0;
    const int64_t* first = nullptr;    // (n_pairs) centre i of each pair
    const int64_t* second = nullptr;   // (n_pairs) neighbour j
    const double* vectors = nullptr;   // (n_pairs, 3) d_p = r_j - r_i + S_p . cell, Å
    int64_t n_energy_atoms = -1;       // atoms 0 .. n_energy_atoms-1 are differentiated; -1: all
    int n_threads = 0;                 // 0: the configured count (pool.hpp)
    const Halo* halo = nullptr;        // null: every atom's neighbourhood is in the pairs
};

// Outputs, float64; forces and virials may be null (not computed).
struct Output {
    double* energies = nullptr;  // (n_atoms) eV, every atom
    double* forces = nullptr;    // (n_atoms, 3) eV/Å, -dE/dr of the energy atoms' energies
    double* virials = nullptr;   // (n_atoms, 3, 3) eV, per-atom virials (pair_reduce.hpp; not symmetrised)
};

// The cubic piece of a filter table at distance r: coefficient rows c0..c3 (F each) and the
// local coordinate t in [0, 1]; W = c0 + t (c1 + t (c2 + t c3)), dW/dr = (c1 + t (2 c2 + 3 t c3)) inv_h.
// Beyond the table's end the last node (W = 0 and W' = 0 at the cutoff) applies.
template <typename T>
struct Piece {
    const T *c0, *c1, *c2, *c3;
    T t;
};

// The interval k in [0, G) of distance r and its local coordinate t.
template <typename T>
inline int64_t filter_interval(T r, T inv_h, int64_t G, T& t) {
    const T u = std::min(std::max(r * inv_h, T(0)), T(G));
    const int64_t k = std::min<int64_t>(static_cast<int64_t>(u), G - 1);
    t = u - T(k);
    return k;
}

template <typename T>
inline Piece<T> filter_piece(const T* table, int64_t G, int64_t F, T inv_h, T r) {
    T t;
    const T* c = table + filter_interval(r, inv_h, G, t) * 4 * F;
    return {c, c + F, c + 2 * F, c + 3 * F, t};
}

// Energies (and forces and virials when asked) of `in` with model `m`. Throws
// std::invalid_argument / std::out_of_range for inconsistent input (a species or pair index
// out of range, n_energy_atoms > n_atoms, a non-finite pair vector).
void compute(const Model<float>& m, const Input& in, const Output& out);
void compute(const Model<double>& m, const Input& in, const Output& out);

}  // namespace schnet
}  // namespace mlff
