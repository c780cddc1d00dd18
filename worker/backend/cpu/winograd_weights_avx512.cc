// AVX-512 kernels behind winograd_weights.h. This file alone is compiled for AVX-512 (F, VL,
// BW, DQ) and FMA; winograd_weights.cc checks the CPU before calling anything here. Everything
// but the entry point has internal linkage and no std:: function is instantiated here (see
// conv3x3_kernels.h for why).
//
// Each thread walks its share of the batch's 2x2 gradient tiles in blocks of
// Layout::tile_block tiles. For a block it writes the input transforms V and the raw gradient
// tiles into its v / y panels (L2-resident; never whole transformed tensors, which would cost
// page faults and memory bandwidth), then runs the 16 per-element GEMMs from those panels into
// its partial M, which stays in L2 across blocks.
//
// Costs per tile and 16 channels on Zen 4: the GEMMs are FMA-bound (256 FMAs for c = o = 16);
// the transforms are bound by their 64-byte stores (about one per two cycles). Hence the
// gradient tiles are stored untransformed (4 vectors instead of 16) and the GEMM forms
// Y = A g A^T itself from spare load and add slots.
#include <immintrin.h>
#include <omp.h>

#include <cstdint>
#include <utility>

#include "worker/backend/cpu/avx512_util.h"
#include "worker/backend/cpu/winograd_weights.h"

namespace resdist::cpu::winograd_internal {
namespace {

constexpr int kV = 16;  // floats per vector = channel block
constexpr int kE = 16;  // transformed elements per tile (4x4)
constexpr int64_t kTileStride = Layout::kTileStride;
constexpr int64_t kGradStride = Layout::kGradStride;

// Position (image, tile row, tile column) in the flat tile order.
struct TileCursor {
  TileCursor(int64_t flat, int64_t tiles_w, int64_t tiles_h)
      : n(flat / (tiles_w * tiles_h)),
        ty(flat % (tiles_w * tiles_h) / tiles_w),
        tx(flat % tiles_w),
        tiles_w(tiles_w),
        tiles_h(tiles_h) {}
  void Advance(int64_t k) {
    tx += k;
    while (tx >= tiles_w) {
      tx -= tiles_w;
      if (++ty == tiles_h) {
        ty = 0;
        ++n;
      }
    }
  }
  int64_t n, ty, tx;
  int64_t tiles_w, tiles_h;
};

// Software prefetch of the input and gradient lines of the tiles a few positions ahead of the
// transforms, tile by tile (only the lines a tile reads first: not already read by its left and
// upper neighbours). The transforms are short loops with many loads each, so the out-of-order
// window alone holds too few cache misses to stream the batch from DRAM at full speed (measured:
// the transforms of a 16 MiB batch ran about 1.7x slower without it; 3 to 12 tiles ahead all
// did equally well).
class Prefetcher {
 public:
  Prefetcher(const Conv3x3Geometry& g, const float* src, const float* ddst, int64_t from,
             int64_t to, int64_t tiles_w, int64_t tiles_h)
      : g_(g), src_(src), ddst_(ddst), left_(to - from), at_(from, tiles_w, tiles_h) {}

  // Prefetches the next tile of the range, if any.
  void Step() {
    if (left_ <= 0) return;
    --left_;
    const int64_t cbn = g_.c / kV, obn = g_.o / kV, plane = g_.h * g_.w * kV;
    const int64_t r0 = 2 * at_.ty, c0 = 2 * at_.tx;
    const int64_t r_lo = at_.ty == 0 ? 0 : r0 + 1, r_hi = Min(r0 + 2, g_.h - 1);
    const int64_t c_lo = at_.tx == 0 ? 0 : c0 + 1, c_hi = Min(c0 + 2, g_.w - 1);
    const float* s = src_ + at_.n * cbn * plane;
    for (int64_t cb = 0; cb < cbn; ++cb)
      for (int64_t r = r_lo; r <= r_hi; ++r)
        for (int64_t c = c_lo; c <= c_hi; ++c) Touch(s + cb * plane + (r * g_.w + c) * kV);
    const float* d = ddst_ + at_.n * obn * plane;
    const int64_t gr_hi = Min(r0 + 1, g_.h - 1), gc_hi = Min(c0 + 1, g_.w - 1);
    for (int64_t ob = 0; ob < obn; ++ob)
      for (int64_t r = r0; r <= gr_hi; ++r)
        for (int64_t c = c0; c <= gc_hi; ++c) Touch(d + ob * plane + (r * g_.w + c) * kV);
    at_.Advance(1);
  }

 private:
  static void Touch(const float* p) {
    _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);
  }

  const Conv3x3Geometry& g_;
  const float* src_;
  const float* ddst_;
  int64_t left_;
  TileCursor at_;
};

// Tiles between a tile's prefetch and its transform.
constexpr int64_t kPrefetchAhead = 4;

// Rows of one [h][w][16] plane: pointers clamped into the image and masks that zero the rows
// outside it (a zero mask loads nothing), so padding costs no branches.
template <int R>
struct Rows {
  Rows(const float* plane, int64_t h, int64_t w, int64_t r0) {
    Unroll<R>([&](auto i) {
      const int64_t r = r0 + i;
      const bool in = r >= 0 && r < h;
      row[i] = plane + (in ? r : 0) * w * kV;
      mask[i] = in ? 0xFFFF : 0;
    });
  }
  const float* row[R];
  __mmask16 mask[R];
};

// The input transforms V = B^T d B of `count` consecutive tiles of tile row ty, from tile
// column tx0, for one channel block; tile k's element e goes to out[k * kTileStride + 16 e].
// B^T runs down each input column once (u = B^T d) and the tiles, which overlap by two
// columns, share those column transforms.
void InputRun(const float* plane, int64_t h, int64_t w, int64_t ty, int64_t tx0,
              int64_t count, float* out, Prefetcher* pf) {
  const Rows<4> rows(plane, h, w, 2 * ty - 1);
  auto column = [&](int64_t c, __m512 (&u)[4]) __attribute__((always_inline)) {
    if (c < 0 || c >= w) {
      Unroll<4>([&](auto a) { u[a] = _mm512_setzero_ps(); });
      return;
    }
    __m512 d[4];
    Unroll<4>([&](auto i) { d[i] = _mm512_maskz_loadu_ps(rows.mask[i], rows.row[i] + c * kV); });
    u[0] = _mm512_sub_ps(d[0], d[2]);
    u[1] = _mm512_add_ps(d[1], d[2]);
    u[2] = _mm512_sub_ps(d[2], d[1]);
    u[3] = _mm512_sub_ps(d[3], d[1]);
  };
  // Tile tx uses input columns 2tx-1 .. 2tx+2: a, b from the previous tile, then c, d.
  __m512 ua[4], ub[4];
  column(2 * tx0 - 1, ua);
  column(2 * tx0, ub);
  for (int64_t k = 0; k < count; ++k) {
    if (pf != nullptr) pf->Step();
    const int64_t c1 = 2 * (tx0 + k) + 1;
    __m512 uc[4], ud[4];
    column(c1, uc);
    column(c1 + 1, ud);
    float* o = out + k * kTileStride;
    Unroll<4>([&](auto a) {
      _mm512_store_ps(o + (4 * a + 0) * kV, _mm512_sub_ps(ua[a], uc[a]));
      _mm512_store_ps(o + (4 * a + 1) * kV, _mm512_add_ps(ub[a], uc[a]));
      _mm512_store_ps(o + (4 * a + 2) * kV, _mm512_sub_ps(uc[a], ub[a]));
      _mm512_store_ps(o + (4 * a + 3) * kV, _mm512_sub_ps(ud[a], ub[a]));
      ua[a] = uc[a];
      ub[a] = ud[a];
    });
  }
}

// The 2x2 gradient tiles of the same tiles, for one output channel block, copied as they are
// (zero outside the image) to out[k * kGradStride + 16 (2 i + j)]. Their transform
// Y = A g A^T is left to the GEMMs, which have load and add slots to spare (see GemmBlock):
// that stores 4 vectors per tile instead of 16.
void GradRun(const float* plane, int64_t h, int64_t w, int64_t ty, int64_t tx0, int64_t count,
             float* out) {
  const Rows<2> rows(plane, h, w, 2 * ty);
  for (int64_t k = 0; k < count; ++k) {
    const int64_t c0 = 2 * (tx0 + k);
    float* o = out + k * kGradStride;
    Unroll<2>([&](auto j) {
      __m512 g0 = _mm512_setzero_ps(), g1 = _mm512_setzero_ps();
      if (c0 + j < w) {
        g0 = _mm512_maskz_loadu_ps(rows.mask[0], rows.row[0] + (c0 + j) * kV);
        g1 = _mm512_maskz_loadu_ps(rows.mask[1], rows.row[1] + (c0 + j) * kV);
      }
      _mm512_store_ps(o + j * kV, g0);
      _mm512_store_ps(o + (2 + j) * kV, g1);
    });
  }
}

// Element E = 4a + b of Y = A g A^T from a gradient tile g (4 vectors, row-major):
// Y[a][b] = sum over i, j of A[a][i] A[b][j] g[i][j], with A = [1 0; 1 1; 1 -1; 0 1].
template <int E>
[[gnu::always_inline]] inline __m512 GradElement(const float* g) {
  constexpr int kA[4][2] = {{1, 0}, {1, 1}, {1, -1}, {0, 1}};
  constexpr int a = E / 4, b = E % 4;
  __m512 y = _mm512_setzero_ps();
  bool first = true;
  Unroll<4>([&](auto ij) {
    constexpr int i = decltype(ij)::value / 2, j = decltype(ij)::value % 2;
    constexpr int coef = kA[a][i] * kA[b][j];
    if constexpr (coef != 0) {
      const __m512 x = _mm512_load_ps(g + (2 * i + j) * kV);
      if (first) {
        y = coef > 0 ? x : _mm512_sub_ps(_mm512_setzero_ps(), x);
        first = false;
      } else {
        y = coef > 0 ? _mm512_add_ps(y, x) : _mm512_sub_ps(y, x);
      }
    }
  });
  return y;
}

// m[0 .. IR)[0 .. 16*OR) += sum over tn tiles of V_E[t][ic] * Y_E[t][oc], for element E:
// v points at the element's first vector in a tile of the input panel (tiles kTileStride
// apart), y at the first gradient tile (tiles kGradStride apart, output blocks y_block apart);
// m rows are o apart. Each broadcast input value feeds OR FMAs and each gradient vector IR.
// Y_E is formed here from the raw gradient tile: up to 4 loads and 3 adds per 16 FMAs, which
// the FMA-bound loop absorbs.
template <int IR, int OR, int E>
[[gnu::always_inline]] inline void GemmBlock(const float* v, const float* y, int64_t y_block,
                                             float* m, int64_t o, int64_t tn) {
  __m512 acc[IR][OR];
  Unroll<IR>([&](auto i) {
    Unroll<OR>([&](auto j) { acc[i][j] = _mm512_load_ps(m + i * o + j * kV); });
  });
  for (int64_t t = 0; t < tn; ++t) {
    const float* vt = v + t * kTileStride;
    const float* yt = y + t * kGradStride;
    __m512 yv[OR];
    Unroll<OR>([&](auto j) { yv[j] = GradElement<E>(yt + j * y_block); });
    Unroll<IR>([&](auto i) {
      const __m512 b = _mm512_set1_ps(vt[i]);
      Unroll<OR>([&](auto j) { acc[i][j] = _mm512_fmadd_ps(b, yv[j], acc[i][j]); });
    });
  }
  Unroll<IR>([&](auto i) {
    Unroll<OR>([&](auto j) { _mm512_store_ps(m + i * o + j * kV, acc[i][j]); });
  });
}

// Element E's GEMM over a block of tn tiles: pairs of output blocks with 8 input channels at a
// time (16 accumulators); a lone last output block with 16.
template <int E>
void GemmElement(const Conv3x3Geometry& g, const float* v, int64_t v_panel, const float* y,
                 int64_t y_panel, float* m, int64_t tn) {
  const int64_t cbn = g.c / kV, obn = g.o / kV;
  const float* ve = v + E * kV;
  float* me = m + E * g.c * g.o;
  int64_t ob = 0;
  for (; ob + 2 <= obn; ob += 2)
    for (int64_t cb = 0; cb < cbn; ++cb)
      for (int ic0 = 0; ic0 < kV; ic0 += 8)
        GemmBlock<8, 2, E>(ve + cb * v_panel + ic0, y + ob * y_panel, y_panel,
                           me + (cb * kV + ic0) * g.o + ob * kV, g.o, tn);
  for (; ob < obn; ++ob)
    for (int64_t cb = 0; cb < cbn; ++cb)
      GemmBlock<16, 1, E>(ve + cb * v_panel, y + ob * y_panel, y_panel,
                          me + cb * kV * g.o + ob * kV, g.o, tn);
}

// The 16 elements' GEMMs over one block.
void GemmAllElements(const Conv3x3Geometry& g, const float* v, int64_t v_panel, const float* y,
                     int64_t y_panel, float* m, int64_t tn) {
  Unroll<kE>([&](auto e) { GemmElement<decltype(e)::value>(g, v, v_panel, y, y_panel, m, tn); });
}

}  // namespace

int Accumulate(const Conv3x3Geometry& g, const float* src, const float* ddst, float* scratch) {
  const Layout l = MakeLayout(g);
  const int64_t cbn = g.c / kV, obn = g.o / kV, plane = g.h * g.w * kV;
  const int64_t tiles_h = (g.h + 1) / 2, tiles_w = (g.w + 1) / 2;
  const int64_t total = g.n * tiles_h * tiles_w, block = l.tile_block;
  const int64_t v_panel = block * kTileStride;  // floats per input channel block of v
  const int64_t y_panel = block * kGradStride;  // floats per output channel block of y
  int team = 1;
#pragma omp parallel
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    if (t == 0) team = nt;
    float* m = scratch + t * l.per_thread;
    float* v = m + l.m;
    float* y = v + l.v;
    for (int64_t i = 0, n = kE * g.c * g.o; i < n; ++i) m[i] = 0.f;
    // A fixed split of the flat (image, tile row, tile column) range, so the sums' order only
    // depends on the team size; it also balances a batch smaller than the team.
    const int64_t lo = total * t / nt, hi = total * (t + 1) / nt;
    Prefetcher pf(g, src, ddst, Min(lo + kPrefetchAhead, hi), hi, tiles_w, tiles_h);
    for (int64_t b0 = lo; b0 < hi; b0 += block) {
      const int64_t tn = Min(block, hi - b0);
      // The block's tiles, as runs of consecutive tiles in one tile row.
      TileCursor at(b0, tiles_w, tiles_h);
      for (int64_t i = 0; i < tn;) {
        const int64_t run = Min(tiles_w - at.tx, tn - i);
        const float* s = src + at.n * cbn * plane;
        for (int64_t cb = 0; cb < cbn; ++cb)
          InputRun(s + cb * plane, g.h, g.w, at.ty, at.tx, run, v + i * kTileStride + cb * v_panel,
                   cb == 0 ? &pf : nullptr);
        const float* d = ddst + at.n * obn * plane;
        for (int64_t ob = 0; ob < obn; ++ob)
          GradRun(d + ob * plane, g.h, g.w, at.ty, at.tx, run,
                  y + i * kGradStride + ob * y_panel);
        i += run;
        at.Advance(run);
      }
      GemmAllElements(g, v, v_panel, y, y_panel, m, tn);
    }
  }
  return team;
}

}  // namespace resdist::cpu::winograd_internal
