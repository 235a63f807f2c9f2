// GAP serving core: per-atom energies, forces and per-atom virials of a GAP model (sparse GP on
// SOAP environments plus a 2-body term) in one pass over the atoms. Plain C++ (no Python, no
// torch): the Python binding is gap_py.cpp, and a LAMMPS pair style can compile it as it is.
//
// The model (ase_mlff/models/gap.py; s_i the species index of atom i):
//
//   eps_i = e0[s_i] + delta^2 sum_{m: s_m = s_i} alpha_m (q_i . z_m)^zeta + 1/2 sum_{p: first[p] = i} V(r_p)
//   V(r)  = f_c(r) delta_2^2 sum_u beta_u exp(-(r - r_u)^2 / (2 theta^2))   (u: the sparse distances of
//           the element pair of p)
//
// with q_i = p_i / |p_i| the normalised SOAP power spectrum of atom i (soap_core.hpp), z_m the
// sparse points (already normalised) and f_c the cosine cutoff of the 2-body term (1 below
// r_c - w, (1 + cos(pi (r - r_c + w) / w)) / 2 up to r_c, 0 beyond; a step when w = 0).
//
// Each atom's energy depends only on the vectors of its own pairs (centre i), so the gradient
// g_p = d eps_{first[p]} / d d_p of every pair comes from its centre alone:
//   SOAP:   dE/dq_i = delta^2 zeta sum_m alpha_m (q_i . z_m)^(zeta - 1) z_m,
//           dE/dp_i = (dE/dq_i - q_i (q_i . dE/dq_i)) / |p_i|, then back through the power
//           spectrum and the expansion to the pair vectors (soap::Basis, one atom at a time);
//   2-body: 1/2 V'(r_p) d_p / r_p.
// Forces and per-atom virials then follow from pair_reduce.hpp (mlff::pair_forces,
// mlff::pair_virials), deterministic for any thread count.
//
// Work is split into blocks of kBlock consecutive atoms (a fixed size, never the thread count):
// a block computes its atoms' spectra, then the kernel against the sparse points as two small
// matrix products (block x D by D x M and back), then each atom's backward pass. Memory beyond
// the inputs and outputs is one (P, 3) array of pair gradients and, per running block, its
// atoms' coefficients, spectra and kernel rows: linear in atoms, and no (atoms x features)
// Jacobian. Every number of an atom is computed by the same operations in the same order
// whichever block, tile or thread it falls in, so results are bit-identical for any thread count.
// The kernel products use fused multiply-adds where the CPU has them (x86-64 with FMA, chosen
// at run time): results differ from a CPU without them in the last bits only.
//
// Flat parameter layout (Params; arrays are C-contiguous float64 unless said, owned by the
// caller, and must outlive the Model built on them):
//   n_species S, n_max N, l_max L, n_intervals G, soap_cutoff, inv_h,
//   soap_table   (G, 4, N (L + 1))   cubic Hermite pieces of h[n, l](r) (soap_core.hpp)
//   soap_central (N,)                the centre's own weights
//   zeta (integer >= 1), delta       the SOAP kernel's power and energy scale
//   sparse_start (S + 1,) int64      sparse points of species a: rows sparse_start[a] .. sparse_start[a + 1]
//   sparse_stride Dp                 D = power spectrum length rounded up to a multiple of 8
//   sparse       (M, Dp)             the sparse points z_m, zero after column D
//   alpha        (M,)
//   pair_n_sparse U                  sparse distances per element pair (0: no 2-body term)
//   pair_cutoff, pair_width, pair_delta, pair_theta
//   pair_sparse  (S (S + 1) / 2, U)  sparse distances r_u of element pair (a <= b), row
//                                    a S - a (a - 1) / 2 + (b - a)
//   beta         (S (S + 1) / 2, U)
//   e0           (S,)                reference energy of each species
#pragma once

#include "pair_reduce.hpp"
#include "soap_core.hpp"

#include <cstdint>

namespace mlff {
namespace gap {

struct Params {
    int n_species = 0, n_max = 0, l_max = 0;
    int64_t n_intervals = 0;
    double soap_cutoff = 0, inv_h = 0;
    const double* soap_table = nullptr;
    const double* soap_central = nullptr;
    int zeta = 1;
    double delta = 1;
    const int64_t* sparse_start = nullptr;
    int64_t sparse_stride = 0;
    const double* sparse = nullptr;
    const double* alpha = nullptr;
    int64_t pair_n_sparse = 0;
    double pair_cutoff = 0, pair_width = 0, pair_delta = 0, pair_theta = 1;
    const double* pair_sparse = nullptr;
    const double* beta = nullptr;
    const double* e0 = nullptr;
};

class Model {
public:
    // Checks the scalars and sparse_start (std::invalid_argument naming the field).
    explicit Model(const Params& params);

    int64_t dim() const { return basis_.dim(); }
    int64_t n_coeffs() const { return basis_.n_coeffs(); }

    // n_atoms atoms with species indices `species` (N,) in [0, S); n_pairs pairs (first (P,),
    // second (P,) atom indices, vectors (P, 3) = r_second - r_first + shift); atoms
    // 0 .. n_energy_atoms - 1 are those whose energies are computed and differentiated (the
    // others, e.g. ghost atoms, get energy 0 and contribute no pair gradient). Writes
    // energies (N,), and when not null forces (N, 3) = -dE/dr and virial (N, 3, 3) per atom
    // (row a, column b = sum over the atom's pairs of d_a g_b; the structure's virial is the
    // symmetric part of their sum). n_threads: 0 = the configured count. When not null, power
    // (N, D) and coeffs (N, n_coeffs) receive the unnormalised SOAP power spectrum and expansion
    // coefficients of every energy atom (soap_core.hpp; what a variance estimate reuses).
    void compute(int64_t n_atoms, const int64_t* species, int64_t n_pairs, const int64_t* first, const int64_t* second,
                 const double* vectors, int64_t n_energy_atoms, int n_threads, double* energies, double* forces,
                 double* virial, double* power = nullptr, double* coeffs = nullptr) const;

private:
    Params p_;
    soap::Basis<double> basis_;
};

}  // namespace gap
}  // namespace mlff
