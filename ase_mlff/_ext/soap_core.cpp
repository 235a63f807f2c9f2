// Whole passes of the SOAP descriptor over a pair list (see soap_core.hpp for the definitions).
#include "soap_core.hpp"

namespace mlff {
namespace soap {

template <typename T>
void forward(const Basis<T>& b, const Pairs<T>& s, T* P, T* Cout, T* J) {
    const int64_t D = b.dim(), C = b.n_coeffs();
    s.over_centres([&](int64_t lo, int64_t hi) {
        std::vector<double> gbuf(b.geom_size());
        PairGeom g = b.geom_view(gbuf.data());
        std::vector<double> ci(C), dc(3 * b.N * b.LM);
        for (int64_t i = lo; i < hi; ++i) {
            s.coefficients(b, i, ci.data(), g);
            b.power(ci.data(), P + i * D);
            for (int64_t q = 0; q < C; ++q) Cout[i * C + q] = static_cast<T>(ci[q]);
            if (!J) continue;
            for (int64_t p = s.offsets[i]; p < s.offsets[i + 1]; ++p) {
                b.geometry(s.vec + 3 * p, g, true);
                // dc[c][n][lm]: derivative of the pair's own term with respect to d_c
                for (int n = 0; n < b.N; ++n)
                    for (int l = 0; l <= b.L; ++l) {
                        const double hv = g.h[n * (b.L + 1) + l], dhv = g.dh[n * (b.L + 1) + l];
                        for (int m = 0; m < 2 * l + 1; ++m) {
                            const int lm = l * l + m;
                            for (int c = 0; c < 3; ++c)
                                dc[(c * b.N + n) * b.LM + lm] = dhv * g.u[c] * g.Y[lm] + hv * g.dY[3 * lm + c];
                        }
                    }
                const int beta = s.nbr[p];
                T* Jp = J + p * 3 * D;
                for (int64_t k = 0; k < D; ++k) {
                    const Entry& e = b.entries[k];
                    double acc[3] = {0, 0, 0};
                    const int l0 = e.l * e.l, nm = 2 * e.l + 1;
                    if (e.a == beta) {
                        const double* y = ci.data() + (e.b * b.N + e.n2) * b.LM + l0;
                        for (int c = 0; c < 3; ++c) {
                            const double* x = dc.data() + (c * b.N + e.n) * b.LM + l0;
                            for (int m = 0; m < nm; ++m) acc[c] += x[m] * y[m];
                        }
                    }
                    if (e.b == beta) {
                        const double* x = ci.data() + (e.a * b.N + e.n) * b.LM + l0;
                        for (int c = 0; c < 3; ++c) {
                            const double* y = dc.data() + (c * b.N + e.n2) * b.LM + l0;
                            for (int m = 0; m < nm; ++m) acc[c] += x[m] * y[m];
                        }
                    }
                    for (int c = 0; c < 3; ++c) Jp[c * D + k] = static_cast<T>(e.w * acc[c]);
                }
            }
        }
    });
}

template <typename T>
void backward(const Basis<T>& b, const Pairs<T>& s, const T* GP, const T* CF, T* G) {
    const int64_t D = b.dim(), C = b.n_coeffs();
    s.over_centres([&](int64_t lo, int64_t hi) {
        std::vector<double> gbuf(b.geom_size());
        PairGeom g = b.geom_view(gbuf.data());
        std::vector<double> ci(C), gc(C);
        for (int64_t i = lo; i < hi; ++i) {
            for (int64_t q = 0; q < C; ++q) ci[q] = CF[i * C + q];
            b.grad_coefficients(GP + i * D, ci.data(), gc.data());
            for (int64_t p = s.offsets[i]; p < s.offsets[i + 1]; ++p) {
                b.geometry(s.vec + 3 * p, g, true);
                double acc[3];
                b.pair_gradient(gc.data(), s.nbr[p], g, acc);
                for (int c = 0; c < 3; ++c) G[3 * p + c] = static_cast<T>(acc[c]);
            }
        }
    });
}

template void forward<double>(const Basis<double>&, const Pairs<double>&, double*, double*, double*);
template void forward<float>(const Basis<float>&, const Pairs<float>&, float*, float*, float*);
template void backward<double>(const Basis<double>&, const Pairs<double>&, const double*, const double*, double*);
template void backward<float>(const Basis<float>&, const Pairs<float>&, const float*, const float*, float*);

namespace {

// channels per vector block: one AVX-512 register of doubles, two AVX2 ones; fixed at compile
// time so that the blocks live in registers
constexpr int64_t kChannelBlock = 8;

// Each channel's arithmetic is the one of backward() in the same order; the channel is the
// innermost loop, so it is what vectorises (MLFF_SIMD_CLONES: the same bits on every clone).
MLFF_SIMD_CLONES
void backward_channels_range(const Basis<double>& b, const Pairs<double>& s, const double* GP, const double* CF,
                             int64_t R, double* G, int64_t lo, int64_t hi) {
    constexpr int64_t W = kChannelBlock;
    const int64_t D = b.dim(), C = b.n_coeffs();
    const int64_t RB = (R + W - 1) / W * W;  // channels padded to whole blocks (the padding is zero)
    std::vector<double> gbuf(b.geom_size());
    PairGeom g = b.geom_view(gbuf.data());
    std::vector<double> gc(C * RB), w(RB, 0.0);
    for (int64_t i = lo; i < hi; ++i) {
        const double* ci = CF + i * C;
        std::fill(gc.begin(), gc.end(), 0.0);
        const double* gp = GP + i * D * R;
        for (int64_t k = 0; k < D; ++k) {
            const Entry& e = b.entries[k];
            for (int64_t r = 0; r < R; ++r) w[r] = e.w * gp[k * R + r];
            const int l0 = e.l * e.l, nm = 2 * e.l + 1;
            const int64_t ia = (e.a * b.N + e.n) * b.LM + l0, ib = (e.b * b.N + e.n2) * b.LM + l0;
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
            b.geometry(s.vec + 3 * p, g, true);
            const double* gs = gc.data() + int64_t(s.nbr[p]) * b.N * b.LM * RB;
            for (int64_t r0 = 0; r0 < RB; r0 += W) {
                double acc[3][W] = {};
                for (int l = 0; l <= b.L; ++l) {
                    for (int m = 0; m < 2 * l + 1; ++m) {
                        const int lm = l * l + m;
                        double a[W] = {}, bb[W] = {};
                        for (int n = 0; n < b.N; ++n) {
                            const double* x = gs + (int64_t(n) * b.LM + lm) * RB + r0;
                            const double hv = g.h[n * (b.L + 1) + l], dhv = g.dh[n * (b.L + 1) + l];
                            #pragma omp simd
                            for (int64_t r = 0; r < W; ++r) {
                                a[r] += x[r] * hv;
                                bb[r] += x[r] * dhv;
                            }
                        }
                        for (int c = 0; c < 3; ++c) {
                            const double uy = g.u[c], y = g.Y[lm], dy = g.dY[3 * lm + c];
                            #pragma omp simd
                            for (int64_t r = 0; r < W; ++r) acc[c][r] += bb[r] * uy * y + a[r] * dy;
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

}  // namespace

void backward_channels(const Basis<double>& b, const Pairs<double>& s, const double* GP, const double* CF, int64_t R,
                       double* G) {
    s.over_centres([&](int64_t lo, int64_t hi) { backward_channels_range(b, s, GP, CF, R, G, lo, hi); });
}

}  // namespace soap
}  // namespace mlff
