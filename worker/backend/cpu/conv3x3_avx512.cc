// AVX-512 kernels behind conv3x3.h. This file alone is compiled for AVX-512 (F, VL, BW, DQ)
// and FMA; conv3x3.cc checks the CPU before calling anything here, and nothing here is called
// from elsewhere. Everything but the entry points has internal linkage and no std:: function is
// instantiated here (see conv3x3_kernels.h for why).
#include <immintrin.h>
#include <omp.h>

#include <cstdint>
#include <utility>

#include "worker/backend/cpu/avx512_util.h"
#include "worker/backend/cpu/conv3x3.h"
#include "worker/backend/cpu/conv3x3_kernels.h"

namespace resdist::cpu::avx512 {
namespace {

constexpr int kV = 16;             // floats per vector = channel block
constexpr int kTap = kV * kV;      // floats per (kh, kw) tap of a packed 16x16 block
constexpr int kBlock = 9 * kTap;   // floats per packed (out block, in block) pair

// One output row segment [ow0, ow0 + BW) of OB consecutive output-channel blocks. L / R: the
// segment touches the left / right image border (the padded column is skipped).
template <int BW, int OB, bool L, bool R>
void ForwardTile(const float* src_img, const float* wts, float* dst, int64_t cbn, int64_t h,
                 int64_t w, int64_t oh, int64_t ow0, int64_t dst_ob_stride) {
  const int64_t w_ob_stride = cbn * kBlock;
  __m512 acc[OB][BW];
  Unroll<OB>([&](auto ob) { Unroll<BW>([&](auto j) { acc[ob][j] = _mm512_setzero_ps(); }); });
  for (int64_t icb = 0; icb < cbn; ++icb) {
    for (int kh = 0; kh < 3; ++kh) {
      const int64_t ih = oh + kh - 1;
      if (ih < 0 || ih >= h) continue;
      // Column ow0; column ow0 - 1 (j = 0 below) is read only when the segment has one (!L).
      const float* row = src_img + ((icb * h + ih) * w + ow0) * kV;
      const float* wk = wts + icb * kBlock + kh * 3 * kTap;
      for (int ic = 0; ic < kV; ++ic) {
        __m512 wv[OB][3];
        Unroll<OB>([&](auto ob) {
          Unroll<3>([&](auto kw) {
            wv[ob][kw] = _mm512_load_ps(wk + ob * w_ob_stride + kw * kTap + ic * kV);
          });
        });
        // Input column ow0 - 1 + j feeds output column ow0 + j - kw through tap kw.
        Unroll<BW + 2>([&](auto jc) {
          constexpr int j = decltype(jc)::value;
          if constexpr (!((j == 0 && L) || (j == BW + 1 && R))) {
            const __m512 b = _mm512_set1_ps(row[(j - 1) * kV + ic]);
            Unroll<3>([&](auto kwc) {
              constexpr int kw = decltype(kwc)::value;
              constexpr int o = j - kw;
              if constexpr (o >= 0 && o < BW) {
                Unroll<OB>([&](auto ob) {
                  acc[ob][o] = _mm512_fmadd_ps(b, wv[ob][kw], acc[ob][o]);
                });
              }
            });
          }
        });
      }
    }
  }
  Unroll<OB>([&](auto ob) {
    Unroll<BW>([&](auto j) { _mm512_store_ps(dst + ob * dst_ob_stride + j * kV, acc[ob][j]); });
  });
}

template <int BW, int OB>
void ForwardImpl(const Conv3x3Geometry& g, const float* src, const float* packed, float* dst) {
  const int64_t cbn = g.c / kV, groups = g.o / kV / OB, nwb = g.w / BW;
  const int64_t plane = g.h * g.w * kV;
#pragma omp parallel for collapse(3) schedule(static)
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t grp = 0; grp < groups; ++grp)
      for (int64_t oh = 0; oh < g.h; ++oh) {
        const float* s = src + n * cbn * plane;
        const float* wts = packed + grp * OB * cbn * kBlock;
        float* d = dst + (n * g.o / kV + grp * OB) * plane + oh * g.w * kV;
        for (int64_t wb = 0; wb < nwb; ++wb) {
          const int64_t ow0 = wb * BW;
          float* dp = d + ow0 * kV;
          if (nwb == 1)
            ForwardTile<BW, OB, true, true>(s, wts, dp, cbn, g.h, g.w, oh, ow0, plane);
          else if (wb == 0)
            ForwardTile<BW, OB, true, false>(s, wts, dp, cbn, g.h, g.w, oh, ow0, plane);
          else if (wb == nwb - 1)
            ForwardTile<BW, OB, false, true>(s, wts, dp, cbn, g.h, g.w, oh, ow0, plane);
          else
            ForwardTile<BW, OB, false, false>(s, wts, dp, cbn, g.h, g.w, oh, ow0, plane);
        }
      }
}

// dW[kh][kw][ic0 .. ic0+8)[16 oc] += sum over rows and columns of one image's (in block, out
// block) pair. Each broadcast input value feeds the three taps kw = 0, 1, 2.
template <bool K0, bool K2>
[[gnu::always_inline]] inline void WeightsColumn(const float* s, const float* d, int64_t iw,
                                                 __m512 (&acc)[3][8]) {
  // Input column iw meets output column iw + 1 - kw through tap kw.
  const __m512 d0 = K0 ? _mm512_load_ps(d + (iw + 1) * kV) : _mm512_setzero_ps();
  const __m512 d1 = _mm512_load_ps(d + iw * kV);
  const __m512 d2 = K2 ? _mm512_load_ps(d + (iw - 1) * kV) : _mm512_setzero_ps();
  Unroll<8>([&](auto i) {
    const __m512 b = _mm512_set1_ps(s[iw * kV + i]);
    if constexpr (K0) acc[0][i] = _mm512_fmadd_ps(b, d0, acc[0][i]);
    acc[1][i] = _mm512_fmadd_ps(b, d1, acc[1][i]);
    if constexpr (K2) acc[2][i] = _mm512_fmadd_ps(b, d2, acc[2][i]);
  });
}

void WeightsTask(const float* src_plane, const float* dd_plane, int64_t h, int64_t w, int kh,
                 int ic0, float* out) {
  __m512 acc[3][8];
  Unroll<3>([&](auto k) { Unroll<8>([&](auto i) { acc[k][i] = _mm512_setzero_ps(); }); });
  const int64_t oh_lo = Max(0, 1 - kh), oh_hi = Min(h, h + 1 - kh);
  for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {
    const float* s = src_plane + (oh + kh - 1) * w * kV + ic0;
    const float* d = dd_plane + oh * w * kV;
    if (w == 1) {
      WeightsColumn<false, false>(s, d, 0, acc);
      continue;
    }
    WeightsColumn<true, false>(s, d, 0, acc);
    for (int64_t iw = 1; iw < w - 1; ++iw) WeightsColumn<true, true>(s, d, iw, acc);
    WeightsColumn<false, true>(s, d, w - 1, acc);
  }
  // out: [kw][16 ic][16 oc] of this (out block, in block, kh), already offset to row ic0.
  Unroll<3>([&](auto k) {
    Unroll<8>([&](auto i) {
      float* p = out + k * kTap + i * kV;
      _mm512_store_ps(p, _mm512_add_ps(_mm512_load_ps(p), acc[k][i]));
    });
  });
}

}  // namespace

bool Forward(const Conv3x3Geometry& g, const float* src, const float* packed, float* dst) {
  const bool pair = (g.o / kV) % 2 == 0;
  if (g.w > 0 && g.w % 16 == 0) {
    ForwardImpl<16, 1>(g, src, packed, dst);
  } else if (g.w == 12) {
    ForwardImpl<12, 1>(g, src, packed, dst);
  } else if (g.w == 8) {
    pair ? ForwardImpl<8, 2>(g, src, packed, dst) : ForwardImpl<8, 1>(g, src, packed, dst);
  } else if (g.w == 4) {
    pair ? ForwardImpl<4, 2>(g, src, packed, dst) : ForwardImpl<4, 1>(g, src, packed, dst);
  } else {
    return false;  // no kernel for this width: the caller reports it
  }
  return true;
}

int BackwardWeights(const Conv3x3Geometry& g, const float* src, const float* ddst,
                    float* scratch) {
  // scratch: one [O/16][C/16][3][3][16][16] buffer per thread; the caller sums them.
  const int64_t cbn = g.c / kV, obn = g.o / kV, plane = g.h * g.w * kV;
  const int64_t per_thread = g.o * g.c * 9;
  int team = 1;
#pragma omp parallel
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    if (t == 0) team = nt;
    float* buf = scratch + t * per_thread;
    Zero(buf, per_thread);
    const int64_t n_lo = g.n * t / nt, n_hi = g.n * (t + 1) / nt;
    for (int64_t n = n_lo; n < n_hi; ++n)
      for (int64_t ob = 0; ob < obn; ++ob)
        for (int64_t cb = 0; cb < cbn; ++cb)
          for (int kh = 0; kh < 3; ++kh)
            for (int ic0 = 0; ic0 < kV; ic0 += 8)
              WeightsTask(src + (n * cbn + cb) * plane, ddst + (n * obn + ob) * plane, g.h, g.w,
                          kh, ic0, buf + (ob * cbn + cb) * kBlock + kh * 3 * kTap + ic0 * kV);
  }
  return team;
}

}  // namespace resdist::cpu::avx512
