// SOAP power spectrum of every atom environment, its gradient with respect to the pair vectors
// (backward pass for MD), and its full Jacobian (for fitting to forces and virials).
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
// Pairs must be sorted by centre (every list of ase-mlff is); threads (pool.hpp, n_threads 0 =
// the configured count) take contiguous ranges of centres, so each task writes only its own
// rows and results do not depend on the schedule. Arithmetic is float64 inside; T is the
// dtype of the arrays passed in and out.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "pool.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

// float arrays without forcecast, so that the float32 and float64 overloads dispatch by dtype
template <typename T>
using carray = py::array_t<T, py::array::c_style>;
template <typename I>
using iarray = py::array_t<I, py::array::c_style | py::array::forcecast>;

constexpr int kMaxL = 20;
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
    void eval(const double u[3], double* Y, double* dY) const {
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
            for (int l = m + 2; l <= L; ++l) {
                Q[l][m] = ((2 * l - 1) * z * Q[l - 1][m] - (l + m - 1) * Q[l - 2][m]) / (l - m);
                dQ[l][m] = ((2 * l - 1) * (Q[l - 1][m] + z * dQ[l - 1][m]) - (l + m - 1) * dQ[l - 2][m]) / (l - m);
            }
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

struct Entry {
    int a, b, n, n2, l;
    double w;
};

// Everything both passes need, checked, with pointers valid while the arrays live.
template <typename T>
struct Soap {
    int64_t n_atoms, n_pairs;
    int S, N, L, LM, K;  // species, n_max, l_max, (l_max + 1)^2, n_max * (l_max + 1)
    int64_t G;
    double inv_h, r_cut;
    const int64_t* first;
    const int32_t* nbr;
    const int32_t* centre;
    const T* vec;
    const T* table;
    const T* central;
    std::vector<Entry> entries;
    std::vector<int64_t> offsets;  // pairs of centre i: [offsets[i], offsets[i + 1])
    Harmonics harm;
    int threads;

    Soap(int64_t n_atoms_, const iarray<int64_t>& first_, const iarray<int32_t>& nbr_, const iarray<int32_t>& centre_,
         const carray<T>& vec_, const carray<T>& table_, const carray<T>& central_, int n_species, int n_max,
         int l_max, double inv_h_, double r_cut_, int n_threads)
        : n_atoms(n_atoms_), n_pairs(first_.size()), S(n_species), N(n_max), L(l_max), LM((l_max + 1) * (l_max + 1)),
          K(n_max * (l_max + 1)), inv_h(inv_h_), r_cut(r_cut_), harm(l_max) {
        if (l_max < 0 || l_max > kMaxL) throw std::invalid_argument("soap: l_max must be from 0 to 20");
        if (n_max < 1 || n_species < 1) throw std::invalid_argument("soap: n_max and n_species must be positive");
        if (first_.ndim() != 1 || nbr_.ndim() != 1 || nbr_.shape(0) != n_pairs)
            throw std::invalid_argument("soap: first and neighbour species must be (P,)");
        if (vec_.ndim() != 2 || vec_.shape(0) != n_pairs || vec_.shape(1) != 3)
            throw std::invalid_argument("soap: vectors must be (P, 3)");
        if (centre_.ndim() != 1 || centre_.shape(0) != n_atoms) throw std::invalid_argument("soap: centre species must be (N,)");
        if (table_.ndim() != 3 || table_.shape(1) != 4 || table_.shape(2) != K || table_.shape(0) < 1)
            throw std::invalid_argument("soap: table must be (G, 4, n_max * (l_max + 1))");
        if (central_.ndim() != 1 || central_.shape(0) != n_max) throw std::invalid_argument("soap: central must be (n_max,)");
        G = table_.shape(0);
        first = first_.data();
        nbr = nbr_.data();
        centre = centre_.data();
        vec = vec_.data();
        table = table_.data();
        central = central_.data();
        offsets.assign(n_atoms + 1, 0);
        for (int64_t p = 0; p < n_pairs; ++p) {
            if (first[p] < 0 || first[p] >= n_atoms)
                throw std::out_of_range("soap: pair " + std::to_string(p) + " has a centre out of range");
            if (p > 0 && first[p] < first[p - 1]) throw std::invalid_argument("soap: pairs must be sorted by centre");
            if (nbr[p] < 0 || nbr[p] >= S) throw std::out_of_range("soap: neighbour species out of range");
            ++offsets[first[p] + 1];
        }
        for (int64_t i = 0; i < n_atoms; ++i) {
            if (centre[i] < 0 || centre[i] >= S) throw std::out_of_range("soap: centre species out of range");
            offsets[i + 1] += offsets[i];
        }
        for (int a = 0; a < S; ++a)
            for (int b = a; b < S; ++b)
                for (int n = 0; n < N; ++n)
                    for (int n2 = (a == b ? n : 0); n2 < N; ++n2)
                        for (int l = 0; l <= L; ++l) {
                            const bool twice = a < b || n < n2;
                            entries.push_back({a, b, n, n2, l, (twice ? std::sqrt(2.0) : 1.0) / std::sqrt(2.0 * l + 1)});
                        }
        threads = n_pairs >= kParallelPairs ? mlff::resolve_threads(n_threads) : 1;
    }

    int64_t dim() const { return static_cast<int64_t>(entries.size()); }

    // h[n, l](r) and dh/dr for pair p: writes K values each (zero beyond the cutoff)
    void radial(double r, double* h, double* dh) const {
        if (r >= r_cut) {
            std::fill(h, h + K, 0.0);
            std::fill(dh, dh + K, 0.0);
            return;
        }
        const double uu = std::max(r * inv_h, 0.0);
        const int64_t k = std::min<int64_t>(static_cast<int64_t>(uu), G - 1);
        const double t = uu - static_cast<double>(k);
        const T* c = table + k * 4 * K;
        for (int q = 0; q < K; ++q) {
            const double c0 = c[q], c1 = c[K + q], c2 = c[2 * K + q], c3 = c[3 * K + q];
            h[q] = c0 + t * (c1 + t * (c2 + t * c3));
            dh[q] = (c1 + t * (2 * c2 + 3 * t * c3)) * inv_h;
        }
    }

    // the geometry of pair p: r, unit vector, Y, dY/dd (LM x 3), h, dh
    struct PairGeom {
        double r, u[3];
        std::vector<double> Y, dY, h, dh;
    };
    void geometry(int64_t p, PairGeom& g, bool grad) const {
        const T* d = vec + 3 * p;
        g.r = std::sqrt(double(d[0]) * d[0] + double(d[1]) * d[1] + double(d[2]) * d[2]);
        if (!(g.r > 0)) throw std::invalid_argument("soap: a pair vector has zero length (overlapping atoms)");
        for (int c = 0; c < 3; ++c) g.u[c] = d[c] / g.r;
        harm.eval(g.u, g.Y.data(), grad ? g.dY.data() : nullptr);
        radial(g.r, g.h.data(), g.dh.data());
        if (grad)
            for (double& v : g.dY) v /= g.r;
    }
    PairGeom make_geom() const {
        PairGeom g;
        g.Y.resize(LM);
        g.dY.resize(3 * LM);
        g.h.resize(K);
        g.dh.resize(K);
        return g;
    }

    // coefficients of centre i into ci (S * N * LM)
    void coefficients(int64_t i, double* ci, PairGeom& g) const {
        std::fill(ci, ci + S * N * LM, 0.0);
        const double y00 = 0.5 / std::sqrt(M_PI);
        for (int n = 0; n < N; ++n) ci[(centre[i] * N + n) * LM] += double(central[n]) * y00;
        for (int64_t p = offsets[i]; p < offsets[i + 1]; ++p) {
            geometry(p, g, false);
            double* cs = ci + nbr[p] * N * LM;
            for (int n = 0; n < N; ++n)
                for (int l = 0; l <= L; ++l) {
                    const double hv = g.h[n * (L + 1) + l];
                    double* cn = cs + n * LM + l * l;
                    const double* y = g.Y.data() + l * l;
                    for (int m = 0; m < 2 * l + 1; ++m) cn[m] += hv * y[m];
                }
        }
    }

    void power(const double* ci, T* pi) const {
        for (size_t k = 0; k < entries.size(); ++k) {
            const Entry& e = entries[k];
            const double* x = ci + (e.a * N + e.n) * LM + e.l * e.l;
            const double* y = ci + (e.b * N + e.n2) * LM + e.l * e.l;
            double s = 0;
            for (int m = 0; m < 2 * e.l + 1; ++m) s += x[m] * y[m];
            pi[k] = static_cast<T>(e.w * s);
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
        mlff::parallel_for(threads, threads, [&](int64_t t) { fn(cut[t], cut[t + 1]); });
    }
};

template <typename T>
py::tuple soap_forward(int64_t n_atoms, const iarray<int64_t>& first, const iarray<int32_t>& nbr,
                       const iarray<int32_t>& centre, const carray<T>& vectors, const carray<T>& table,
                       const carray<T>& central, int n_species, int n_max, int l_max, double inv_h, double r_cut,
                       bool jacobian, int n_threads) {
    const Soap<T> s(n_atoms, first, nbr, centre, vectors, table, central, n_species, n_max, l_max, inv_h, r_cut,
                    n_threads);
    const int64_t D = s.dim(), C = int64_t(s.S) * s.N * s.LM;
    carray<T> p_arr({n_atoms, D});
    carray<T> c_arr({n_atoms, C});
    carray<T> j_arr(std::vector<py::ssize_t>{jacobian ? s.n_pairs : 0, 3, D});
    T* P = p_arr.mutable_data();
    T* Cout = c_arr.mutable_data();
    T* J = j_arr.mutable_data();
    {
        py::gil_scoped_release release;
        s.over_centres([&](int64_t lo, int64_t hi) {
            auto g = s.make_geom();
            std::vector<double> ci(C), dc(3 * s.N * s.LM);
            for (int64_t i = lo; i < hi; ++i) {
                s.coefficients(i, ci.data(), g);
                s.power(ci.data(), P + i * D);
                for (int64_t q = 0; q < C; ++q) Cout[i * C + q] = static_cast<T>(ci[q]);
                if (!jacobian) continue;
                for (int64_t p = s.offsets[i]; p < s.offsets[i + 1]; ++p) {
                    s.geometry(p, g, true);
                    // dc[c][n][lm]: derivative of the pair's own term with respect to d_c
                    for (int n = 0; n < s.N; ++n)
                        for (int l = 0; l <= s.L; ++l) {
                            const double hv = g.h[n * (s.L + 1) + l], dhv = g.dh[n * (s.L + 1) + l];
                            for (int m = 0; m < 2 * l + 1; ++m) {
                                const int lm = l * l + m;
                                for (int c = 0; c < 3; ++c)
                                    dc[(c * s.N + n) * s.LM + lm] = dhv * g.u[c] * g.Y[lm] + hv * g.dY[3 * lm + c];
                            }
                        }
                    const int beta = s.nbr[p];
                    T* Jp = J + p * 3 * D;
                    for (int64_t k = 0; k < D; ++k) {
                        const Entry& e = s.entries[k];
                        double acc[3] = {0, 0, 0};
                        const int l0 = e.l * e.l, nm = 2 * e.l + 1;
                        if (e.a == beta) {
                            const double* y = ci.data() + (e.b * s.N + e.n2) * s.LM + l0;
                            for (int c = 0; c < 3; ++c) {
                                const double* x = dc.data() + (c * s.N + e.n) * s.LM + l0;
                                for (int m = 0; m < nm; ++m) acc[c] += x[m] * y[m];
                            }
                        }
                        if (e.b == beta) {
                            const double* x = ci.data() + (e.a * s.N + e.n) * s.LM + l0;
                            for (int c = 0; c < 3; ++c) {
                                const double* y = dc.data() + (c * s.N + e.n2) * s.LM + l0;
                                for (int m = 0; m < nm; ++m) acc[c] += x[m] * y[m];
                            }
                        }
                        for (int c = 0; c < 3; ++c) Jp[c * D + k] = static_cast<T>(e.w * acc[c]);
                    }
                }
            }
        });
    }
    return py::make_tuple(p_arr, c_arr, j_arr);
}

// d(sum_ik grad_p[i, k] p[i, k]) / d(vectors): (P, 3), given the coefficients from the forward pass
template <typename T>
carray<T> soap_backward(const carray<T>& grad_p, const carray<T>& coeffs, const iarray<int64_t>& first,
                        const iarray<int32_t>& nbr, const iarray<int32_t>& centre, const carray<T>& vectors,
                        const carray<T>& table, const carray<T>& central, int n_species, int n_max, int l_max,
                        double inv_h, double r_cut, int n_threads) {
    const int64_t n_atoms = centre.size();
    const Soap<T> s(n_atoms, first, nbr, centre, vectors, table, central, n_species, n_max, l_max, inv_h, r_cut,
                    n_threads);
    const int64_t D = s.dim(), C = int64_t(s.S) * s.N * s.LM;
    if (grad_p.ndim() != 2 || grad_p.shape(0) != n_atoms || grad_p.shape(1) != D)
        throw std::invalid_argument("soap: the gradient must have the shape of the power spectrum (N, D)");
    if (coeffs.ndim() != 2 || coeffs.shape(0) != n_atoms || coeffs.shape(1) != C)
        throw std::invalid_argument("soap: coefficients do not match (N, species * n_max * (l_max + 1)^2)");
    carray<T> out({s.n_pairs, int64_t(3)});
    T* G = out.mutable_data();
    const T* GP = grad_p.data();
    const T* CF = coeffs.data();
    {
        py::gil_scoped_release release;
        s.over_centres([&](int64_t lo, int64_t hi) {
            auto g = s.make_geom();
            std::vector<double> ci(C), gc(C);
            for (int64_t i = lo; i < hi; ++i) {
                for (int64_t q = 0; q < C; ++q) ci[q] = CF[i * C + q];
                std::fill(gc.begin(), gc.end(), 0.0);
                const T* gp = GP + i * D;
                for (int64_t k = 0; k < D; ++k) {
                    const Entry& e = s.entries[k];
                    const double w = e.w * double(gp[k]);
                    if (w == 0) continue;
                    const int l0 = e.l * e.l, nm = 2 * e.l + 1;
                    const int64_t ia = (e.a * s.N + e.n) * s.LM + l0, ib = (e.b * s.N + e.n2) * s.LM + l0;
                    for (int m = 0; m < nm; ++m) {
                        gc[ia + m] += w * ci[ib + m];
                        gc[ib + m] += w * ci[ia + m];
                    }
                }
                for (int64_t p = s.offsets[i]; p < s.offsets[i + 1]; ++p) {
                    s.geometry(p, g, true);
                    const double* gs = gc.data() + s.nbr[p] * s.N * s.LM;
                    double acc[3] = {0, 0, 0};
                    for (int l = 0; l <= s.L; ++l) {
                        // sum_n gc[n, lm] h[n, l] and with dh
                        for (int m = 0; m < 2 * l + 1; ++m) {
                            const int lm = l * l + m;
                            double a = 0, b = 0;
                            for (int n = 0; n < s.N; ++n) {
                                const double x = gs[n * s.LM + lm];
                                a += x * g.h[n * (s.L + 1) + l];
                                b += x * g.dh[n * (s.L + 1) + l];
                            }
                            for (int c = 0; c < 3; ++c) acc[c] += b * g.u[c] * g.Y[lm] + a * g.dY[3 * lm + c];
                        }
                    }
                    for (int c = 0; c < 3; ++c) G[3 * p + c] = static_cast<T>(acc[c]);
                }
            }
        });
    }
    return out;
}

// The backward pass of R energies at once, E_r = sum_ik grad_p[i, k, r] p[i, k] (grad_p (N, D, R),
// channel last): their gradients with respect to the pair vectors, (P, 3, R). GAP's posterior
// samples use it (ase_mlff/models/gap.py): R force fields that share every pair's geometry, so
// the harmonics and radial table are evaluated once per pair, and each channel's arithmetic is
// the one of soap_backward in the same order (channel r of the result equals soap_backward of
// grad_p[:, :, r] bit for bit). The channel is the innermost loop, so it is what vectorises:
// on x86-64 Linux the kernel is compiled for AVX-512, AVX2 and the baseline, picked at load
// time by the CPU (target_clones). Every channel still sees the same operations in the same
// order and -ffp-contract=off forbids fused multiply-adds, so all three give the same bits.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define MLFF_CHANNEL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MLFF_CHANNEL_CLONES
#endif

// channels per vector block: one AVX-512 register of doubles, two AVX2 ones; fixed at compile
// time so that the blocks live in registers
constexpr int64_t kChannelBlock = 8;

MLFF_CHANNEL_CLONES
void backward_channels_range(const Soap<double>& s, const double* GP, const double* CF, int64_t R, double* G,
                             int64_t lo, int64_t hi) {
    constexpr int64_t W = kChannelBlock;
    const int64_t D = s.dim(), C = int64_t(s.S) * s.N * s.LM;
    const int64_t RB = (R + W - 1) / W * W;  // channels padded to whole blocks (the padding is zero)
    auto g = s.make_geom();
    std::vector<double> gc(C * RB), w(RB, 0.0);
    for (int64_t i = lo; i < hi; ++i) {
        const double* ci = CF + i * C;
        std::fill(gc.begin(), gc.end(), 0.0);
        const double* gp = GP + i * D * R;
        for (int64_t k = 0; k < D; ++k) {
            const Entry& e = s.entries[k];
            for (int64_t r = 0; r < R; ++r) w[r] = e.w * gp[k * R + r];
            const int l0 = e.l * e.l, nm = 2 * e.l + 1;
            const int64_t ia = (e.a * s.N + e.n) * s.LM + l0, ib = (e.b * s.N + e.n2) * s.LM + l0;
            for (int m = 0; m < nm; ++m) {
                const double xa = ci[ia + m], xb = ci[ib + m];
                for (int64_t r0 = 0; r0 < RB; r0 += W) {
                    double* ga = gc.data() + (ia + m) * RB + r0;
                    const double* wb = w.data() + r0;
                    #pragma omp simd
                    for (int64_t r = 0; r < W; ++r) ga[r] += wb[r] * xb;
                    double* gb = gc.data() + (ib + m) * RB + r0;  // the same entries as ga when ia == ib
                    #pragma omp simd
                    for (int64_t r = 0; r < W; ++r) gb[r] += wb[r] * xa;
                }
            }
        }
        for (int64_t p = s.offsets[i]; p < s.offsets[i + 1]; ++p) {
            s.geometry(p, g, true);
            const double* gs = gc.data() + int64_t(s.nbr[p]) * s.N * s.LM * RB;
            for (int64_t r0 = 0; r0 < RB; r0 += W) {
                double acc[3][W] = {};
                for (int l = 0; l <= s.L; ++l) {
                    for (int m = 0; m < 2 * l + 1; ++m) {
                        const int lm = l * l + m;
                        double a[W] = {}, b[W] = {};
                        for (int n = 0; n < s.N; ++n) {
                            const double* x = gs + (int64_t(n) * s.LM + lm) * RB + r0;
                            const double hv = g.h[n * (s.L + 1) + l], dhv = g.dh[n * (s.L + 1) + l];
                            #pragma omp simd
                            for (int64_t r = 0; r < W; ++r) {
                                a[r] += x[r] * hv;
                                b[r] += x[r] * dhv;
                            }
                        }
                        for (int c = 0; c < 3; ++c) {
                            const double uy = g.u[c], y = g.Y[lm], dy = g.dY[3 * lm + c];
                            #pragma omp simd
                            for (int64_t r = 0; r < W; ++r) acc[c][r] += b[r] * uy * y + a[r] * dy;
                        }
                    }
                }
                double* out = G + p * 3 * R;
                for (int c = 0; c < 3; ++c)
                    for (int64_t r = r0; r < std::min(R, r0 + W); ++r) out[c * R + r] = acc[c][r - r0];
            }
        }
    }
}

carray<double> soap_backward_channels(const carray<double>& grad_p, const carray<double>& coeffs,
                                      const iarray<int64_t>& first, const iarray<int32_t>& nbr,
                                      const iarray<int32_t>& centre, const carray<double>& vectors,
                                      const carray<double>& table, const carray<double>& central, int n_species,
                                      int n_max, int l_max, double inv_h, double r_cut, int n_threads) {
    const int64_t n_atoms = centre.size();
    const Soap<double> s(n_atoms, first, nbr, centre, vectors, table, central, n_species, n_max, l_max, inv_h, r_cut,
                         n_threads);
    const int64_t D = s.dim(), C = int64_t(s.S) * s.N * s.LM;
    if (grad_p.ndim() != 3 || grad_p.shape(0) != n_atoms || grad_p.shape(1) != D || grad_p.shape(2) < 1)
        throw std::invalid_argument("soap: the gradients must be (N, D, channels) for a power spectrum (N, D)");
    if (coeffs.ndim() != 2 || coeffs.shape(0) != n_atoms || coeffs.shape(1) != C)
        throw std::invalid_argument("soap: coefficients do not match (N, species * n_max * (l_max + 1)^2)");
    const int64_t R = grad_p.shape(2);
    carray<double> out({s.n_pairs, int64_t(3), R});
    double* G = out.mutable_data();
    const double* GP = grad_p.data();
    const double* CF = coeffs.data();
    {
        py::gil_scoped_release release;
        s.over_centres([&](int64_t lo, int64_t hi) { backward_channels_range(s, GP, CF, R, G, lo, hi); });
    }
    return out;
}

py::array_t<double> harmonics_py(const iarray<double>& u, int l_max) {
    if (u.ndim() != 2 || u.shape(1) != 3) throw std::invalid_argument("u must be (Q, 3) unit vectors");
    if (l_max < 0 || l_max > kMaxL) throw std::invalid_argument("l_max must be from 0 to 20");
    Harmonics h(l_max);
    const int64_t q = u.shape(0);
    py::array_t<double> out({q, int64_t(h.size())});
    for (int64_t k = 0; k < q; ++k) h.eval(u.data() + 3 * k, out.mutable_data() + k * h.size(), nullptr);
    return out;
}

}  // namespace

void register_soap(py::module_& m) {
    m.def("soap_forward", &soap_forward<double>, py::arg("n_atoms"), py::arg("first"), py::arg("neighbor_species"),
          py::arg("centre_species"), py::arg("vectors"), py::arg("table"), py::arg("central"), py::arg("n_species"),
          py::arg("n_max"), py::arg("l_max"), py::arg("inv_h"), py::arg("r_cut"), py::arg("jacobian") = false,
          py::arg("n_threads") = 0,
          "SOAP power spectrum (N, D), expansion coefficients (N, S*n_max*(l_max+1)^2) and, with jacobian=True, "
          "dp/d(pair vector) (P, 3, D); float64.");
    m.def("soap_forward", &soap_forward<float>, py::arg("n_atoms"), py::arg("first"), py::arg("neighbor_species"),
          py::arg("centre_species"), py::arg("vectors"), py::arg("table"), py::arg("central"), py::arg("n_species"),
          py::arg("n_max"), py::arg("l_max"), py::arg("inv_h"), py::arg("r_cut"), py::arg("jacobian") = false,
          py::arg("n_threads") = 0, "float32 version.");
    m.def("soap_backward", &soap_backward<double>, py::arg("grad_p"), py::arg("coeffs"), py::arg("first"),
          py::arg("neighbor_species"), py::arg("centre_species"), py::arg("vectors"), py::arg("table"),
          py::arg("central"), py::arg("n_species"), py::arg("n_max"), py::arg("l_max"), py::arg("inv_h"),
          py::arg("r_cut"), py::arg("n_threads") = 0, "Gradient (P, 3) of sum(grad_p * p) with respect to the pair vectors.");
    m.def("soap_backward", &soap_backward<float>, py::arg("grad_p"), py::arg("coeffs"), py::arg("first"),
          py::arg("neighbor_species"), py::arg("centre_species"), py::arg("vectors"), py::arg("table"),
          py::arg("central"), py::arg("n_species"), py::arg("n_max"), py::arg("l_max"), py::arg("inv_h"),
          py::arg("r_cut"), py::arg("n_threads") = 0, "float32 version.");
    m.def("soap_backward_channels", &soap_backward_channels, py::arg("grad_p"), py::arg("coeffs"), py::arg("first"),
          py::arg("neighbor_species"), py::arg("centre_species"), py::arg("vectors"), py::arg("table"),
          py::arg("central"), py::arg("n_species"), py::arg("n_max"), py::arg("l_max"), py::arg("inv_h"),
          py::arg("r_cut"), py::arg("n_threads") = 0,
          "Gradients (P, 3, R) of the R sums sum(grad_p[:, :, r] * p) (grad_p (N, D, R)) with respect to the pair "
          "vectors; float64.");
    m.def("spherical_harmonics", &harmonics_py, py::arg("u"), py::arg("l_max"),
          "Real orthonormal spherical harmonics (Q, (l_max+1)^2) of unit vectors (index l*l + l + m), for tests.");
}
