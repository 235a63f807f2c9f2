// Behler–Parrinello serving core: per-atom energies, forces and per-atom virials of a BPNN
// model in one forward and one hand-written backward pass. Plain C++ (no Python, no torch), so
// the same sources serve the Python extension (bpnn_py.cpp) and a LAMMPS pair style.
//
// What it computes (the definitions of ase_mlff/descriptors/acsf.py and ase_mlff/models/bpnn.py):
//
//   f_c(r)  = ½ [cos(π r / r_c) + 1] for r < r_c, pairs at r >= r_c are skipped
//   G2 column J * n_radial + n of centre i (element I):
//           sum over pairs p of i with neighbour element J of exp(-η_IJn (r_p - rs_IJn)²) f_c(r_p)
//   G5 through moments: w_pe = exp(-η_Ie r_p²) f_c(r_p), u_p = d_p / r_p,
//           T[J, e, k] = sum over pairs of element J of w_pe u_p^α_k,   Q[J, e] = sum of w_pe²
//           block b = (J, K), J <= K (pairs in combinations_with_replacement order), column
//           S n_radial + b n_eta n_zl + e n_zl + t:
//               G = sum_k A[k, t] T[J, e, k] T[K, e, k],  and for J == K  ½ (G - diag[t] Q[J, e])
//   x_f = (G[selected_f] - mean_f) / std_f, the element's network (dense layers with the
//   activation, linear output y), E_i = e0[I] + energy_scale y + ½ sum over pairs of i of the
//   ZBL prior  ZBL(r) sw(r),  sw = t³ (10 - 15 t + 6 t²),  t = clamp((inner_IJ - r) / width, 0, 1),
//   for pairs with r < inner_IJ (at any length, also beyond r_c, as the torch path).
//
// Backward without a Jacobian: per centre, dE/dx through the network gives dE/dG; the moments'
// adjoints bT[J, e, k] = dE/dT[J, e, k] and bQ[J, e] follow from the bilinear form; then one more
// pass over the centre's pairs gives g_p = dE/d(d_p) from the chain rule
//   d(w u^α)/dd = w' u^α u + (w / r) (∇u^α - (u . ∇u^α) u).
// Nothing of size (functions x pairs x 3) is ever stored: scratch is per centre (its pairs times
// the moments) and the outputs are per pair (g, P x 3) and per atom. Forces and per-atom virials
// then come from pair_reduce.hpp (bit-identical for any thread count).
//
// Threads (pool.hpp; n_threads 0 = the configured count) take blocks of centres of a fixed size;
// a centre writes only its own energy and the g_p of its own pairs, so results do not depend on
// the thread count or the schedule.
//
// Flat parameter layout (built once per model by ase_mlff.models.bpnn.BPNNModel.core_parameters):
//
//   ints (int64):
//     [0] S (elements), [1] n_radial, [2] n_eta, [3] n_zl ((ζ, λ) combinations), [4] K (moments),
//     [5] activation (0 tanh, 1 silu), [6] H (hidden layers), then
//     H hidden widths, S atomic numbers (sorted), S selected counts F_s, K x 3 moment exponents
//     (a, b, c), then the selected library columns of element 0, 1, ... (F_s each).
//   reals (T, the model's dtype):
//     radial_eta (S, S, n_radial), radial_shift (S, S, n_radial), angular_eta (S, n_eta),
//     A (K, n_zl), diag (n_zl), then per element s: mean (F_s), std (F_s), then for each of the
//     H + 1 layers its weight (out, in) row-major and bias (out) (the last layer has out = 1).
//   doubles (float64):
//     [0] cutoff, [1] energy_scale, [2, 2 + S) e0, [2 + S] 1 with a ZBL prior else 0,
//     [3 + S] its width, [4 + S, 4 + S + S²) inner (S, S) (present only with the prior).
#pragma once

#include <cstdint>
#include <vector>

namespace mlff {
namespace bpnn {

// Pointers into the flat arrays (valid while they live), checked and split by parse().
template <typename T>
struct Model {
    int64_t S = 0, n_radial = 0, n_eta = 0, n_zl = 0, K = 0, activation = 0, H = 0;
    int m_max = 0;                      // largest moment degree
    std::vector<int64_t> widths;        // (H)
    std::vector<int64_t> Z;             // (S) atomic numbers
    std::vector<int64_t> n_sel;         // (S) selected columns per element
    const int64_t* exps = nullptr;      // (K, 3)
    std::vector<T> At;                  // (n_zl, K) A transposed (derived)
    std::vector<T> dexp;                // (3, K) exponent α_c of moment k (derived)
    std::vector<int64_t> lower;         // (3, K) index of the moment α_k - e_c (derived; 0 when α_c = 0)
    std::vector<const int64_t*> sel;    // per element: (F_s) library columns
    const T *radial_eta = nullptr, *radial_shift = nullptr, *angular_eta = nullptr, *A = nullptr,
            *diag = nullptr;
    std::vector<const T*> mean, stdev;  // per element (F_s)
    std::vector<std::vector<const T*>> weight, bias;  // per element, per layer
    double cutoff = 0, energy_scale = 1;
    const double* e0 = nullptr;         // (S)
    bool prior = false;
    double width = 1;
    const double* inner = nullptr;      // (S, S)
    int64_t n_library = 0;

    int64_t layer_in(int64_t s, int64_t l) const { return l == 0 ? n_sel[s] : widths[l - 1]; }
    int64_t layer_out(int64_t l) const { return l == H ? 1 : widths[l]; }
};

// Splits and checks the flat arrays (std::invalid_argument naming what is inconsistent).
template <typename T>
Model<T> parse(const int64_t* ints, int64_t n_ints, const T* reals, int64_t n_reals, const double* doubles,
               int64_t n_doubles);

// Energies (n_atoms, float64; atoms from n_energy_atoms on get 0), and when asked forces
// (n_atoms, 3) and per-atom virials (n_atoms, 3, 3) (pair_reduce.hpp's conventions), float64.
// species: (n_atoms) element index in [0, S); pairs: first, second (n_pairs), vectors
// d_p = r_second - r_first + shift (n_pairs, 3), finite, of non-zero length (else
// std::invalid_argument); pairs at or beyond the cutoff add nothing but the prior's wall.
// Only centres below n_energy_atoms are evaluated (LAMMPS: owned atoms first, ghosts after; a
// ghost gets forces from the pairs of owned centres), each taking half of its pairs' prior.
// forces / virial may be null (not computed).
template <typename T>
void compute(const Model<T>& m, int64_t n_atoms, const int64_t* species, int64_t n_pairs, const int64_t* first,
             const int64_t* second, const T* vectors, int64_t n_energy_atoms, int n_threads, double* energies,
             double* forces, double* virial);

}  // namespace bpnn
}  // namespace mlff
