// SchNet serving core (see schnet_core.hpp for the equations, the parameter layout and the
// threading rule). Plain C++: no Python, no torch.
//
// The cost is in two kinds of loops, both over rows of F features, both vectorised over the
// features: the dense layers (C = A B for a block of atoms, A (rows, K), B (K, M)), and the
// convolution (per pair: a cubic piece of the filter table times a neighbour's row). On x86-64
// Linux with GCC these kernels are compiled for AVX-512, AVX2 and the baseline and picked at
// load time by the CPU (target_clones, as soap.cpp does); -ffp-contract=off forbids fused
// multiply-adds and no kernel sums across vector lanes except the dot products of the radial
// gradient (conv_grad), so the clones differ at most in those sums' rounding.
#include "schnet_core.hpp"

#include <type_traits>

#include "pool.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define MLFF_SCHNET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MLFF_SCHNET_CLONES
#endif
#if defined(__GNUC__)
#define MLFF_INLINE inline __attribute__((always_inline))
#else
#define MLFF_INLINE inline
#endif

namespace mlff {
namespace schnet {
namespace {

// atoms per task: fixed, so the partition (and every result) is the same for any thread count
constexpr int64_t kRowBlock = 64;
// pairs per task of the per-pair geometry pass
constexpr int64_t kPairBlock = 8192;
// pairs ahead whose neighbour rows the convolution loops prefetch (their gathers are random)
constexpr int64_t kAhead = 8;

template <typename T>
MLFF_INLINE void prefetch_row(const T* row, int64_t F) {
#if defined(__GNUC__)
    const char* c = reinterpret_cast<const char*>(row);
    for (int64_t b = 0; b < int64_t(F * sizeof(T)); b += 64) __builtin_prefetch(c + b);
#else
    (void)row, (void)F;
#endif
}

// ---------------------------------------------------------------------------------- kernels
// C (n, M) = bias + A (n, K) B (K, M), all row-major (bias null: 0). Each output element is
// its initial value plus the products in the order k = 0 .. K-1, in every code path.
// Register tile: R rows by V columns (V: one 64-byte line of T).
template <typename T, int64_t R>
MLFF_INLINE void dense_tile_rows(int64_t r0, int64_t K, int64_t M, const T* A, const T* B, const T* bias, T* C) {
    constexpr int64_t V = 64 / sizeof(T);
    int64_t c0 = 0;
    for (; c0 + V <= M; c0 += V) {
        T acc[R][V];
        for (int64_t r = 0; r < R; ++r)
            for (int64_t v = 0; v < V; ++v) acc[r][v] = bias ? bias[c0 + v] : T(0);
        for (int64_t k = 0; k < K; ++k) {
            const T* __restrict__ b = B + k * M + c0;
            for (int64_t r = 0; r < R; ++r) {
                const T a = A[(r0 + r) * K + k];
#pragma omp simd
                for (int64_t v = 0; v < V; ++v) acc[r][v] += a * b[v];
            }
        }
        for (int64_t r = 0; r < R; ++r)
            for (int64_t v = 0; v < V; ++v) C[(r0 + r) * M + c0 + v] = acc[r][v];
    }
    for (; c0 < M; ++c0)  // the last M % V columns
        for (int64_t r = 0; r < R; ++r) {
            T s = bias ? bias[c0] : T(0);
            for (int64_t k = 0; k < K; ++k) s += A[(r0 + r) * K + k] * B[k * M + c0];
            C[(r0 + r) * M + c0] = s;
        }
}

template <typename T>
MLFF_INLINE void dense_impl(int64_t n, int64_t K, int64_t M, const T* A, const T* B, const T* bias, T* C) {
    int64_t r0 = 0;
    for (; r0 + 4 <= n; r0 += 4) dense_tile_rows<T, 4>(r0, K, M, A, B, bias, C);
    for (; r0 < n; ++r0) dense_tile_rows<T, 1>(r0, K, M, A, B, bias, C);
}

MLFF_SCHNET_CLONES void dense(int64_t n, int64_t K, int64_t M, const float* A, const float* B, const float* bias,
                              float* C) {
    dense_impl(n, K, M, A, B, bias, C);
}
MLFF_SCHNET_CLONES void dense(int64_t n, int64_t K, int64_t M, const double* A, const double* B,
                              const double* bias, double* C) {
    dense_impl(n, K, M, A, B, bias, C);
}

// log1p(e) for e in [0, 1] as 2 atanh(s), s = e / (2 + e) in [0, 1/3]: the odd series
// 2 s (1 + s^2/3 + s^4/5 + ...) to the dtype's precision (the last term < 2e-9 relative in
// float, < 2e-17 in double), no cancellation for small e, and vectorisable (libm's log1p is not).
template <typename T>
MLFF_INLINE T log1p_unit(T e) {
    constexpr int n = sizeof(T) == 4 ? 8 : 16;
    const T s = e / (T(2) + e), s2 = s * s;
    T p = T(1) / T(2 * n - 1);
    for (int k = n - 2; k >= 0; --k) p = p * s2 + T(1) / T(2 * k + 1);
    return T(2) * s * p;
}

// In place z -> ssp(z) = softplus(z) - ln 2, and sig = sigmoid(z) = ssp'(z), from one exp:
// with e = exp(-|z|), softplus(z) = max(z, 0) + log1p(e), sigmoid(z) = 1 / (1 + e) or e / (1 + e).
template <typename T>
MLFF_INLINE void activate_impl(int64_t n, T* __restrict__ z, T* __restrict__ sig) {
    const T ln2 = T(0.693147180559945309417232121458176568);
    for (int64_t k = 0; k < n; ++k) sig[k] = std::exp(-std::abs(z[k]));
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
        const T x = z[k], e = sig[k];
        const T inv = T(1) / (T(1) + e);
        z[k] = (x > T(0) ? x : T(0)) + log1p_unit(e) - ln2;
        sig[k] = x >= T(0) ? inv : e * inv;
    }
}

MLFF_SCHNET_CLONES void activate(int64_t n, float* z, float* sig) { activate_impl(n, z, sig); }
MLFF_SCHNET_CLONES void activate(int64_t n, double* z, double* sig) { activate_impl(n, z, sig); }

// Per-pair geometry, computed once per call: distance r (in T, as the torch path) and the
// filter-table piece (interval k and local coordinate t), the same for every block.
// The backward gather by neighbour gets its own copies of t, k and first in that order
// (sequential reads instead of three random ones per pair and block).
template <typename T>
struct PairGeometry {
    ScratchVector<T> r, t, t2;
    ScratchVector<int32_t> k, k2;
    ScratchVector<int64_t> first2;
};

// m (hi - lo, F): the convolution of rows lo..hi-1 (their pairs, grouped by first).
template <typename T>
MLFF_INLINE void conv_rows_impl(const PairIndex& x, const int64_t* second, const PairGeometry<T>& g, const T* table,
                                int64_t F, const T* Y, int64_t lo, int64_t hi, T* m) {
    for (int64_t i = lo; i < hi; ++i) {
        T* __restrict__ mi = m + (i - lo) * F;
        std::fill(mi, mi + F, T(0));
        for (int64_t s = x.first_start[i]; s < x.first_start[i + 1]; ++s) {
            const int64_t p = x.first_pair(s);
            if (s + kAhead < x.n_pairs) prefetch_row(Y + second[x.first_pair(s + kAhead)] * F, F);
            const T* __restrict__ c0 = table + int64_t(g.k[p]) * 4 * F;
            const T* __restrict__ c1 = c0 + F;
            const T* __restrict__ c2 = c0 + 2 * F;
            const T* __restrict__ c3 = c0 + 3 * F;
            const T* __restrict__ yj = Y + second[p] * F;
            const T t = g.t[p];
#pragma omp simd
            for (int64_t f = 0; f < F; ++f) mi[f] += yj[f] * (c0[f] + t * (c1[f] + t * (c2[f] + t * c3[f])));
        }
    }
}

// The backward pass of one block's convolution for the atoms lo..hi-1 as neighbours, over the
// pairs whose second they are (slot s of PairIndex.by_second, geometry in the *2 copies):
//   gy (hi - lo, F) = dE/dy of those rows = sum over their pairs of gm[first] * W(r),
//   g_r2[s] += dE/dr of each of those pairs = sum_f gm[first, f] y[j, f] dW_f(r),
// gm (N, F) = dE/dm, Y the block's in2f output. Both from one read of the table and of gm's row.
// (The one sum across features: its rounding may differ between the clones.)
template <typename T>
MLFF_INLINE void conv_grad_impl(const PairIndex& x, const PairGeometry<T>& g, const T* table, int64_t F, T inv_h,
                                const T* Y, const T* GM, int64_t lo, int64_t hi, T* gy, T* g_r2) {
    for (int64_t j = lo; j < hi; ++j) {
        T* __restrict__ gj = gy + (j - lo) * F;
        const T* __restrict__ yj = Y + j * F;
        std::fill(gj, gj + F, T(0));
        const int64_t end = x.second_start[j + 1];
        for (int64_t s = x.second_start[j]; s < end; ++s) {
            if (s + kAhead < x.n_pairs) prefetch_row(GM + g.first2[s + kAhead] * F, F);
            const T* __restrict__ c0 = table + int64_t(g.k2[s]) * 4 * F;
            const T* __restrict__ c1 = c0 + F;
            const T* __restrict__ c2 = c0 + 2 * F;
            const T* __restrict__ c3 = c0 + 3 * F;
            const T* __restrict__ gi = GM + g.first2[s] * F;
            const T t = g.t2[s];
            T acc = 0;
#pragma omp simd reduction(+ : acc)
            for (int64_t f = 0; f < F; ++f) {
                gj[f] += gi[f] * (c0[f] + t * (c1[f] + t * (c2[f] + t * c3[f])));
                acc += gi[f] * yj[f] * (c1[f] + t * (T(2) * c2[f] + T(3) * t * c3[f]));
            }
            g_r2[s] += acc * inv_h;
        }
    }
}

#define MLFF_SCHNET_KERNELS(T)                                                                                    \
    MLFF_SCHNET_CLONES void conv_rows(const PairIndex& x, const int64_t* second, const PairGeometry<T>& g,         \
                                      const T* table, int64_t F, const T* Y, int64_t lo, int64_t hi, T* m) {      \
        conv_rows_impl(x, second, g, table, F, Y, lo, hi, m);                                                     \
    }                                                                                                             \
    MLFF_SCHNET_CLONES void conv_grad(const PairIndex& x, const PairGeometry<T>& g, const T* table, int64_t F,    \
                                      T inv_h, const T* Y, const T* GM, int64_t lo, int64_t hi, T* gy, T* g_r2) { \
        conv_grad_impl(x, g, table, F, inv_h, Y, GM, lo, hi, gy, g_r2);                                           \
    }
MLFF_SCHNET_KERNELS(float)
MLFF_SCHNET_KERNELS(double)
#undef MLFF_SCHNET_KERNELS

// ---------------------------------------------------------------------------------- prior
// ZBL screened nuclear repulsion (prior.py's zbl, the same constants) switched on below
// `inner` over `width`: the pair energy e(r) and de/dr, float64.
constexpr double kZblC[4] = {0.18175, 0.50986, 0.28022, 0.02817};
constexpr double kZblD[4] = {3.19980, 0.94229, 0.40290, 0.20162};
constexpr double kCoulomb = 14.399645;  // e^2 / (4 pi eps0), eV Å

void wall(double r, double zi, double zj, double inner, double width, double& e, double& de) {
    const double a = 0.46850 / (std::pow(zi, 0.23) + std::pow(zj, 0.23));
    const double x = r / a;
    double phi = 0, dphi = 0;
    for (int k = 0; k < 4; ++k) {
        const double ex = kZblC[k] * std::exp(-kZblD[k] * x);
        phi += ex;
        dphi -= kZblD[k] * ex;
    }
    const double c = kCoulomb * zi * zj;
    const double zbl = c / r * phi, dzbl = c * (dphi / (a * r) - phi / (r * r));
    const double t = std::min(std::max((inner - r) / width, 0.0), 1.0);
    const double sw = t * t * t * (10.0 - 15.0 * t + 6.0 * t * t);  // C2: 0 at inner, 1 at inner - width
    const double dsw = -30.0 * t * t * (1.0 - t) * (1.0 - t) / width;
    e = zbl * sw;
    de = dzbl * sw + zbl * dsw;
}

// ---------------------------------------------------------------------------------- driver
template <typename T>
void run(const Model<T>& m, const Input& in, const Output& out) {
    const Layout& L = m.layout;
    const int64_t N = in.n_atoms, P = in.n_pairs, F = L.F, H = L.H, S = L.S, G = L.G;
    if (N < 0 || P < 0 || S < 1 || F < 1 || H < 1 || L.n_blocks < 0 || G < 1 || G > INT32_MAX || !m.weights || !m.e0)
        throw std::invalid_argument("schnet: inconsistent model sizes");
    if (!(m.inv_h > 0) || !std::isfinite(m.inv_h))
        throw std::invalid_argument("schnet: the filter table spacing must be positive");
    if (!out.energies) throw std::invalid_argument("schnet: an energies output is required");
    const int64_t n_energy = in.n_energy_atoms < 0 ? N : in.n_energy_atoms;
    if (n_energy > N)
        throw std::invalid_argument("schnet: n_energy_atoms (" + std::to_string(n_energy) +
                                    ") exceeds the number of atoms (" + std::to_string(N) + ")");
    for (int64_t a = 0; a < N; ++a)
        if (in.species[a] < 0 || in.species[a] >= S)
            throw std::out_of_range("schnet: atom " + std::to_string(a) + " has species index " +
                                    std::to_string(in.species[a]) + ", not one of the model's " +
                                    std::to_string(S) + " species");
    const Halo* halo = in.halo;
    if (halo) {
        if (!std::is_same<T, double>::value) throw std::invalid_argument("schnet: a halo exchange needs a float64 model");
        if (!halo->forward || !halo->reverse) throw std::invalid_argument("schnet: a halo needs forward and reverse");
        for (int64_t p = 0; p < P; ++p)
            if (in.first[p] >= n_energy)
                throw std::invalid_argument("schnet: with a halo exchange only own atoms may be centres of pairs");
    }
    const PairIndex index = index_pairs(N, P, in.first, in.second);
    const int threads = N >= 2 * kRowBlock || P >= 2 * kPairBlock ? resolve_threads(in.n_threads) : 1;
    const bool grad = out.forces || out.virials;
    const T inv_h = static_cast<T>(m.inv_h);

    auto blocks_of = [&](int64_t rows, auto&& fn) {  // fn(lo, hi) on the fixed blocks of rows 0 .. rows-1
        const int64_t tasks = (rows + kRowBlock - 1) / kRowBlock;
        parallel_for(tasks, threads, [&](int64_t b) { fn(b * kRowBlock, std::min(rows, (b + 1) * kRowBlock)); });
    };
    auto row_blocks = [&](auto&& fn) { blocks_of(N, fn); };
    // The rows whose features are computed here: every atom, or with a halo exchange only the
    // own atoms (a ghost's block inputs come from its owner, its outputs are never needed)
    const int64_t R = halo ? n_energy : N;
    auto own_blocks = [&](auto&& fn) { blocks_of(R, fn); };

    // pair geometry (and a check of the vectors: a NaN would poison every energy silently)
    PairGeometry<T> geo;
    geo.r.resize(P), geo.t.resize(P), geo.k.resize(P);
    std::vector<char> bad_chunk((P + kPairBlock - 1) / kPairBlock, 0);
    parallel_for(int64_t(bad_chunk.size()), threads, [&](int64_t c) {
        for (int64_t p = c * kPairBlock; p < std::min(P, (c + 1) * kPairBlock); ++p) {
            const double* d = in.vectors + 3 * p;
            if (!std::isfinite(d[0]) || !std::isfinite(d[1]) || !std::isfinite(d[2])) bad_chunk[c] = 1;
            const T dx = T(d[0]), dy = T(d[1]), dz = T(d[2]);
            const T r = std::sqrt(dx * dx + dy * dy + dz * dz);
            geo.r[p] = r;
            geo.k[p] = int32_t(filter_interval(r, inv_h, G, geo.t[p]));
        }
    });
    for (char b : bad_chunk)
        if (b) throw std::invalid_argument("schnet: a pair vector is not finite (NaN or inf positions or cell)");
    if (grad) {
        geo.t2.resize(P), geo.k2.resize(P), geo.first2.resize(P);
        parallel_for(int64_t(bad_chunk.size()), threads, [&](int64_t c) {
            for (int64_t s = c * kPairBlock; s < std::min(P, (c + 1) * kPairBlock); ++s) {
                const int64_t p = index.by_second[s];
                geo.t2[s] = geo.t[p], geo.k2[s] = geo.k[p], geo.first2[s] = in.first[p];
            }
        });
    }

    const T* W = m.weights;
    const BlockOffsets o(F);
    const int64_t NF = N * F;
    // forward, keeping what the backward needs: each block's in2f output y and sigmoid(z)
    ScratchVector<T> x(NF);
    for (int64_t a = 0; a < N; ++a) std::copy(W + in.species[a] * F, W + (in.species[a] + 1) * F, x.data() + a * F);
    ScratchVector<T> ys(grad ? L.n_blocks * NF : NF), sigs(grad ? L.n_blocks * NF : 0);
    for (int64_t b = 0; b < L.n_blocks; ++b) {
        const T* B = W + L.block(b);
        T* y = ys.data() + (grad ? b * NF : 0);
        own_blocks([&](int64_t lo, int64_t hi) {
            dense(hi - lo, F, F, x.data() + lo * F, B + o.in2f_t, nullptr, y + lo * F);
        });
        if (halo) halo->forward(reinterpret_cast<double*>(y), F);  // the ghosts' rows from their owners
        own_blocks([&](int64_t lo, int64_t hi) {
            const int64_t n = hi - lo;
            std::vector<T> mb(n * F), zb(n * F), sb(n * F);
            conv_rows(index, in.second, geo, B + o.table, F, y, lo, hi, mb.data());
            dense(n, F, F, mb.data(), B + o.w1_t, B + o.b1, zb.data());
            activate(n * F, zb.data(), sb.data());
            if (grad) std::copy(sb.begin(), sb.end(), sigs.begin() + b * NF + lo * F);
            dense(n, F, F, zb.data(), B + o.w2_t, B + o.b2, mb.data());
            T* xr = x.data() + lo * F;
            for (int64_t k = 0; k < n * F; ++k) xr[k] += mb[k];
        });
    }

    // output network and the start of the backward pass: g_x = dE/dx for the energy atoms
    const T* Wo = W + L.output();
    const T* o1_t = Wo;
    const T* o1 = o1_t + F * H;
    const T* o1_b = o1 + H * F;
    const T* o2 = o1_b + H;
    const T o2_b = o2[H];
    const T scale = static_cast<T>(m.energy_scale);
    ScratchVector<T> gx(grad ? NF : 0);
    std::fill(out.energies + R, out.energies + N, 0.0);  // ghosts of a halo exchange: not evaluated
    own_blocks([&](int64_t lo, int64_t hi) {
        const int64_t n = hi - lo;
        std::vector<T> hb(n * H), sb(n * H);
        dense(n, F, H, x.data() + lo * F, o1_t, o1_b, hb.data());
        activate(n * H, hb.data(), sb.data());
        for (int64_t a = lo; a < hi; ++a) {
            T y = o2_b;
            for (int64_t k = 0; k < H; ++k) y += o2[k] * hb[(a - lo) * H + k];
            out.energies[a] = m.e0[in.species[a]] + m.energy_scale * double(y);
        }
        if (!grad) return;
        for (int64_t a = lo; a < hi; ++a)
            for (int64_t k = 0; k < H; ++k)  // dE/dh = scale w_o2 sigmoid(h); zero for atoms not summed
                sb[(a - lo) * H + k] = a < n_energy ? (scale * o2[k]) * sb[(a - lo) * H + k] : T(0);
        dense(n, H, F, sb.data(), o1, nullptr, gx.data() + lo * F);
    });

    // backward through the blocks in reverse: g_r2 accumulates dE/dr of every block, in the
    // order of PairIndex.by_second
    ScratchVector<T> g_r2(grad ? P : 0, T(0));
    ScratchVector<T> gm(grad ? NF : 0);
    ScratchVector<T> gy_all(grad && halo ? NF : 0);
    for (int64_t b = L.n_blocks - 1; grad && b >= 0; --b) {
        const T* B = W + L.block(b);
        const T* y = ys.data() + b * NF;
        const T* sig = sigs.data() + b * NF;
        own_blocks([&](int64_t lo, int64_t hi) {  // gm = ((g_x W_2) * sigmoid(z)) W_1 = dE/dm
            const int64_t n = hi - lo;
            std::vector<T> gz(n * F);
            dense(n, F, F, gx.data() + lo * F, B + o.w2, nullptr, gz.data());
            for (int64_t k = 0; k < n * F; ++k) gz[k] *= sig[lo * F + k];
            dense(n, F, F, gz.data(), B + o.w1, nullptr, gm.data() + lo * F);
        });
        if (!halo) {
            row_blocks([&](int64_t lo, int64_t hi) {  // dE/dr of the rows' pairs; g_x += (dE/dy) W_in
                const int64_t n = hi - lo;
                std::vector<T> gy(n * F), gxb(n * F);
                conv_grad(index, geo, B + o.table, F, inv_h, y, gm.data(), lo, hi, gy.data(), g_r2.data());
                dense(n, F, F, gy.data(), B + o.in2f, nullptr, gxb.data());
                T* g = gx.data() + lo * F;
                for (int64_t k = 0; k < n * F; ++k) g[k] += gxb[k];
            });
        } else {  // the same in two passes, with the ghosts' dE/dy sent to their owners between
            row_blocks([&](int64_t lo, int64_t hi) {
                conv_grad(index, geo, B + o.table, F, inv_h, y, gm.data(), lo, hi, gy_all.data() + lo * F,
                          g_r2.data());
            });
            halo->reverse(reinterpret_cast<double*>(gy_all.data()), F);
            own_blocks([&](int64_t lo, int64_t hi) {
                const int64_t n = hi - lo;
                std::vector<T> gxb(n * F);
                dense(n, F, F, gy_all.data() + lo * F, B + o.in2f, nullptr, gxb.data());
                T* g = gx.data() + lo * F;
                for (int64_t k = 0; k < n * F; ++k) g[k] += gxb[k];
            });
        }
    }

    // the prior's energies, and g_p = dE/d(d_p) of the network and the prior, per centre
    const bool prior = m.inner != nullptr;
    ScratchVector<T> g_r(grad ? P : 0);
    if (grad)
        parallel_for(int64_t(bad_chunk.size()), threads, [&](int64_t c) {
            for (int64_t s = c * kPairBlock; s < std::min(P, (c + 1) * kPairBlock); ++s)
                g_r[index.by_second[s]] = g_r2[s];
        });
    ScratchVector<double> gvec(grad ? 3 * P : 0);
    if (prior || grad)
        row_blocks([&](int64_t lo, int64_t hi) {
            for (int64_t i = lo; i < hi; ++i) {
                double e_prior = 0;
                for (int64_t s = index.first_start[i]; s < index.first_start[i + 1]; ++s) {
                    const int64_t p = index.first_pair(s);
                    const double* d = in.vectors + 3 * p;
                    double de = 0;
                    if (prior) {
                        const int64_t si = in.species[i], sj = in.species[in.second[p]];
                        const double inner = m.inner[si * S + sj];
                        const double r = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
                        if (r < inner && r > 0) {
                            double e;
                            wall(r, m.atomic_numbers[si], m.atomic_numbers[sj], inner, m.width, e, de);
                            e_prior += 0.5 * e;
                            de = 0.5 * de / r;  // d(e/2)/d(d_p) = (1/2) e'(r) d_p / r
                        }
                    }
                    if (!grad) continue;
                    const T r = geo.r[p];
                    // the network's part comes from every pair (a ghost's features feed the
                    // energy atoms); the prior's only from the energy atoms' own pairs
                    const T c = g_r[p] / (r > T(0) ? r : T(1));
                    const double cp = i < n_energy ? de : 0.0;
                    for (int a = 0; a < 3; ++a) gvec[3 * p + a] = double(c * T(d[a])) + cp * d[a];
                }
                out.energies[i] += e_prior;
            }
        });
    if (out.forces) pair_forces(index, gvec.data(), out.forces, threads);
    if (out.virials) pair_virials(index, in.vectors, gvec.data(), out.virials, threads);
}

}  // namespace

void compute(const Model<float>& m, const Input& in, const Output& out) { run(m, in, out); }
void compute(const Model<double>& m, const Input& in, const Output& out) { run(m, in, out); }

}  // namespace schnet
}  // namespace mlff
