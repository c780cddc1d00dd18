// AVX-512 kernels behind winograd.h. This file alone is compiled for AVX-512 (F, VL, BW, DQ)
// and FMA; winograd.cc checks the CPU before calling anything here. Everything but the entry
// point has internal linkage and no std:: function is instantiated here (see
// conv3x3_kernels.h for why).
//
// F(R x R, 3 x 3) (Lavin & Gray 2016), R = 2 or 4: Y = A^T [ (G g G^T) . (B^T d B) ] A. The
// (R + 2)^2 input tile starting at (R ty - 1, R tx - 1) gives the R x R output tile at
// (R ty, R tx). The 1-D transforms below are B^T and A^T of the two variants, written as
// shared sub-expressions.
#include <immintrin.h>
#include <omp.h>

#include <cstdint>
#include <utility>

#include "worker/backend/cpu/avx512_util.h"
#include "worker/backend/cpu/winograd_kernels.h"

namespace resdist::cpu::wino_avx512 {
namespace {

constexpr int64_t kV = 16;  // floats per vector = channel block

inline __m512 Add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
inline __m512 Sub(__m512 a, __m512 b) { return _mm512_sub_ps(a, b); }
inline __m512 MulAdd(float k, __m512 a, __m512 b) {  // k a + b
  return _mm512_fmadd_ps(_mm512_set1_ps(k), a, b);
}

// x <- B^T x for one line of R + 2 values.
template <int R>
[[gnu::always_inline]] inline void InputLine(__m512* x) {
  if constexpr (R == 2) {
    const __m512 r0 = Sub(x[0], x[2]), r1 = Add(x[1], x[2]), r2 = Sub(x[2], x[1]),
                 r3 = Sub(x[1], x[3]);
    x[0] = r0, x[1] = r1, x[2] = r2, x[3] = r3;
  } else {
    const __m512 a = MulAdd(-4.f, x[2], x[4]);             // x4 - 4 x2
    const __m512 b = MulAdd(-4.f, x[1], x[3]);             // x3 - 4 x1
    const __m512 c = Sub(x[4], x[2]);                      // x4 - x2
    const __m512 e = _mm512_mul_ps(_mm512_set1_ps(2.f), Sub(x[3], x[1]));
    const __m512 r0 = MulAdd(4.f, x[0], MulAdd(-5.f, x[2], x[4]));
    const __m512 r5 = MulAdd(4.f, x[1], MulAdd(-5.f, x[3], x[5]));
    x[0] = r0, x[1] = Add(a, b), x[2] = Sub(a, b), x[3] = Add(c, e), x[4] = Sub(c, e), x[5] = r5;
  }
}

// y[0..R) <- A^T x for one line of R + 2 values.
template <int R>
[[gnu::always_inline]] inline void OutputLine(const __m512* x, __m512* y) {
  if constexpr (R == 2) {
    y[0] = Add(Add(x[0], x[1]), x[2]);
    y[1] = Sub(Sub(x[1], x[2]), x[3]);
  } else {
    const __m512 p = Add(x[1], x[2]), q = Sub(x[1], x[2]), s = Add(x[3], x[4]),
                 t = Sub(x[3], x[4]);
    y[0] = Add(Add(x[0], p), s);
    y[1] = MulAdd(2.f, t, q);
    y[2] = MulAdd(4.f, s, p);
    y[3] = Add(MulAdd(8.f, t, q), x[5]);
  }
}

// Transforms the input tile at (y0, x0) of one channel block (`plane` is [H][W][16]) into
// v[point * point_stride], zero outside the image.
template <int R>
void InputTile(const float* plane, int64_t h, int64_t w, int64_t y0, int64_t x0, float* v,
               int64_t point_stride) {
  constexpr int T = R + 2;
  __m512 d[T][T];
  if (y0 >= 0 && y0 + T <= h && x0 >= 0 && x0 + T <= w) {
    Unroll<T>([&](auto i) {
      Unroll<T>([&](auto j) { d[i][j] = _mm512_load_ps(plane + ((y0 + i) * w + x0 + j) * kV); });
    });
  } else {
    Unroll<T>([&](auto i) {
      Unroll<T>([&](auto j) {
        const int64_t y = y0 + i, x = x0 + j;
        d[i][j] = (y >= 0 && y < h && x >= 0 && x < w) ? _mm512_load_ps(plane + (y * w + x) * kV)
                                                       : _mm512_setzero_ps();
      });
    });
  }
  Unroll<T>([&](auto j) {
    __m512 col[T];
    Unroll<T>([&](auto i) { col[i] = d[i][j]; });
    InputLine<R>(col);
    Unroll<T>([&](auto i) { d[i][j] = col[i]; });
  });
  Unroll<T>([&](auto i) {
    InputLine<R>(d[i]);
    Unroll<T>([&](auto j) { _mm512_store_ps(v + (i * T + j) * point_stride, d[i][j]); });
  });
}

// Transforms the products m[point * point_stride] of one tile and output block into the
// R x R output tile at (y0, x0) of `plane` ([H][W][16]), clipped to the image.
template <int R>
void OutputTile(const float* m, int64_t point_stride, float* plane, int64_t h, int64_t w,
                int64_t y0, int64_t x0) {
  constexpr int T = R + 2;
  __m512 s[R][T];
  Unroll<T>([&](auto j) {
    __m512 col[T], out[R];
    Unroll<T>([&](auto i) { col[i] = _mm512_load_ps(m + (i * T + j) * point_stride); });
    OutputLine<R>(col, out);
    Unroll<R>([&](auto a) { s[a][j] = out[a]; });
  });
  const bool whole = y0 + R <= h && x0 + R <= w;
  Unroll<R>([&](auto a) {
    __m512 out[R];
    OutputLine<R>(s[a], out);
    const int64_t y = y0 + a;
    Unroll<R>([&](auto b) {
      if (whole || (y < h && x0 + b < w)) _mm512_store_ps(plane + (y * w + x0 + b) * kV, out[b]);
    });
  });
}

// For one transform point: m[ob][t][16 out] = sum over (cb, 16 in) of v[cb][t][in] * u[ob][cb]
// [in][out], for the kTiles tiles, OB output blocks at a time and 8 tiles per register block
// (each broadcast input value feeds OB FMAs).
template <int OB>
void PointProduct(const float* v, const float* u, float* m, int64_t cbn, int64_t obn) {
  for (int64_t ob0 = 0; ob0 < obn; ob0 += OB)
    for (int64_t t0 = 0; t0 < kTiles; t0 += 8) {
      __m512 acc[OB][8];
      Unroll<OB>([&](auto ob) { Unroll<8>([&](auto t) { acc[ob][t] = _mm512_setzero_ps(); }); });
      for (int64_t cb = 0; cb < cbn; ++cb) {
        const float* vb = v + (cb * kTiles + t0) * kV;
        const float* ub = u + (ob0 * cbn + cb) * kV * kV;
        for (int ic = 0; ic < kV; ++ic) {
          __m512 uv[OB];
          Unroll<OB>([&](auto ob) { uv[ob] = _mm512_load_ps(ub + ob * cbn * kV * kV + ic * kV); });
          Unroll<8>([&](auto t) {
            const __m512 b = _mm512_set1_ps(vb[t * kV + ic]);
            Unroll<OB>([&](auto ob) { acc[ob][t] = _mm512_fmadd_ps(b, uv[ob], acc[ob][t]); });
          });
        }
      }
      Unroll<OB>([&](auto ob) {
        Unroll<8>([&](auto t) {
          _mm512_store_ps(m + ((ob0 + ob) * kTiles + t0 + t) * kV, acc[ob][t]);
        });
      });
    }
}

template <int R>
void ForwardImpl(const Conv3x3Geometry& g, const float* src, const float* u, float* dst,
                 float* scratch) {
  constexpr int P = (R + 2) * (R + 2);  // transform points
  const int64_t cbn = g.c / kV, obn = g.o / kV, plane = g.h * g.w * kV;
  const int64_t tx_n = (g.w + R - 1) / R, per_image = ((g.h + R - 1) / R) * tx_n;
  // Tiles are numbered across the whole batch so small images still fill a block.
  const int64_t tiles = g.n * per_image, blocks = (tiles + kTiles - 1) / kTiles;
  // One spare vector per point: a power-of-two point stride would map the (R + 2)^2 vectors of
  // a tile onto a few L1 sets and evict each other.
  const int64_t v_point = cbn * kTiles * kV + kV, m_point = obn * kTiles * kV + kV;
  const int64_t per_thread = ScratchPerThread(g);
  const bool pairs = obn % 2 == 0;
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    float* v = scratch + omp_get_thread_num() * per_thread;
    float* m = v + P * v_point;
    const int64_t t_lo = blk * kTiles, count = Min(kTiles, tiles - t_lo);
    int64_t img[kTiles], ty[kTiles], tx[kTiles];  // without a division per tile
    {
      int64_t n = t_lo / per_image, rem = t_lo % per_image, y = rem / tx_n, x = rem % tx_n;
      for (int64_t t = 0; t < count; ++t) {
        img[t] = n, ty[t] = y, tx[t] = x;
        if (++x == tx_n) {
          x = 0;
          if (++y * tx_n == per_image) y = 0, ++n;
        }
      }
    }
    for (int64_t cb = 0; cb < cbn; ++cb)
      for (int64_t t = 0; t < kTiles; ++t) {
        float* vt = v + (cb * kTiles + t) * kV;
        if (t < count) {
          InputTile<R>(src + (img[t] * cbn + cb) * plane, g.h, g.w, ty[t] * R - 1, tx[t] * R - 1,
                       vt, v_point);
        } else {  // a partial last block: unused tiles hold zeros, never garbage
          for (int e = 0; e < P; ++e)
            for (int64_t i = 0; i < kV; ++i) vt[e * v_point + i] = 0.f;
        }
      }
    for (int e = 0; e < P; ++e) {
      const float* ue = u + e * obn * cbn * kV * kV;
      if (pairs)
        PointProduct<2>(v + e * v_point, ue, m + e * m_point, cbn, obn);
      else
        PointProduct<1>(v + e * v_point, ue, m + e * m_point, cbn, obn);
    }
    for (int64_t ob = 0; ob < obn; ++ob)
      for (int64_t t = 0; t < count; ++t)
        OutputTile<R>(m + (ob * kTiles + t) * kV, m_point, dst + (img[t] * obn + ob) * plane,
                      g.h, g.w, ty[t] * R, tx[t] * R);
  }
}

}  // namespace

void Forward(const Conv3x3Geometry& g, int tile, const float* src, const float* u, float* dst,
             float* scratch) {
  if (tile == 4) return ForwardImpl<4>(g, src, u, dst, scratch);
  ForwardImpl<2>(g, src, u, dst, scratch);
}

}  // namespace resdist::cpu::wino_avx512
