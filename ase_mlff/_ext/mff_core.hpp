// MFF serving core: per-atom energies, forces and per-atom virials of a mapped n-body force field
// (2- and 3-body energies tabulated as uniform clamped cubic B-splines). Plain C++ (no Python, no
// torch): the Python binding is mff_py.cpp, and a LAMMPS pair style can compile it as it is.
//
// The model (ase_mlff/models/mff.py; s_i the species index of atom i, d_p = r_second - r_first +
// shift the vector of pair p, r_p = |d_p|):
//
//   eps_i = e0[s_i]
//         + sum over pairs p of i with r_p < rc2            V2[s_i, s_j](r_p)
//         + sum over pairs p < q of i with r_p, r_q < rc3    V3[s_i, s_j, s_k](r_p, r_q, r_jk)
//           and r_jk = |d_q - d_p| < jk_max                   (j = second[p], k = second[q])
//
// with V2[a, b](r) = sum_c coef2[a, b, c] B_c(r) on the 2-body axis and V3 the tensor product of
// the 3-body axis (twice, r_ij and r_ik) and the r_jk axis. "p < q" is the order of the pair
// list within a centre; the 3-body coefficients are symmetric in (j, k) (MFFModel.set_splines).
//
// Each axis is a uniform clamped cubic B-spline of n intervals of width h on [0, n h): in
// interval m = floor(x / h), with u = x / h - m, the 4 live basis functions are
//   B_{m + k}(x) = table[m, k, 0] + u (table[m, k, 1] + u (table[m, k, 2] + u table[m, k, 3]))
// (k = 0..3; ase_mlff.splines.UniformGrid.table), and x outside [0, n h) adds nothing.
//
// Every derivative is a pair gradient g_p = dE/d(d_p) of the centre's own pairs:
//   2-body:  g_p += V2'(r_p) d_p / r_p;
//   3-body:  with q1 = dV3/dr_ij / r_ij, q2 = dV3/dr_ik / r_ik, q3 = dV3/dr_jk / r_jk and
//            d_jk = d_ik - d_ij:  g_ij += q1 d_ij - q3 d_jk,  g_ik += q2 d_ik + q3 d_jk.
// Forces and per-atom virials then follow from pair_reduce.hpp (mlff::pair_forces,
// mlff::pair_virials), so results are bit-identical for any thread count: threads (pool.hpp;
// n_threads 0 = the configured count) take blocks of a fixed number of centres, and a centre
// writes only its own energy and the g_p of its own pairs.
//
// Flat parameter layout (Params; arrays are C-contiguous float64, owned by the caller, and must
// outlive the Model built on them; ase_mlff.models.mff.MFFModel.core_parameters gives a dict with
// exactly these names, None for the arrays of an absent term):
//   n_species S
//   table2   (n2, 4, 4), n2, h2                      the 2-body axis: n2 intervals of width h2
//   coef2    (S, S, n2 + 3)                          V2's coefficients; null: no 2-body term
//   rc2                                             2-body cutoff (pairs at r >= rc2 add nothing)
//   table3   (n3, 4, 4), n3, h3                      the 3-body axis of r_ij and r_ik
//   table3jk (n3jk, 4, 4), n3jk, h3jk                the 3-body axis of r_jk
//   coef3    (S, S, S, n3 + 3, n3 + 3, n3jk + 3)     V3's coefficients, indexed [s_i, s_j, s_k,
//                                                   c_ij, c_ik, c_jk]; null: no 3-body term
//   rc3                                             3-body cutoff of the arms r_ij, r_ik
//   jk_max                                          triangles with r_jk >= jk_max are skipped (the
//                                                   end of the r_jk support of every non-zero
//                                                   coefficient: MFFModel.jk_max)
//   e0       (S,)                                    reference energy of each species; null: 0
// The counts, steps and cutoffs of an absent term are not read. The tables are those of
// ase_mlff.splines.UniformGrid(length, n).table() with h = length / n (2-body length rc2, 3-body
// rc3, r_jk 2 rc3).
#pragma once

#include "pair_reduce.hpp"

#include <cstdint>

namespace mlff {
namespace mff {

struct Params {
    int64_t n_species = 0;
    const double* table2 = nullptr;
    int64_t n2 = 0;
    double h2 = 1;
    const double* coef2 = nullptr;
    double rc2 = 0;
    const double* table3 = nullptr;
    int64_t n3 = 0;
    double h3 = 1;
    const double* table3jk = nullptr;
    int64_t n3jk = 0;
    double h3jk = 1;
    const double* coef3 = nullptr;
    double rc3 = 0;
    double jk_max = 0;
    const double* e0 = nullptr;
};

class Model {
public:
    // Checks the counts and scalars of the terms present (std::invalid_argument naming the field).
    explicit Model(const Params& params);

    // max(rc2, rc3) of the terms present: what a host's neighbour list must cover.
    double cutoff() const;

    // n_atoms atoms with species indices `species` (n_atoms,) in [0, S); n_pairs pairs (first,
    // second (n_pairs,) atom indices, any order; vectors (n_pairs, 3) = r_second - r_first + shift,
    // finite and of non-zero length, else std::invalid_argument). Only centres 0 .. n_energy_atoms - 1
    // (-1: all) are evaluated; the others (a domain-decomposed host's ghost atoms, passed after the
    // owned ones) get energy 0 and add no pair gradient, but receive forces from the pairs of
    // evaluated centres. Writes energies (n_atoms,) including e0, and when not null forces
    // (n_atoms, 3) = -dE/dr and virial (n_atoms, 3, 3) per atom (row a, column b = sum over the
    // atom's pairs of d_a g_b; the structure's virial is the symmetric part of their sum).
    void compute(int64_t n_atoms, const int64_t* species, int64_t n_pairs, const int64_t* first, const int64_t* second,
                 const double* vectors, int64_t n_energy_atoms, int n_threads, double* energies, double* forces,
                 double* virial) const;

private:
    Params p_;
};

}  // namespace mff
}  // namespace mlff
