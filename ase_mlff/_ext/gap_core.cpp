// GAP serving core (see gap_core.hpp for the model, the layout and the guarantees).
#include "gap_core.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

namespace mlff {
namespace gap {

namespace {

// atoms per task: enough that a block reads the sparse points once for many atoms (the two
// kernel products stream all M x D of them per block), few enough that small cells still
// split over threads and a block's scratch stays in cache
constexpr int64_t kBlock = 32;
// sparse points per chunk of the kernel products: a chunk (kChunk x Dp doubles, ~170 kB for
// D = 324) stays in L2 while the block's atoms pass over it
constexpr int64_t kChunk = 64;
// the tiles of the kernel products: kRows atoms by kCols sparse points (values) or by kWide
// columns of D (gradients), with kLanes independent lanes innermost
constexpr int64_t kRows = 4, kCols = 4, kLanes = 8, kWide = 32;

// the tiles are inlined into the instruction-set variants of their callers, so that each is
// compiled for that instruction set
#if defined(__GNUC__)
#define MLFF_INLINE inline __attribute__((always_inline))
#else
#define MLFF_INLINE inline
#endif

// acc + a b: one fused multiply-add (one rounding) when Fused, else a product then a sum. The
// kernel products are most of GAP's arithmetic and fused multiply-adds make them ~1.5 times
// faster, so where the CPU has them (x86-64 with FMA, picked at run time) they are used; the
// results then differ from a CPU without them in the last bits, never between thread counts.
template <bool Fused>
MLFF_INLINE double madd(double acc, double a, double b) {
    if constexpr (Fused)
        return __builtin_fma(a, b, acc);
    else
        return acc + a * b;
}

// The dot products of a tile of kRows rows x Cols sparse points, each as kLanes partial sums over
// d mod kLanes added pairwise at the end: the same operations, in the same order, for every
// (row, point) pair whatever tile it falls in.
template <bool Fused, int64_t Cols>
MLFF_INLINE void dot_tile(const double* Q, const double* Z, int64_t Dp, int64_t m, double* K, int64_t ldk) {
    double acc[kRows][Cols][kLanes] = {};
    for (int64_t d = 0; d < Dp; d += kLanes)
        for (int64_t a = 0; a < kRows; ++a) {
            const double* q = Q + a * Dp + d;
            for (int64_t b = 0; b < Cols; ++b) {
                const double* z = Z + (m + b) * Dp + d;
                #pragma omp simd
                for (int64_t l = 0; l < kLanes; ++l) acc[a][b][l] = madd<Fused>(acc[a][b][l], q[l], z[l]);
            }
        }
    for (int64_t a = 0; a < kRows; ++a)
        for (int64_t b = 0; b < Cols; ++b) {
            const double* s = acc[a][b];
            K[a * ldk + m + b] = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
        }
}

// K[r, m] = q_r . z_m for rows r in [0, nR) (a multiple of kRows) and points m in [m0, m1)
template <bool Fused>
MLFF_INLINE void kernel_values_impl(const double* Q, int64_t nR, const double* Z, int64_t Dp, int64_t m0, int64_t m1,
                                    double* K, int64_t ldk) {
    for (int64_t r = 0; r < nR; r += kRows) {
        int64_t m = m0;
        for (; m + kCols <= m1; m += kCols) dot_tile<Fused, kCols>(Q + r * Dp, Z, Dp, m, K + r * ldk, ldk);
        for (; m < m1; ++m) dot_tile<Fused, 1>(Q + r * Dp, Z, Dp, m, K + r * ldk, ldk);
    }
}

// GQ[r, d] += sum over m in [m0, m1) of W[r, m] Z[m, d] for columns [d0, d0 + Width): each
// entry a sum over m in order, so splitting m into chunks changes nothing
template <bool Fused, int64_t Width>
MLFF_INLINE void axpy_tile(const double* W, int64_t ldw, const double* Z, int64_t Dp, int64_t m0, int64_t m1,
                           int64_t d0, double* GQ) {
    double acc[kRows][Width];
    for (int64_t a = 0; a < kRows; ++a)
        for (int64_t l = 0; l < Width; ++l) acc[a][l] = GQ[a * Dp + d0 + l];
    for (int64_t m = m0; m < m1; ++m) {
        const double* z = Z + m * Dp + d0;
        for (int64_t a = 0; a < kRows; ++a) {
            const double w = W[a * ldw + m];
            #pragma omp simd
            for (int64_t l = 0; l < Width; ++l) acc[a][l] = madd<Fused>(acc[a][l], w, z[l]);
        }
    }
    for (int64_t a = 0; a < kRows; ++a)
        for (int64_t l = 0; l < Width; ++l) GQ[a * Dp + d0 + l] = acc[a][l];
}

template <bool Fused>
MLFF_INLINE void kernel_gradient_impl(const double* W, int64_t ldw, int64_t nR, const double* Z, int64_t Dp,
                                      int64_t m0, int64_t m1, double* GQ) {
    for (int64_t r = 0; r < nR; r += kRows) {
        int64_t d = 0;
        for (; d + kWide <= Dp; d += kWide) axpy_tile<Fused, kWide>(W + r * ldw, ldw, Z, Dp, m0, m1, d, GQ + r * Dp);
        for (; d < Dp; d += kLanes) axpy_tile<Fused, kLanes>(W + r * ldw, ldw, Z, Dp, m0, m1, d, GQ + r * Dp);
    }
}

// The variants of the two products and the choice between them: AVX-512 + FMA, AVX2 + FMA
// (the same bits: each lane's operations are the same) and a portable one without FMA.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MLFF_FMA_DISPATCH 1
__attribute__((target("avx512f,fma"))) void kernel_values_512(const double* Q, int64_t nR, const double* Z, int64_t Dp,
                                                              int64_t m0, int64_t m1, double* K, int64_t ldk) {
    kernel_values_impl<true>(Q, nR, Z, Dp, m0, m1, K, ldk);
}
__attribute__((target("avx2,fma"))) void kernel_values_256(const double* Q, int64_t nR, const double* Z, int64_t Dp,
                                                           int64_t m0, int64_t m1, double* K, int64_t ldk) {
    kernel_values_impl<true>(Q, nR, Z, Dp, m0, m1, K, ldk);
}
__attribute__((target("avx512f,fma"))) void kernel_gradient_512(const double* W, int64_t ldw, int64_t nR,
                                                                const double* Z, int64_t Dp, int64_t m0, int64_t m1,
                                                                double* GQ) {
    kernel_gradient_impl<true>(W, ldw, nR, Z, Dp, m0, m1, GQ);
}
__attribute__((target("avx2,fma"))) void kernel_gradient_256(const double* W, int64_t ldw, int64_t nR, const double* Z,
                                                             int64_t Dp, int64_t m0, int64_t m1, double* GQ) {
    kernel_gradient_impl<true>(W, ldw, nR, Z, Dp, m0, m1, GQ);
}

// 2: AVX-512 with FMA, 1: AVX2 with FMA, 0: neither
int fma_level() {
    static const int level = [] {
        __builtin_cpu_init();
        if (!__builtin_cpu_supports("fma")) return 0;
        if (__builtin_cpu_supports("avx512f")) return 2;
        return __builtin_cpu_supports("avx2") ? 1 : 0;
    }();
    return level;
}
#endif

void kernel_values(const double* Q, int64_t nR, const double* Z, int64_t Dp, int64_t m0, int64_t m1, double* K,
                   int64_t ldk) {
#ifdef MLFF_FMA_DISPATCH
    switch (fma_level()) {
        case 2: return kernel_values_512(Q, nR, Z, Dp, m0, m1, K, ldk);
        case 1: return kernel_values_256(Q, nR, Z, Dp, m0, m1, K, ldk);
        default: break;
    }
#endif
    kernel_values_impl<false>(Q, nR, Z, Dp, m0, m1, K, ldk);
}

void kernel_gradient(const double* W, int64_t ldw, int64_t nR, const double* Z, int64_t Dp, int64_t m0, int64_t m1,
                     double* GQ) {
#ifdef MLFF_FMA_DISPATCH
    switch (fma_level()) {
        case 2: return kernel_gradient_512(W, ldw, nR, Z, Dp, m0, m1, GQ);
        case 1: return kernel_gradient_256(W, ldw, nR, Z, Dp, m0, m1, GQ);
        default: break;
    }
#endif
    kernel_gradient_impl<false>(W, ldw, nR, Z, Dp, m0, m1, GQ);
}

// Step 1 of a block: the coefficients ci (n_coeffs) and power spectrum q (Dp, zero after D) of
// atom i, and the geometry of its pairs (in their slot order) kept in geo for the backward pass
// (with grad when grad); a copy of the power spectrum to p_out when not null; then, when
// normalise, its norm |p_i| and q / |p_i| in q.
MLFF_SIMD_CLONES
void environment(const soap::Basis<double>& b, const PairIndex& x, const int64_t* species, const int64_t* second,
                 const double* vectors, int64_t i, bool grad, double* ci, double* q, double* p_out, bool normalise,
                 double* norm, double* geo) {
    const int64_t gs = b.geom_size(), D = b.dim();
    b.start_coefficients(int(species[i]), ci);
    for (int64_t t = x.first_start[i]; t < x.first_start[i + 1]; ++t) {
        const int64_t p = x.first_pair(t);
        soap::PairGeom g = b.geom_view(geo + (t - x.first_start[i]) * gs);
        b.geometry(vectors + 3 * p, g, grad);
        b.add_pair(int(species[second[p]]), g, ci);
    }
    b.power(ci, q);
    if (p_out) std::copy(q, q + D, p_out);
    if (!normalise) return;
    double n2 = 0;
    for (int64_t d = 0; d < D; ++d) n2 += q[d] * q[d];
    *norm = std::sqrt(n2);  // the caller refuses a zero norm (no throw in a clone)
    if (!(n2 > 0)) return;
    for (int64_t d = 0; d < D; ++d) q[d] /= *norm;
}

// Step 3: from gq = dE/dq_i to the pair gradients g (P, 3) of atom i's pairs:
// dE/dp = (gq - q (q . gq)) / |p|, then dE/dc, then each pair (geometry from step 1).
MLFF_SIMD_CLONES
void back_to_pairs(const soap::Basis<double>& b, const PairIndex& x, const int64_t* species, const int64_t* second,
                   int64_t i, const double* q, double norm, const double* gq, const double* ci, double* geo,
                   double* gp, double* gc, double* g) {
    const int64_t gs = b.geom_size(), D = b.dim();
    double qg = 0;
    for (int64_t d = 0; d < D; ++d) qg += q[d] * gq[d];
    for (int64_t d = 0; d < D; ++d) gp[d] = (gq[d] - q[d] * qg) / norm;
    b.grad_coefficients(gp, ci, gc);
    for (int64_t t = x.first_start[i]; t < x.first_start[i + 1]; ++t) {
        const int64_t p = x.first_pair(t);
        const soap::PairGeom geom = b.geom_view(geo + (t - x.first_start[i]) * gs);
        b.pair_gradient(gc, int(species[second[p]]), geom, g + 3 * p);
    }
}

}  // namespace

Model::Model(const Params& params)
    : p_(params),
      basis_(params.n_species, params.n_max, params.l_max, params.n_intervals, params.inv_h, params.soap_cutoff,
             params.soap_table, params.soap_central) {
    const int S = p_.n_species;
    if (p_.zeta < 1) throw std::invalid_argument("gap: zeta must be a positive integer");
    if (!p_.soap_table || !p_.soap_central || !p_.sparse_start || !p_.e0)
        throw std::invalid_argument("gap: the SOAP tables, sparse_start and e0 are required");
    if (p_.sparse_stride < basis_.dim() || p_.sparse_stride % kLanes != 0)
        throw std::invalid_argument("gap: sparse_stride must be the power spectrum length rounded up to a multiple of 8");
    if (p_.sparse_start[0] != 0) throw std::invalid_argument("gap: sparse_start must start at 0");
    for (int a = 0; a < S; ++a)
        if (p_.sparse_start[a + 1] < p_.sparse_start[a])
            throw std::invalid_argument("gap: sparse_start must not decrease");
    if (p_.sparse_start[S] > 0 && (!p_.sparse || !p_.alpha))
        throw std::invalid_argument("gap: sparse points need sparse and alpha");
    if (p_.pair_n_sparse < 0) throw std::invalid_argument("gap: pair_n_sparse must not be negative");
    if (p_.pair_n_sparse > 0) {
        if (!p_.pair_sparse || !p_.beta) throw std::invalid_argument("gap: a 2-body term needs pair_sparse and beta");
        if (!(p_.pair_cutoff > 0) || !(p_.pair_width >= 0) || !(p_.pair_theta > 0))
            throw std::invalid_argument("gap: the 2-body term needs cutoff > 0, width >= 0 and theta > 0");
    }
}

void Model::compute(int64_t n_atoms, const int64_t* species, int64_t n_pairs, const int64_t* first,
                    const int64_t* second, const double* vectors, int64_t n_energy_atoms, int n_threads,
                    double* energies, double* forces, double* virial, double* power, double* coeffs) const {
    const int S = p_.n_species;
    if (n_atoms < 0 || n_pairs < 0) throw std::invalid_argument("gap: negative atom or pair count");
    if (n_energy_atoms < 0 || n_energy_atoms > n_atoms)
        throw std::invalid_argument("gap: n_energy_atoms must be from 0 to the number of atoms");
    for (int64_t i = 0; i < n_atoms; ++i)
        if (species[i] < 0 || species[i] >= S)
            throw std::out_of_range("gap: atom " + std::to_string(i) + " has species index " + std::to_string(species[i]) +
                                    ", not one of the model's " + std::to_string(S));
    const PairIndex x = index_pairs(n_atoms, n_pairs, first, second);
    // every check that can fail runs here, before the passes: an exception must not leave a
    // target_clones function (GCC then calls std::terminate)
    for (int64_t p = 0; p < n_pairs; ++p) soap::check_vector(vectors + 3 * p);
    const bool need_grad = forces || virial;

    const soap::Basis<double>& b = basis_;
    const int64_t D = b.dim(), Dp = p_.sparse_stride, C = b.n_coeffs();
    const double d2 = p_.delta * p_.delta, z = p_.zeta;
    const bool two_body = p_.pair_n_sparse > 0;
    const int64_t U = p_.pair_n_sparse;
    const double th2 = p_.pair_theta * p_.pair_theta, dd2 = p_.pair_delta * p_.pair_delta;
    const double rc2 = p_.pair_cutoff, w2 = p_.pair_width;

    std::vector<double> g(need_grad ? 3 * n_pairs : 0, 0.0);  // d eps_first / d d_p
    std::fill(energies, energies + n_atoms, 0.0);

    const int64_t n_tasks = (n_energy_atoms + kBlock - 1) / kBlock;
    const int threads = n_tasks >= 2 ? resolve_threads(n_threads) : 1;
    parallel_for(n_tasks, threads, [&](int64_t task) {
        const int64_t lo = task * kBlock, hi = std::min(n_energy_atoms, lo + kBlock), nb = hi - lo;
        const int64_t gs = b.geom_size(), slot0 = x.first_start[lo];
        std::vector<double> ci(nb * C), q(nb * Dp, 0.0), norm(nb, 0.0);
        // the block's pairs' geometry: a buffer per thread, kept between blocks and calls (it
        // only grows, to the largest block seen; no clearing, every entry used is written first)
        thread_local std::vector<double> geo;
        const int64_t n_geo = (x.first_start[hi] - slot0) * gs;
        if (int64_t(geo.size()) < n_geo) geo.resize(n_geo);

        // 1. each atom's coefficients and normalised power spectrum (atoms of a species without
        //    sparse points have no SOAP term)
        for (int64_t k = 0; k < nb; ++k) {
            const int64_t i = lo + k;
            const int s = int(species[i]);
            energies[i] = p_.e0[s];
            const bool kernel = p_.sparse_start[s + 1] > p_.sparse_start[s];
            if (!kernel && !power && !coeffs) continue;
            environment(b, x, species, second, vectors, i, need_grad && kernel, ci.data() + k * C, q.data() + k * Dp,
                        power ? power + i * D : nullptr, kernel, norm.data() + k,
                        geo.data() + (x.first_start[i] - slot0) * gs);
            if (kernel && !(norm[k] > 0))
                throw std::invalid_argument("gap: atom " + std::to_string(i) + " has an all-zero SOAP power spectrum "
                                            "(no neighbour within the SOAP cutoff and central_weight 0): its kernel "
                                            "is undefined");
            if (coeffs) std::copy(ci.data() + k * C, ci.data() + (k + 1) * C, coeffs + i * C);
        }

        // 2. per species: kernel values against its sparse points, the energies, and
        //    dE/dq = delta^2 zeta sum_m alpha_m k_m^(zeta - 1) z_m
        std::vector<int64_t> rows;
        std::vector<double> Q, GQ;
        thread_local std::vector<double> K;  // every entry used is written by kernel_values first
        for (int s = 0; s < S; ++s) {
            const int64_t m_lo = p_.sparse_start[s], Ms = p_.sparse_start[s + 1] - m_lo;
            if (Ms == 0) continue;
            rows.clear();
            for (int64_t k = 0; k < nb; ++k)
                if (species[lo + k] == s) rows.push_back(k);
            if (rows.empty()) continue;
            const int64_t nR = int64_t(rows.size()), nRp = (nR + kRows - 1) / kRows * kRows;
            Q.assign(nRp * Dp, 0.0);  // padding rows stay zero
            for (int64_t r = 0; r < nR; ++r)
                std::copy(q.data() + rows[r] * Dp, q.data() + (rows[r] + 1) * Dp, Q.data() + r * Dp);
            const double* Z = p_.sparse + m_lo * Dp;
            const double* alpha = p_.alpha + m_lo;
            if (int64_t(K.size()) < nRp * Ms) K.resize(nRp * Ms);
            for (int64_t m0 = 0; m0 < Ms; m0 += kChunk)
                kernel_values(Q.data(), nRp, Z, Dp, m0, std::min(Ms, m0 + kChunk), K.data(), Ms);
            for (int64_t r = 0; r < nR; ++r) {
                double* kr = K.data() + r * Ms;
                double e = 0;
                for (int64_t m = 0; m < Ms; ++m) {
                    double kz1 = 1.0;  // k^(zeta - 1) by multiplications
                    for (int t = 1; t < p_.zeta; ++t) kz1 *= kr[m];
                    e += alpha[m] * (kz1 * kr[m]);
                    kr[m] = d2 * z * alpha[m] * kz1;  // the weight of z_m in dE/dq
                }
                energies[lo + rows[r]] += d2 * e;
            }
            if (!need_grad) continue;  // (the padding rows of K are zero: their q are)
            GQ.assign(nRp * Dp, 0.0);
            for (int64_t m0 = 0; m0 < Ms; m0 += kChunk)
                kernel_gradient(K.data(), Ms, nRp, Z, Dp, m0, std::min(Ms, m0 + kChunk), GQ.data());

            // 3. back to the pair vectors, one atom at a time: dE/dp, dE/dc, then each pair
            std::vector<double> gp(D), gc(C);
            for (int64_t r = 0; r < nR; ++r) {
                const int64_t k = rows[r], i = lo + k;
                back_to_pairs(b, x, species, second, i, q.data() + k * Dp, norm[k], GQ.data() + r * Dp,
                              ci.data() + k * C, geo.data() + (x.first_start[i] - slot0) * gs, gp.data(), gc.data(),
                              g.data());
            }
        }

        // 4. the 2-body term: half of V(r) to the centre of each pair
        if (!two_body) return;
        for (int64_t i = lo; i < hi; ++i) {
            const int si = int(species[i]);
            for (int64_t t = x.first_start[i]; t < x.first_start[i + 1]; ++t) {
                const int64_t p = x.first_pair(t);
                const double* d = vectors + 3 * p;
                const double r = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
                if (!(r < rc2)) continue;
                double fc = 1.0, dfc = 0.0;
                if (w2 > 0) {
                    const double u = std::min(std::max((r - (rc2 - w2)) / w2, 0.0), 1.0), arg = M_PI * u;
                    fc = 0.5 * (1.0 + std::cos(arg));
                    if (r > rc2 - w2) dfc = -0.5 * M_PI / w2 * std::sin(arg);
                }
                const int sj = int(species[second[p]]);
                const int a = std::min(si, sj), bb = std::max(si, sj);
                const int64_t key = int64_t(a) * S - int64_t(a) * (a - 1) / 2 + (bb - a);
                const double* rs = p_.pair_sparse + key * U;
                const double* beta = p_.beta + key * U;
                double sk = 0, sdk = 0;
                for (int64_t u = 0; u < U; ++u) {
                    const double dr = r - rs[u];
                    const double kv = std::exp(-0.5 * dr * dr / th2);
                    sk += kv * beta[u];
                    sdk += kv * (-dr / th2) * beta[u];
                }
                energies[i] += 0.5 * (fc * dd2 * sk);
                if (!need_grad) continue;
                const double dv = 0.5 * dd2 * (dfc * sk + fc * sdk) / r;
                for (int c = 0; c < 3; ++c) g[3 * p + c] += dv * d[c];
            }
        }
    });

    if (forces) pair_forces(x, g.data(), forces, n_threads);
    if (virial) pair_virials(x, vectors, g.data(), virial, n_threads);
}

}  // namespace gap
}  // namespace mlff
