// Behler–Parrinello serving core (definitions, layout and threading in bpnn_core.hpp).
#include "bpnn_core.hpp"

#include "pair_reduce.hpp"
#include "pool.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace mlff {
namespace bpnn {

namespace {

constexpr double kPi = 3.14159265358979323846;
// ZBL universal screening function (Ziegler, Biersack, Littmark 1985), as in models/prior.py
constexpr double kZblC[4] = {0.18175, 0.50986, 0.28022, 0.02817};
constexpr double kZblD[4] = {3.19980, 0.94229, 0.40290, 0.20162};
constexpr double kCoulomb = 14.399645;  // e²/(4π ε0) in eV·Å
// centres per task: small enough to balance two threads on a few hundred atoms, and a size that
// depends on nothing but itself (results do not depend on the thread count)
constexpr int64_t kCentres = 16;

void require(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument("bpnn core parameters: " + what);
}

}  // namespace

template <typename T>
Model<T> parse(const int64_t* ints, int64_t n_ints, const T* reals, int64_t n_reals, const double* doubles,
               int64_t n_doubles) {
    Model<T> m;
    require(n_ints >= 7, "ints is too short");
    m.S = ints[0], m.n_radial = ints[1], m.n_eta = ints[2], m.n_zl = ints[3], m.K = ints[4];
    m.activation = ints[5], m.H = ints[6];
    require(m.S >= 1 && m.n_radial >= 0 && m.n_eta >= 0 && m.n_zl >= 0 && m.K >= 1 && m.H >= 1,
            "sizes out of range");
    require(m.activation == 0 || m.activation == 1, "activation must be 0 (tanh) or 1 (silu)");
    int64_t at = 7;
    require(n_ints >= at + m.H + 2 * m.S + 3 * m.K, "ints is too short for its sizes");
    m.widths.assign(ints + at, ints + at + m.H);
    at += m.H;
    m.Z.assign(ints + at, ints + at + m.S);
    at += m.S;
    m.n_sel.assign(ints + at, ints + at + m.S);
    at += m.S;
    m.exps = ints + at;
    at += 3 * m.K;
    const int64_t n_pairs_el = m.S * (m.S + 1) / 2;
    m.n_library = m.S * m.n_radial + n_pairs_el * m.n_eta * m.n_zl;
    for (int64_t k = 0; k < m.K; ++k) {
        const int64_t deg = m.exps[3 * k] + m.exps[3 * k + 1] + m.exps[3 * k + 2];
        require(m.exps[3 * k] >= 0 && m.exps[3 * k + 1] >= 0 && m.exps[3 * k + 2] >= 0 && deg <= 64,
                "moment exponents out of range");
        m.m_max = std::max<int>(m.m_max, static_cast<int>(deg));
    }
    // derivative tables: ∂u^α_k/∂u_c = dexp[c, k] u^α_lower[c, k] (lower: α - e_c, or 0 when α_c = 0)
    m.dexp.assign(3 * m.K, T(0));
    m.lower.assign(3 * m.K, 0);
    for (int64_t k = 0; k < m.K; ++k)
        for (int c = 0; c < 3; ++c) {
            if (m.exps[3 * k + c] == 0) continue;
            int64_t want[3] = {m.exps[3 * k], m.exps[3 * k + 1], m.exps[3 * k + 2]};
            --want[c];
            int64_t found = -1;
            for (int64_t q = 0; q < m.K && found < 0; ++q)
                if (m.exps[3 * q] == want[0] && m.exps[3 * q + 1] == want[1] && m.exps[3 * q + 2] == want[2]) found = q;
            require(found >= 0, "the moment exponents must include every lower degree");
            m.dexp[c * m.K + k] = static_cast<T>(m.exps[3 * k + c]);
            m.lower[c * m.K + k] = found;
        }
    for (int64_t w : m.widths) require(w >= 1, "hidden widths must be >= 1");
    for (int64_t s = 0; s < m.S; ++s) {
        require(m.n_sel[s] >= 1 && at + m.n_sel[s] <= n_ints, "selected columns missing");
        m.sel.push_back(ints + at);
        for (int64_t f = 0; f < m.n_sel[s]; ++f)
            require(ints[at + f] >= 0 && ints[at + f] < m.n_library, "a selected column is outside the library");
        at += m.n_sel[s];
    }
    require(at == n_ints, "ints is longer than its sizes say");

    int64_t r = 0;
    auto take = [&](int64_t n) {
        require(r + n <= n_reals, "reals is too short for its sizes");
        const T* p = reals + r;
        r += n;
        return p;
    };
    m.radial_eta = take(m.S * m.S * m.n_radial);
    m.radial_shift = take(m.S * m.S * m.n_radial);
    m.angular_eta = take(m.S * m.n_eta);
    m.A = take(m.K * m.n_zl);
    m.At.resize(m.K * m.n_zl);  // transposed, (n_zl, K): contiguous over the moments
    for (int64_t k = 0; k < m.K; ++k)
        for (int64_t t = 0; t < m.n_zl; ++t) m.At[t * m.K + k] = m.A[k * m.n_zl + t];
    m.diag = take(m.n_zl);
    m.weight.resize(m.S);
    m.bias.resize(m.S);
    for (int64_t s = 0; s < m.S; ++s) {
        m.mean.push_back(take(m.n_sel[s]));
        m.stdev.push_back(take(m.n_sel[s]));
        for (int64_t l = 0; l <= m.H; ++l) {
            m.weight[s].push_back(take(m.layer_out(l) * m.layer_in(s, l)));
            m.bias[s].push_back(take(m.layer_out(l)));
        }
    }
    require(r == n_reals, "reals is longer than its sizes say");

    require(n_doubles >= 4 + m.S, "doubles is too short");
    m.cutoff = doubles[0];
    m.energy_scale = doubles[1];
    m.e0 = doubles + 2;
    m.prior = doubles[2 + m.S] != 0.0;
    m.width = doubles[3 + m.S];
    require(std::isfinite(m.cutoff) && m.cutoff > 0, "the cutoff must be a positive number");
    if (m.prior) {
        require(n_doubles == 4 + m.S + m.S * m.S, "doubles must hold the prior's inner table");
        require(m.width > 0, "the prior's width must be positive");
        m.inner = doubles + 4 + m.S;
    } else {
        require(n_doubles == 4 + m.S, "doubles is longer than its sizes say");
    }
    return m;
}

namespace {

// Per-task scratch: the current centre's pairs (cached values reused by the backward pass),
// its library, moments and their adjoints, and the network's activations.
template <typename T>
struct Scratch {
    // per pair inside the cutoff (row q of each, with strides 1, 3, n_radial, n_eta, K)
    std::vector<int64_t> pair, sj;
    std::vector<T> r, u, fc, dfc, ex, ew, mono;
    std::vector<T> pw;  // the current pair's powers u_c^0..u_c^m_max (3 rows)
    std::vector<T> lib, dlib, Tm, Q, bT, bD, bQ, a_k;
    std::vector<std::vector<T>> z, act;  // per hidden layer: pre-activation and activation
    std::vector<T> x, dh, dz;

    explicit Scratch(const Model<T>& m) {
        lib.resize(m.n_library);
        dlib.resize(m.n_library);
        Tm.resize(m.S * m.n_eta * m.K);
        bT.resize(Tm.size());
        Q.resize(m.S * m.n_eta);
        bQ.resize(Q.size());
        a_k.resize(m.K);
        bD.resize(3 * Tm.size());
        pw.resize(3 * (m.m_max + 1));
        int64_t wmax = 1;
        for (int64_t s = 0; s < m.S; ++s) wmax = std::max(wmax, m.n_sel[s]);
        for (int64_t w : m.widths) wmax = std::max(wmax, w);
        z.assign(m.H, std::vector<T>(wmax));
        act.assign(m.H, std::vector<T>(wmax));
        x.resize(wmax);
        dh.resize(wmax);
        dz.resize(wmax);
    }
    void reserve_pairs(const Model<T>& m, int64_t n) {
        pair.resize(n), sj.resize(n), r.resize(n), u.resize(3 * n), fc.resize(n), dfc.resize(n);
        ex.resize(n * m.n_radial), ew.resize(n * m.n_eta);
        mono.resize(n * m.K);
    }
};

template <typename T>
inline T activate(int kind, T z) {
    return kind == 0 ? std::tanh(z) : z / (T(1) + std::exp(-z));
}
// derivative from the pre-activation z and the activation a
template <typename T>
inline T activate_slope(int kind, T z, T a) {
    if (kind == 0) return T(1) - a * a;
    const T s = T(1) / (T(1) + std::exp(-z));
    return s * (T(1) + z * (T(1) - s));
}

// Energy of centre i (network part and e0; the prior is added by the caller) and the g_p of its
// pairs inside the cutoff.
template <typename T>
double centre(const Model<T>& m, Scratch<T>& sc, int64_t i, const int64_t* species, const PairIndex& idx,
              const int64_t* second, const T* vectors, T* g) {
    const int64_t S = m.S, NR = m.n_radial, NE = m.n_eta, NZ = m.n_zl, K = m.K, M1 = m.m_max + 1;
    const int64_t si = species[i];
    const bool g5 = NE > 0 && NZ > 0;
    const T rc = static_cast<T>(m.cutoff);
    const T pi_over_rc = static_cast<T>(kPi) / rc;
    const T* reta = m.radial_eta + si * S * NR;
    const T* rsh = m.radial_shift + si * S * NR;
    const T* aeta = m.angular_eta + si * NE;

    // ---- forward over the pairs: library sums and moments, caching what the backward needs
    const int64_t lo = idx.first_start[i], hi = idx.first_start[i + 1];
    sc.reserve_pairs(m, hi - lo);
    std::fill(sc.lib.begin(), sc.lib.end(), T(0));
    std::fill(sc.Tm.begin(), sc.Tm.end(), T(0));
    std::fill(sc.Q.begin(), sc.Q.end(), T(0));
    int64_t n = 0;  // pairs inside the cutoff
    for (int64_t s = lo; s < hi; ++s) {
        const int64_t p = idx.first_pair(s);
        const T* d = vectors + 3 * p;
        const T r = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
        if (!(r < rc)) continue;
        if (!(r > T(0)))
            throw std::invalid_argument("pair " + std::to_string(p) + " has length 0 (two atoms at the same "
                                        "position)");
        const int64_t J = species[second[p]];
        sc.pair[n] = p, sc.sj[n] = J, sc.r[n] = r;
        T* u = &sc.u[3 * n];
        u[0] = d[0] / r, u[1] = d[1] / r, u[2] = d[2] / r;
        const T fc = T(0.5) * (std::cos(pi_over_rc * r) + T(1));
        const T dfc = T(-0.5) * pi_over_rc * std::sin(pi_over_rc * r);
        sc.fc[n] = fc, sc.dfc[n] = dfc;
        // G2
        T* ex = &sc.ex[n * NR];
        T* lib = &sc.lib[J * NR];
        for (int64_t k = 0; k < NR; ++k) {
            const T dr = r - rsh[J * NR + k];
            ex[k] = std::exp(-reta[J * NR + k] * dr * dr);
            lib[k] += ex[k] * fc;
        }
        if (g5) {
            // powers u_c^0..u_c^m_max and the monomials u^α
            T* pw = sc.pw.data();
            for (int c = 0; c < 3; ++c) {
                pw[c * M1] = T(1);
                for (int e = 1; e < M1; ++e) pw[c * M1 + e] = pw[c * M1 + e - 1] * u[c];
            }
            T* mono = &sc.mono[n * K];
            for (int64_t k = 0; k < K; ++k) {
                const int64_t* a = m.exps + 3 * k;
                mono[k] = pw[a[0]] * pw[M1 + a[1]] * pw[2 * M1 + a[2]];
            }
            T* ew = &sc.ew[n * NE];
            for (int64_t e = 0; e < NE; ++e) {
                ew[e] = std::exp(-aeta[e] * (r * r));
                const T w = ew[e] * fc;
                T* Tje = &sc.Tm[(J * NE + e) * K];
#pragma omp simd
                for (int64_t k = 0; k < K; ++k) Tje[k] += w * mono[k];
                sc.Q[J * NE + e] += w * w;
            }
        }
        ++n;
    }
    // G5 columns from the moments
    const int64_t g5_start = S * NR;
    if (g5) {
        int64_t b = 0;
        for (int64_t J = 0; J < S; ++J)
            for (int64_t L = J; L < S; ++L, ++b)
                for (int64_t e = 0; e < NE; ++e) {
                    const T* TJ = &sc.Tm[(J * NE + e) * K];
                    const T* TL = &sc.Tm[(L * NE + e) * K];
                    T* prod = sc.a_k.data();
                    for (int64_t k = 0; k < K; ++k) prod[k] = TJ[k] * TL[k];
                    for (int64_t t = 0; t < NZ; ++t) {
                        const T* At = &m.At[t * K];
                        T G = 0;
#pragma omp simd reduction(+ : G)
                        for (int64_t k = 0; k < K; ++k) G += prod[k] * At[k];
                        if (J == L) G = T(0.5) * (G - sc.Q[J * NE + e] * m.diag[t]);
                        sc.lib[g5_start + (b * NE + e) * NZ + t] = G;
                    }
                }
    }

    // ---- the element's network, keeping activations
    const int64_t F = m.n_sel[si];
    for (int64_t f = 0; f < F; ++f) sc.x[f] = (sc.lib[m.sel[si][f]] - m.mean[si][f]) / m.stdev[si][f];
    const T* h = sc.x.data();
    for (int64_t l = 0; l < m.H; ++l) {
        const int64_t nin = m.layer_in(si, l), nout = m.layer_out(l);
        const T* W = m.weight[si][l];
        const T* bias = m.bias[si][l];
        for (int64_t o = 0; o < nout; ++o) {
            T acc = bias[o];
            const T* Wo = W + o * nin;
#pragma omp simd reduction(+ : acc)
            for (int64_t q = 0; q < nin; ++q) acc += Wo[q] * h[q];
            sc.z[l][o] = acc;
            sc.act[l][o] = activate<T>(static_cast<int>(m.activation), acc);
        }
        h = sc.act[l].data();
    }
    const int64_t nlast = m.layer_in(si, m.H);
    const T* Wout = m.weight[si][m.H];
    T y = m.bias[si][m.H][0];
#pragma omp simd reduction(+ : y)
    for (int64_t q = 0; q < nlast; ++q) y += Wout[q] * h[q];
    const double energy = m.e0[si] + m.energy_scale * static_cast<double>(y);

    // ---- backward through the network: dE/dx, then dE/d(library)
    const T scale = static_cast<T>(m.energy_scale);
    for (int64_t q = 0; q < nlast; ++q) sc.dh[q] = scale * Wout[q];
    for (int64_t l = m.H - 1; l >= 0; --l) {
        const int64_t nin = m.layer_in(si, l), nout = m.layer_out(l);
        const T* W = m.weight[si][l];
        for (int64_t o = 0; o < nout; ++o)
            sc.dz[o] = sc.dh[o] * activate_slope<T>(static_cast<int>(m.activation), sc.z[l][o], sc.act[l][o]);
        for (int64_t q = 0; q < nin; ++q) sc.dh[q] = T(0);
        T* dh = sc.dh.data();
        for (int64_t o = 0; o < nout; ++o) {
            const T* Wo = W + o * nin;
            const T d = sc.dz[o];
#pragma omp simd
            for (int64_t q = 0; q < nin; ++q) dh[q] += Wo[q] * d;
        }
    }
    std::fill(sc.dlib.begin(), sc.dlib.end(), T(0));
    for (int64_t f = 0; f < F; ++f) sc.dlib[m.sel[si][f]] = sc.dh[f] / m.stdev[si][f];

    // ---- adjoints of the moments: G = Σ_k A_kt T^J_k T^L_k (½ (· − diag Q) for J = L)
    if (g5) {
        std::fill(sc.bT.begin(), sc.bT.end(), T(0));
        std::fill(sc.bQ.begin(), sc.bQ.end(), T(0));
        int64_t b = 0;
        for (int64_t J = 0; J < S; ++J)
            for (int64_t L = J; L < S; ++L, ++b)
                for (int64_t e = 0; e < NE; ++e) {
                    const T* dG = &sc.dlib[g5_start + (b * NE + e) * NZ];
                    bool any = false;
                    for (int64_t t = 0; t < NZ; ++t) any = any || dG[t] != T(0);
                    if (!any) continue;
                    std::fill(sc.a_k.begin(), sc.a_k.end(), T(0));
                    for (int64_t t = 0; t < NZ; ++t) {
                        const T* At = &m.At[t * K];
                        const T d = dG[t];
                        T* ak = sc.a_k.data();
#pragma omp simd
                        for (int64_t k = 0; k < K; ++k) ak[k] += d * At[k];
                    }
                    const T* TJ = &sc.Tm[(J * NE + e) * K];
                    const T* TL = &sc.Tm[(L * NE + e) * K];
                    T* bJ = &sc.bT[(J * NE + e) * K];
                    T* bL = &sc.bT[(L * NE + e) * K];
                    if (J == L) {  // ½ d(T·T)/dT = T
                        for (int64_t k = 0; k < K; ++k) bJ[k] += sc.a_k[k] * TJ[k];
                        T dq = 0;
                        for (int64_t t = 0; t < NZ; ++t) dq += dG[t] * m.diag[t];
                        sc.bQ[J * NE + e] -= T(0.5) * dq;
                    } else {
                        for (int64_t k = 0; k < K; ++k) {
                            bJ[k] += sc.a_k[k] * TL[k];
                            bL[k] += sc.a_k[k] * TJ[k];
                        }
                    }
                }
        // the tangential gradient Σ_k bT_k ∂u^α_k/∂u_c = Σ_k bT_k α_c u^(α_k - e_c) as a sum over the
        // (lower) monomials themselves: bD[c, k'] collects α_c bT_k of the k with α_k - e_c = α_k',
        // so the pair loop below needs only the monomials it cached
        std::fill(sc.bD.begin(), sc.bD.end(), T(0));
        for (int64_t Je = 0; Je < S * NE; ++Je) {
            const T* bt = &sc.bT[Je * K];
            T* bd = &sc.bD[Je * 3 * K];
            for (int c = 0; c < 3; ++c)
                for (int64_t k = 0; k < K; ++k) bd[c * K + m.lower[c * K + k]] += m.dexp[c * K + k] * bt[k];
        }
    }

    // ---- backward over the pairs: g_p = dE/d(d_p)
    for (int64_t q = 0; q < n; ++q) {
        const int64_t J = sc.sj[q];
        const T r = sc.r[q], fc = sc.fc[q], dfc = sc.dfc[q];
        const T* u = &sc.u[3 * q];
        T dEdr = 0;               // radial part (along u)
        T tan[3] = {0, 0, 0};     // gradient of the moments on the sphere, times w / r
        const T* ex = &sc.ex[q * NR];
        const T* dG2 = &sc.dlib[J * NR];
        for (int64_t k = 0; k < NR; ++k) {
            if (dG2[k] == T(0)) continue;
            const T eta = reta[J * NR + k], dr = r - rsh[J * NR + k];
            dEdr += dG2[k] * ex[k] * (T(-2) * eta * dr * fc + dfc);
        }
        if (g5) {
            const T* mono = &sc.mono[q * K];
            const T* ew = &sc.ew[q * NE];
            for (int64_t e = 0; e < NE; ++e) {
                const T* bt = &sc.bT[(J * NE + e) * K];
                const T* bd = &sc.bD[(J * NE + e) * 3 * K];
                const T w = ew[e] * fc;
                const T dw = ew[e] * (T(-2) * aeta[e] * r * fc + dfc);
                T Msum = 0, D0 = 0, D1 = 0, D2 = 0;
#pragma omp simd reduction(+ : Msum, D0, D1, D2)
                for (int64_t k = 0; k < K; ++k) {
                    Msum += bt[k] * mono[k];
                    D0 += bd[k] * mono[k];
                    D1 += bd[K + k] * mono[k];
                    D2 += bd[2 * K + k] * mono[k];
                }
                dEdr += dw * Msum + T(2) * sc.bQ[J * NE + e] * w * dw;
                const T wr = w / r;
                tan[0] += wr * D0, tan[1] += wr * D1, tan[2] += wr * D2;
            }
        }
        // project the tangential part: (1 - u uᵀ) tan
        const T ut = u[0] * tan[0] + u[1] * tan[1] + u[2] * tan[2];
        T* gp = g + 3 * sc.pair[q];
        for (int c = 0; c < 3; ++c) gp[c] = dEdr * u[c] + (tan[c] - ut * u[c]);
    }
    return energy;
}

// The ZBL prior of centre i's pairs: returns the centre's half of their energies, adds ½ dE/dd to g.
template <typename T>
double prior(const Model<T>& m, int64_t i, const int64_t* species, const PairIndex& idx, const int64_t* second,
             const T* vectors, T* g) {
    const int64_t S = m.S, si = species[i];
    const T width = static_cast<T>(m.width);
    double energy = 0;
    for (int64_t s = idx.first_start[i]; s < idx.first_start[i + 1]; ++s) {
        const int64_t p = idx.first_pair(s);
        const int64_t sj = species[second[p]];
        const T inner = static_cast<T>(m.inner[si * S + sj]);
        const T* d = vectors + 3 * p;
        const T r = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
        if (!(r < inner)) continue;
        if (!(r > T(0)))
            throw std::invalid_argument("pair " + std::to_string(p) + " has length 0 (two atoms at the same "
                                        "position)");
        const T zi = static_cast<T>(m.Z[si]), zj = static_cast<T>(m.Z[species[second[p]]]);
        const T a = T(0.46850) / (std::pow(zi, T(0.23)) + std::pow(zj, T(0.23)));
        const T x = r / a;
        T phi = 0, dphi = 0;  // dphi = dφ/dr
        for (int k = 0; k < 4; ++k) {
            const T term = T(kZblC[k]) * std::exp(-T(kZblD[k]) * x);
            phi += term;
            dphi -= T(kZblD[k]) / a * term;
        }
        const T pre = T(kCoulomb) * zi * zj;
        const T v = pre / r * phi;
        const T dv = pre * (dphi / r - phi / (r * r));
        T t = (inner - r) / width;
        T dt = T(-1) / width;  // dt/dr, zero where the clamp holds
        if (t >= T(1)) t = T(1), dt = T(0);
        const T sw = t * t * t * (T(10) - T(15) * t + T(6) * t * t);
        const T dsw = T(30) * t * t * (T(1) - t) * (T(1) - t) * dt;
        const T e_pair = v * sw;
        energy += 0.5 * static_cast<double>(e_pair);
        const T half = T(0.5) * (dv * sw + v * dsw) / r;
        for (int c = 0; c < 3; ++c) g[3 * p + c] += half * d[c];
    }
    return energy;
}

}  // namespace

template <typename T>
void compute(const Model<T>& m, int64_t n_atoms, const int64_t* species, int64_t n_pairs, const int64_t* first,
             const int64_t* second, const T* vectors, int64_t n_energy_atoms, int n_threads, double* energies,
             double* forces, double* virial) {
    if (n_atoms < 0 || n_pairs < 0) throw std::invalid_argument("bpnn: negative atom or pair count");
    if (n_energy_atoms < 0 || n_energy_atoms > n_atoms)
        throw std::invalid_argument("bpnn: n_energy_atoms must be in 0..n_atoms");
    for (int64_t k = 0; k < n_atoms; ++k)
        if (species[k] < 0 || species[k] >= m.S)
            throw std::invalid_argument("bpnn: atom " + std::to_string(k) + " has no element of the model");
    // a NaN vector would fail every length test below and drop out as "beyond the cutoff"
    for (int64_t x = 0; x < 3 * n_pairs; ++x)
        if (!std::isfinite(vectors[x]))
            throw std::invalid_argument("bpnn: pair " + std::to_string(x / 3) + " has a NaN or infinite vector");
    const int threads_asked = resolve_threads(n_threads);
    const PairIndex idx = index_pairs(n_atoms, n_pairs, first, second);
    ScratchVector<T> g(static_cast<size_t>(3 * n_pairs), T(0));  // kept between calls (scratch.hpp)
    const int64_t tasks = (n_energy_atoms + kCentres - 1) / kCentres;
    const int threads = n_energy_atoms >= 2 * kCentres ? threads_asked : 1;
    parallel_for(tasks, threads, [&](int64_t task) {
        Scratch<T> sc(m);
        const int64_t a = task * kCentres, b = std::min(n_energy_atoms, a + kCentres);
        for (int64_t i = a; i < b; ++i) {
            double e = centre(m, sc, i, species, idx, second, vectors, g.data());
            if (m.prior) e += prior(m, i, species, idx, second, vectors, g.data());
            energies[i] = e;
        }
    });
    std::fill(energies + n_energy_atoms, energies + n_atoms, 0.0);
    if (forces) pair_forces(idx, g.data(), forces, threads_asked);
    if (virial) pair_virials(idx, vectors, g.data(), virial, threads_asked);
}

template Model<float> parse(const int64_t*, int64_t, const float*, int64_t, const double*, int64_t);
template Model<double> parse(const int64_t*, int64_t, const double*, int64_t, const double*, int64_t);
template void compute(const Model<float>&, int64_t, const int64_t*, int64_t, const int64_t*, const int64_t*,
                      const float*, int64_t, int, double*, double*, double*);
template void compute(const Model<double>&, int64_t, const int64_t*, int64_t, const int64_t*, const int64_t*,
                      const double*, int64_t, int, double*, double*, double*);

}  // namespace bpnn
}  // namespace mlff
