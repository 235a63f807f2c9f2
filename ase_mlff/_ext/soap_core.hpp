// SOAP power spectrum of every atom environment, its gradient with respect to the pair vectors
// (backward pass for MD), and its full Jacobian (for fitting to forces and virials). Plain C++
// (no Python, no torch): the Python bindings (soap.cpp) and the GAP serving core (gap_core.cpp)
// share this arithmetic, and a LAMMPS pair style can compile it as it is.
//
// Expansion of the neighbour density of centre i, one channel per neighbour species a:
//
//   c[i, a, n, lm] = central[n] * Y_00 * [a == species(i)]  (l = 0 only; the centre's own atom)
//                  + sum over pairs p of i with species(j) == a of  h[n, l](r_p) Y_lm(u_p)
//
// with u_p = d_p / r_p the unit pair vector and h[n, l](r) = f_c(r) g[n, l](r) the radial integral
// times the cutoff function, tabulated in Python as cubic Hermite pieces on a uniform grid
// (table (G, 4, n_max * (l_max + 1)), power form as in cfconv.cpp). Y_lm are orthonormal real
// spherical harmonics, lm = l * l + l + m.
//
// Power spectrum, one entry per (a <= b, n, n' (n <= n' when a == b), l):
//
//   p[i, k] = w_k sum_m c[i, a, n, lm] c[i, b, n', lm],   w_k = s_k / sqrt(2 l + 1)
//
// where s_k = sqrt(2) for the entries that stand for two entries of the full (a, n) x (b, n')
// tensor (a < b, or a == b and n < n') and 1 otherwise, so that the dot product of two such
// vectors equals the dot product of the full tensors.
//
// Two layers:
//   * Basis<T>: the settings and tables, and the arithmetic of one environment (its pairs'
//     geometry, coefficients, power spectrum, and the backward steps from d/dp to d/d(pair
//     vector)); knows nothing of pair lists, so any caller can feed it the pairs of a centre.
//   * Pairs<T> and the whole passes forward / backward / backward_channels: pair arrays sorted
//     by centre (every list of ase-mlff is); threads (pool.hpp, n_threads 0 = the configured
//     count) take contiguous ranges of centres, so each task writes only its own rows and
//     results do not depend on the schedule.
// Arithmetic is float64 inside; T is the dtype of the arrays passed in and out.
#pragma once

#include "pool.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

// Kernels whose innermost loop runs over a fixed block of independent lanes are compiled for
// AVX-512, AVX2 and the baseline on x86-64 Linux with GCC, picked at load time by the CPU
// (target_clones). Every lane sees the same operations in the same order and the build forbids
// fused multiply-adds (-ffp-contract=off), so all clones give the same bits.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define MLFF_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MLFF_SIMD_CLONES
#endif

// The per-pair and per-environment steps are forced inline, so that each target_clones caller
// gets them compiled for its own instruction set (a call out of a clone runs baseline code).
#if defined(__GNUC__)
#define MLFF_ALWAYS_INLINE __attribute__((always_inline))
#else
#define MLFF_ALWAYS_INLINE
#endif

namespace mlff {
namespace soap {

constexpr int kMaxL = 20;
// below this many pairs one thread does the work
constexpr int64_t kParallelPairs = 4000;

// Real spherical harmonics Y_lm(u) for |u| = 1 and their gradient on the sphere
// (the tangential part of the gradient of a polynomial extension; dY/dd = that / r).
class Harmonics {
public:
    explicit Harmonics(int l_max) : L(l_max), norm((l_max + 1) * (l_max + 1)) {
        for (int l = 0; l <= L; ++l)
            for (int m = 0; m <= l; ++m) {
                double ratio = 1.0;  // (l - m)! / (l + m)!
                for (int k = l - m + 1; k <= l + m; ++k) ratio /= k;
                double v = std::sqrt((2 * l + 1) / (4 * M_PI) * ratio);
                norm[l * l + l + m] = m == 0 ? v : v * std::sqrt(2.0);
            }
    }
    int size() const { return (L + 1) * (L + 1); }

    // Y (size()) and, when dY is not null, dY (size() x 3) = tangential gradient at u.
    MLFF_ALWAYS_INLINE void eval(const double u[3], double* Y, double* dY) const {
        const double x = u[0], y = u[1], z = u[2];
        double A[kMaxL + 1], B[kMaxL + 1];  // Re, Im (x + i y)^m
        A[0] = 1.0;
        B[0] = 0.0;
        for (int m = 1; m <= L; ++m) {
            A[m] = x * A[m - 1] - y * B[m - 1];
            B[m] = x * B[m - 1] + y * A[m - 1];
        }
        // Q[l][m](z): associated Legendre P_l^m(z) / sin^m (no Condon-Shortley phase), dQ/dz
        double Q[kMaxL + 1][kMaxL + 1], dQ[kMaxL + 1][kMaxL + 1];
        double dfact = 1.0;  // (2m - 1)!!
        for (int m = 0; m <= L; ++m) {
            if (m > 0) dfact *= (2 * m - 1);
            Q[m][m] = dfact;
            dQ[m][m] = 0.0;
            if (m + 1 <= L) {
                Q[m + 1][m] = (2 * m + 1) * z * dfact;
                dQ[m + 1][m] = (2 * m + 1) * dfact;
            }
            for (int l = m + 2; l <= L; ++l)
                Q[l][m] = ((2 * l - 1) * z * Q[l - 1][m] - (l + m - 1) * Q[l - 2][m]) / (l - m);
            if (dY)  // the derivatives only when asked
                for (int l = m + 2; l <= L; ++l)
                    dQ[l][m] = ((2 * l - 1) * (Q[l - 1][m] + z * dQ[l - 1][m]) - (l + m - 1) * dQ[l - 2][m]) / (l - m);
        }
        for (int l = 0; l <= L; ++l) {
            for (int m = -l; m <= l; ++m) {
                const int am = m < 0 ? -m : m;
                const int k = l * l + l + m;
                const double nn = norm[l * l + l + am];
                double f, gx, gy;  // the (x, y) factor and its gradient
                if (m > 0) {
                    f = A[am];
                    gx = am * A[am - 1];
                    gy = -am * B[am - 1];
                } else if (m < 0) {
                    f = B[am];
                    gx = am * B[am - 1];
                    gy = am * A[am - 1];
                } else {
                    f = 1.0;
                    gx = gy = 0.0;
                }
                Y[k] = nn * Q[l][am] * f;
                if (dY) {
                    double g[3] = {nn * Q[l][am] * gx, nn * Q[l][am] * gy, nn * dQ[l][am] * f};
                    const double radial = g[0] * x + g[1] * y + g[2] * z;
                    for (int c = 0; c < 3; ++c) dY[3 * k + c] = g[c] - radial * u[c];
                }
            }
        }
    }

private:
    int L;
    std::vector<double> norm;
};

// One power-spectrum entry: channels (a, n) and (b, n2), degree l, weight w.
struct Entry {
    int a, b, n, n2, l;
    double w;
};

// The geometry of one pair: r, and views into a buffer of Basis::geom_size() doubles holding
// the unit vector u (3), Y (LM), dY/dd (LM x 3; only when computed with grad), h (K) and dh (K;
// only with grad). A buffer per pair lets a caller keep the geometry of many pairs.
struct PairGeom {
    double r;
    double *u, *Y, *dY, *h, *dh;
};

// Settings and tables of the descriptor, and the arithmetic of one environment. The pointers
// must stay valid while the Basis lives.
template <typename T>
struct Basis {
    int S, N, L, LM, K;  // species, n_max, l_max, (l_max + 1)^2, n_max * (l_max + 1)
    int64_t G;           // table intervals
    double inv_h, r_cut;
    const T* table;      // (G, 4, K)
    const T* central;    // (N,)
    std::vector<Entry> entries;
    Harmonics harm;

    Basis(int n_species, int n_max, int l_max, int64_t n_intervals, double inv_h_, double r_cut_, const T* table_,
          const T* central_)
        : S(n_species), N(n_max), L(l_max), LM((l_max + 1) * (l_max + 1)), K(n_max * (l_max + 1)), G(n_intervals),
          inv_h(inv_h_), r_cut(r_cut_), table(table_), central(central_),
          harm(l_max >= 0 && l_max <= kMaxL ? l_max : 0) {
        if (l_max < 0 || l_max > kMaxL) throw std::invalid_argument("soap: l_max must be from 0 to 20");
        if (n_max < 1 || n_species < 1) throw std::invalid_argument("soap: n_max and n_species must be positive");
        if (n_intervals < 1) throw std::invalid_argument("soap: the radial table needs at least one interval");
        if (!(inv_h > 0) || !(r_cut > 0)) throw std::invalid_argument("soap: inv_h and r_cut must be positive");
        for (int a = 0; a < S; ++a)
            for (int b = a; b < S; ++b)
                for (int n = 0; n < N; ++n)
                    for (int n2 = (a == b ? n : 0); n2 < N; ++n2)
                        for (int l = 0; l <= L; ++l) {
                            const bool twice = a < b || n < n2;
                            entries.push_back({a, b, n, n2, l, (twice ? std::sqrt(2.0) : 1.0) / std::sqrt(2.0 * l + 1)});
                        }
    }

    // power spectrum entries D, and coefficients of one centre S * N * LM
    int64_t dim() const { return static_cast<int64_t>(entries.size()); }
    int64_t n_coeffs() const { return int64_t(S) * N * LM; }

    // h[n, l](r) and, when dh is not null, dh/dr: K values each (zero beyond the cutoff)
    MLFF_ALWAYS_INLINE void radial(double r, double* h, double* dh) const {
        if (r >= r_cut) {
            std::fill(h, h + K, 0.0);
            if (dh) std::fill(dh, dh + K, 0.0);
            return;
        }
        const double uu = std::max(r * inv_h, 0.0);
        const int64_t k = std::min<int64_t>(static_cast<int64_t>(uu), G - 1);
        const double t = uu - static_cast<double>(k);
        const T* c = table + k * 4 * K;
        for (int q = 0; q < K; ++q) {
            const double c0 = c[q], c1 = c[K + q], c2 = c[2 * K + q], c3 = c[3 * K + q];
            h[q] = c0 + t * (c1 + t * (c2 + t * c3));
        }
        if (dh)
            for (int q = 0; q < K; ++q) {
                const double c1 = c[K + q], c2 = c[2 * K + q], c3 = c[3 * K + q];
                dh[q] = (c1 + t * (2 * c2 + 3 * t * c3)) * inv_h;
            }
    }

    // doubles of one pair's geometry buffer, and the views of a buffer
    int64_t geom_size() const { return 3 + 4 * int64_t(LM) + 2 * int64_t(K); }
    PairGeom geom_view(double* buf) const {
        return PairGeom{0.0, buf, buf + 3, buf + 3 + LM, buf + 3 + 4 * LM, buf + 3 + 4 * LM + K};
    }

    // the geometry of the pair vector d (3 values) into g's buffer; dY and dh only with grad
    template <typename V>
    MLFF_ALWAYS_INLINE void geometry(const V* d, PairGeom& g, bool grad) const {
        g.r = std::sqrt(double(d[0]) * d[0] + double(d[1]) * d[1] + double(d[2]) * d[2]);
        if (!(g.r > 0)) throw std::invalid_argument("soap: a pair vector has zero length (overlapping atoms)");
        for (int c = 0; c < 3; ++c) g.u[c] = d[c] / g.r;
        harm.eval(g.u, g.Y, grad ? g.dY : nullptr);
        radial(g.r, g.h, grad ? g.dh : nullptr);
        if (grad) {
            const double inv_r = 1.0 / g.r;
            for (int k = 0; k < 3 * LM; ++k) g.dY[k] *= inv_r;
        }
    }

    // ci (n_coeffs()) = the centre's own term (species s of the centre); pairs are added after
    MLFF_ALWAYS_INLINE void start_coefficients(int s, double* ci) const {
        std::fill(ci, ci + n_coeffs(), 0.0);
        const double y00 = 0.5 / std::sqrt(M_PI);
        for (int n = 0; n < N; ++n) ci[(s * N + n) * LM] += double(central[n]) * y00;
    }

    // adds the term of one pair (neighbour species b, geometry g) to ci
    MLFF_ALWAYS_INLINE void add_pair(int b, const PairGeom& g, double* ci) const {
        double* cs = ci + int64_t(b) * N * LM;
        for (int n = 0; n < N; ++n)
            for (int l = 0; l <= L; ++l) {
                const double hv = g.h[n * (L + 1) + l];
                double* cn = cs + n * LM + l * l;
                const double* y = g.Y + l * l;
                for (int m = 0; m < 2 * l + 1; ++m) cn[m] += hv * y[m];
            }
    }

    // pi (dim()) from the coefficients ci
    template <typename U>
    MLFF_ALWAYS_INLINE void power(const double* ci, U* pi) const {
        for (size_t k = 0; k < entries.size(); ++k) {
            const Entry& e = entries[k];
            const double* x = ci + (e.a * N + e.n) * LM + e.l * e.l;
            const double* y = ci + (e.b * N + e.n2) * LM + e.l * e.l;
            double s = 0;
            for (int m = 0; m < 2 * e.l + 1; ++m) s += x[m] * y[m];
            pi[k] = static_cast<U>(e.w * s);
        }
    }

    // gc (n_coeffs()) = d(sum_k gp[k] p[k]) / d(coefficients), given the coefficients ci
    template <typename U>
    MLFF_ALWAYS_INLINE void grad_coefficients(const U* gp, const double* ci, double* gc) const {
        std::fill(gc, gc + n_coeffs(), 0.0);
        for (size_t k = 0; k < entries.size(); ++k) {
            const Entry& e = entries[k];
            const double w = e.w * double(gp[k]);
            if (w == 0) continue;
            const int l0 = e.l * e.l, nm = 2 * e.l + 1;
            const int64_t ia = (e.a * N + e.n) * LM + l0, ib = (e.b * N + e.n2) * LM + l0;
            for (int m = 0; m < nm; ++m) {
                gc[ia + m] += w * ci[ib + m];
                gc[ib + m] += w * ci[ia + m];
            }
        }
    }

    // out (3) = d(sum gc * c) / d(pair vector) of one pair (neighbour species b, geometry g
    // computed with grad)
    MLFF_ALWAYS_INLINE void pair_gradient(const double* gc, int b, const PairGeom& g, double out[3]) const {
        const double* gs = gc + int64_t(b) * N * LM;
        // a[lm] = sum_n gc[n, lm] h[n, l] and bb[lm] the same with dh, n outermost so that the
        // inner loops run over contiguous lm (each sum still adds n = 0, 1, ... in order)
        double a[(kMaxL + 1) * (kMaxL + 1)], bb[(kMaxL + 1) * (kMaxL + 1)];
        std::fill(a, a + LM, 0.0);
        std::fill(bb, bb + LM, 0.0);
        for (int n = 0; n < N; ++n) {
            const double* x = gs + n * LM;
            const double* hn = g.h + n * (L + 1);
            const double* dhn = g.dh + n * (L + 1);
            for (int l = 0; l <= L; ++l) {
                const double hv = hn[l], dhv = dhn[l];
                for (int lm = l * l; lm < (l + 1) * (l + 1); ++lm) {
                    a[lm] += x[lm] * hv;
                    bb[lm] += x[lm] * dhv;
                }
            }
        }
        double acc[3] = {0, 0, 0};
        for (int lm = 0; lm < LM; ++lm)
            for (int c = 0; c < 3; ++c) acc[c] += bb[lm] * g.u[c] * g.Y[lm] + a[lm] * g.dY[3 * lm + c];
        for (int c = 0; c < 3; ++c) out[c] = acc[c];
    }
};

// A pair vector must have a positive, finite length (std::invalid_argument otherwise).
template <typename V>
inline void check_vector(const V* d) {
    const double r2 = double(d[0]) * d[0] + double(d[1]) * d[1] + double(d[2]) * d[2];
    if (!(r2 > 0)) throw std::invalid_argument("soap: a pair vector has zero length (overlapping atoms)");
    if (!std::isfinite(r2)) throw std::invalid_argument("soap: a pair vector is not finite");
}

// Pair arrays sorted by centre, checked: first (P,) centre atom, nbr (P,) neighbour species,
// centre (N,) species of every atom, vec (P, 3).
template <typename T>
struct Pairs {
    int64_t n_atoms, n_pairs;
    const int64_t* first;
    const int32_t* nbr;
    const int32_t* centre;
    const T* vec;
    std::vector<int64_t> offsets;  // pairs of centre i: [offsets[i], offsets[i + 1])
    int threads;

    Pairs(const Basis<T>& b, int64_t n_atoms_, int64_t n_pairs_, const int64_t* first_, const int32_t* nbr_,
          const int32_t* centre_, const T* vec_, int n_threads)
        : n_atoms(n_atoms_), n_pairs(n_pairs_), first(first_), nbr(nbr_), centre(centre_), vec(vec_) {
        offsets.assign(n_atoms + 1, 0);
        for (int64_t p = 0; p < n_pairs; ++p) {
            if (first[p] < 0 || first[p] >= n_atoms)
                throw std::out_of_range("soap: pair " + std::to_string(p) + " has a centre out of range");
            if (p > 0 && first[p] < first[p - 1]) throw std::invalid_argument("soap: pairs must be sorted by centre");
            if (nbr[p] < 0 || nbr[p] >= b.S) throw std::out_of_range("soap: neighbour species out of range");
            // checked here, outside the passes: an exception must not leave a target_clones
            // function (GCC then calls std::terminate), and geometry() is inlined into some
            check_vector(vec + 3 * p);
            ++offsets[first[p] + 1];
        }
        for (int64_t i = 0; i < n_atoms; ++i) {
            if (centre[i] < 0 || centre[i] >= b.S) throw std::out_of_range("soap: centre species out of range");
            offsets[i + 1] += offsets[i];
        }
        threads = n_pairs >= kParallelPairs ? resolve_threads(n_threads) : 1;
    }

    // coefficients of centre i into ci (n_coeffs())
    void coefficients(const Basis<T>& b, int64_t i, double* ci, PairGeom& g) const {
        b.start_coefficients(centre[i], ci);
        for (int64_t p = offsets[i]; p < offsets[i + 1]; ++p) {
            b.geometry(vec + 3 * p, g, false);
            b.add_pair(nbr[p], g, ci);
        }
    }

    // runs fn(lo, hi) on contiguous ranges of centres, split so each has about the same pairs
    template <typename F>
    void over_centres(F&& fn) const {
        if (threads <= 1) {
            fn(int64_t(0), n_atoms);
            return;
        }
        std::vector<int64_t> cut(threads + 1, n_atoms);
        cut[0] = 0;
        for (int t = 1; t < threads; ++t) {
            const int64_t target = n_pairs * t / threads;
            cut[t] = std::max(cut[t - 1], int64_t(std::lower_bound(offsets.begin(), offsets.end(), target) - offsets.begin()));
            cut[t] = std::min(cut[t], n_atoms);
        }
        parallel_for(threads, threads, [&](int64_t t) { fn(cut[t], cut[t + 1]); });
    }
};

// Power spectrum P (N, D), coefficients C (N, n_coeffs) and, when J is not null, the Jacobian
// dp/d(pair vector) J (P, 3, D).
template <typename T>
void forward(const Basis<T>& b, const Pairs<T>& s, T* P, T* C, T* J);

// d(sum_ik grad_p[i, k] p[i, k]) / d(vectors): out (P, 3), given the coefficients (N, n_coeffs)
// from the forward pass.
template <typename T>
void backward(const Basis<T>& b, const Pairs<T>& s, const T* grad_p, const T* coeffs, T* out);

// The backward pass of R energies at once, E_r = sum_ik grad_p[i, k, r] p[i, k] (grad_p (N, D, R),
// channel last): their gradients with respect to the pair vectors, out (P, 3, R). Channel r of
// the result equals backward() of grad_p[:, :, r] bit for bit (soap_core.cpp).
void backward_channels(const Basis<double>& b, const Pairs<double>& s, const double* grad_p, const double* coeffs,
                       int64_t R, double* out);

}  // namespace soap
}  // namespace mlff
