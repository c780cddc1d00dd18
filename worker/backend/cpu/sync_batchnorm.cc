// Synchronized batch norm on the CPU: batch statistics over the samples of all ranks. Forward
// all-reduces the per-channel sums (mean), then the sums of squared deviations (variance);
// backward all-reduces sum(dy) and sum(dy * xhat) and applies the batch-norm gradient formula
// with the global count. Not the per-rank batch norm (cpu_backend.cc, oneDNN), which is faster.
//
// Rationale. oneDNN's batch norm cannot take externally reduced statistics in training mode
// and hides its backward reductions, so the three passes are written by hand over the two
// layouts the network produces (plain NCHW and oneDNN's nChw8c/nChw16c blocked layouts, same
// index formula with a block of 1, 8 or 16 channels); any other layout is reordered to plain and
// back. Sums are accumulated in double, per thread over a fixed split of the batch and combined
// in thread order, so results are deterministic for a given thread count. The gradients of gamma
// and beta are this rank's local sums: the gradient reducer averages them like every other
// gradient, which gives exactly the gradient of the global mean loss.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "worker/backend/cpu/dnnl_check.h"
#include "worker/backend/ops.h"

namespace resdist {
namespace {

using dnnl::memory;

// Element (n, c, s) of an (N, C, S) view lives at ((n * cb_count + c / blk) * S + s) * blk + c % blk.
struct View {
  int64_t n = 0, c = 0, s = 0;  // batch, channels, spatial (H*W; 1 for (N, C))
  int64_t blk = 1;              // channel block: 1 (plain), 8 or 16
  int64_t cb() const { return (c + blk - 1) / blk; }
  int64_t padded_c() const { return cb() * blk; }
};

class CpuSyncBatchNorm final : public BatchNormOp {
 public:
  explicit CpuSyncBatchNorm(const BatchNormSpec& spec) : spec_(spec) {
    mean_.resize(Dims{spec.channels});
    var_.resize(Dims{spec.channels});
  }

  void forward(const Tensor& src_in, const Tensor& gamma, const Tensor& beta,
               Tensor& running_mean, Tensor& running_var, Tensor& dst, bool training) override {
    const Tensor& src = Supported(src_in) ? src_in : ToPlain(src_in, src_plain_);
    const View v = ViewOf(src);
    Tensor& out = (&src == &src_in) ? dst : dst_plain_;
    out.resize(src.desc());
    const int64_t c = v.c;
    if (training) {
      // Mean over all ranks. red_: [sums (C), count split as hi * 2^16 + lo (2)].
      red_.assign(c + 2, 0.f);
      ChannelSums(v, src.data(), nullptr, nullptr, red_.data());
      const int64_t local = v.n * v.s;
      red_[c] = static_cast<float>(local >> 16);
      red_[c + 1] = static_cast<float>(local & 0xffff);
      spec_.allreduce_sum(red_.data(), red_.size());
      count_ = static_cast<int64_t>(red_[c]) * 65536 + static_cast<int64_t>(red_[c + 1]);
      const double inv_count = 1.0 / static_cast<double>(std::max<int64_t>(1, count_));
      for (int64_t i = 0; i < c; ++i) mean_.data()[i] = static_cast<float>(red_[i] * inv_count);
      // Biased variance over all ranks, from squared deviations (numerically stable).
      red_.assign(c, 0.f);
      ChannelSums(v, src.data(), mean_.data(), nullptr, red_.data());
      spec_.allreduce_sum(red_.data(), c);
      for (int64_t i = 0; i < c; ++i) var_.data()[i] = static_cast<float>(red_[i] * inv_count);
      const float unbias = count_ > 1 ? static_cast<float>(count_) / (count_ - 1) : 1.f;
      const float m = spec_.momentum;
      for (int64_t i = 0; i < c; ++i) {
        running_mean.data()[i] = (1 - m) * running_mean.data()[i] + m * mean_.data()[i];
        running_var.data()[i] = (1 - m) * running_var.data()[i] + m * var_.data()[i] * unbias;
      }
      Normalize(v, src.data(), mean_.data(), var_.data(), gamma.data(), beta.data(), out.data());
    } else {
      Normalize(v, src.data(), running_mean.data(), running_var.data(), gamma.data(),
                beta.data(), out.data());
    }
    if (&out != &dst) FromPlain(out, src_in.desc(), dst);
  }

  void backward(const Tensor& src_in, const Tensor& ddst_in, const Tensor& gamma,
                const Tensor& beta, Tensor& dsrc, Tensor& dgamma, Tensor& dbeta) override {
    const Tensor& src = Supported(src_in) ? src_in : ToPlain(src_in, src_plain_);
    const View v = ViewOf(src);
    const Tensor& ddst = ddst_in.desc() == src.desc() ? ddst_in : Reorder(ddst_in, src.desc(), ddst_scratch_);
    const int64_t c = v.c;
    inv_std_.resize(c);
    for (int64_t i = 0; i < c; ++i) inv_std_[i] = 1.f / std::sqrt(var_.data()[i] + spec_.eps);
    // Local sum(dy) and sum(dy * xhat), dy masked by the fused ReLU.
    red_.assign(2 * c, 0.f);
    ChannelSums(v, ddst.data(), nullptr, &src, red_.data(), gamma.data(), beta.data());
    dgamma.resize(Dims{c});
    dbeta.resize(Dims{c});
    for (int64_t i = 0; i < c; ++i) {
      dbeta.data()[i] = red_[i];
      dgamma.data()[i] = red_[c + i];
    }
    spec_.allreduce_sum(red_.data(), red_.size());
    Tensor& out = (&src == &src_in) ? dsrc : dsrc_plain_;
    out.resize(src.desc());
    InputGrad(v, src.data(), ddst.data(), gamma.data(), beta.data(), red_.data(),
              red_.data() + c, out.data());
    if (&out != &dsrc) FromPlain(out, src_in.desc(), dsrc);
  }

  const Tensor& saved_mean() const override { return mean_; }
  const Tensor& saved_var() const override { return var_; }

 private:
  // Plain (N, C[, H, W]) or nChw8c / nChw16c.
  static bool Supported(const Tensor& t) {
    if (t.ndims() != 2 && t.ndims() != 4) return false;
    if (t.desc() == PlainDesc(t.dims())) return true;
    if (t.ndims() != 4) return false;
    const Dims dims = t.dims();
    const memory::dims d(dims.begin(), dims.end());
    return t.desc() == MemDesc(d, memory::data_type::f32, memory::format_tag::nChw16c) ||
           t.desc() == MemDesc(d, memory::data_type::f32, memory::format_tag::nChw8c);
  }

  static View ViewOf(const Tensor& t) {
    View v;
    v.n = t.dim(0);
    v.c = t.dim(1);
    v.s = t.ndims() == 4 ? t.dim(2) * t.dim(3) : 1;
    if (!(t.desc() == PlainDesc(t.dims()))) {
      const auto& blocking = t.desc().data.format_desc.blocking;
      v.blk = blocking.inner_nblks == 1 ? blocking.inner_blks[0] : 1;
    }
    return v;
  }

  const Tensor& Reorder(const Tensor& src, const MemDesc& md, Tensor& dst) {
    dst.resize(md);
    auto s = src.mem(eng_);
    auto d = dst.mem(eng_);
    DNNL_TRY(dnnl::reorder(s, d).execute(strm_, s, d));
    strm_.wait();
    return dst;
  }
  const Tensor& ToPlain(const Tensor& src, Tensor& scratch) {
    return Reorder(src, PlainDesc(src.dims()), scratch);
  }
  void FromPlain(const Tensor& plain, const MemDesc& md, Tensor& dst) { Reorder(plain, md, dst); }

  // Per-channel sums of x (centered == nullptr), of (x - centered)^2, or - with `bwd_src` - of
  // dy and dy * xhat (out[0, C) and out[C, 2C)) where dy = x masked by the fused ReLU. Threads
  // take fixed slices of the batch; partial sums are combined in thread order.
  void ChannelSums(const View& v, const float* x, const float* centered, const Tensor* bwd_src,
                   float* out, const float* gamma = nullptr, const float* beta = nullptr) {
    const int64_t pc = v.padded_c();
    const int outs = bwd_src ? 2 : 1;
    const int threads = std::max(1, std::min<int>(omp_get_max_threads(), static_cast<int>(v.n)));
    partial_.assign(static_cast<size_t>(threads) * outs * pc, 0.0);
    std::vector<float> shift(pc, 0.f), scale(pc, 0.f), g(pc, 0.f), b(pc, 0.f);
    for (int64_t i = 0; i < v.c; ++i) {
      if (centered) shift[i] = centered[i];
      if (bwd_src) {
        shift[i] = mean_.data()[i];
        scale[i] = inv_std_[i];
        g[i] = gamma[i];
        b[i] = beta[i];
      }
    }
    const float* xs = bwd_src ? bwd_src->data() : nullptr;
    const bool relu = spec_.fuse_relu && bwd_src;
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num();
      double* acc = partial_.data() + static_cast<size_t>(t) * outs * pc;
      const int64_t n0 = v.n * t / threads, n1 = v.n * (t + 1) / threads;
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t cb = 0; cb < v.cb(); ++cb) {
          const int64_t base = (n * v.cb() + cb) * v.s * v.blk;
          for (int64_t s = 0; s < v.s; ++s)
            for (int64_t j = 0; j < v.blk; ++j) {
              const int64_t ch = cb * v.blk + j;
              const int64_t k = base + s * v.blk + j;
              if (bwd_src) {
                const float xhat = (xs[k] - shift[ch]) * scale[ch];
                float dy = x[k];
                if (relu && xhat * g[ch] + b[ch] <= 0.f) dy = 0.f;
                acc[ch] += dy;
                acc[pc + ch] += static_cast<double>(dy) * xhat;
              } else if (centered) {
                const double d = x[k] - shift[ch];
                acc[ch] += d * d;
              } else {
                acc[ch] += x[k];
              }
            }
        }
    }
    for (int o = 0; o < outs; ++o)
      for (int64_t i = 0; i < v.c; ++i) {
        double sum = 0;
        for (int t = 0; t < threads; ++t) sum += partial_[(static_cast<size_t>(t) * outs + o) * pc + i];
        out[o * v.c + i] = static_cast<float>(sum);
      }
  }

  void Normalize(const View& v, const float* x, const float* mean, const float* var,
                 const float* gamma, const float* beta, float* y) {
    const int64_t pc = v.padded_c();
    std::vector<float> a(pc, 0.f), b(pc, 0.f);  // y = a * x + b
    for (int64_t i = 0; i < v.c; ++i) {
      const float inv = 1.f / std::sqrt(var[i] + spec_.eps);
      a[i] = gamma[i] * inv;
      b[i] = beta[i] - mean[i] * gamma[i] * inv;
    }
    const bool relu = spec_.fuse_relu;
#pragma omp parallel for collapse(2)
    for (int64_t n = 0; n < v.n; ++n)
      for (int64_t cb = 0; cb < v.cb(); ++cb) {
        const int64_t base = (n * v.cb() + cb) * v.s * v.blk;
        for (int64_t s = 0; s < v.s; ++s)
          for (int64_t j = 0; j < v.blk; ++j) {
            const int64_t ch = cb * v.blk + j, k = base + s * v.blk + j;
            float r = a[ch] * x[k] + b[ch];
            if (relu && r < 0.f) r = 0.f;
            y[k] = ch < v.c ? r : 0.f;
          }
      }
  }

  // dx = gamma * inv_std * (dy - sum_dy / M - xhat * sum_dy_xhat / M), with global sums.
  void InputGrad(const View& v, const float* x, const float* dy_in, const float* gamma,
                 const float* beta, const float* sum_dy, const float* sum_dy_xhat, float* dx) {
    const int64_t pc = v.padded_c();
    const float inv_m = 1.f / static_cast<float>(std::max<int64_t>(1, count_));
    std::vector<float> mean(pc, 0.f), inv(pc, 0.f), g(pc, 0.f), b(pc, 0.f), mdy(pc, 0.f),
        mdyx(pc, 0.f);
    for (int64_t i = 0; i < v.c; ++i) {
      mean[i] = mean_.data()[i];
      inv[i] = inv_std_[i];
      g[i] = gamma[i];
      b[i] = beta[i];
      mdy[i] = sum_dy[i] * inv_m;
      mdyx[i] = sum_dy_xhat[i] * inv_m;
    }
    const bool relu = spec_.fuse_relu;
#pragma omp parallel for collapse(2)
    for (int64_t n = 0; n < v.n; ++n)
      for (int64_t cb = 0; cb < v.cb(); ++cb) {
        const int64_t base = (n * v.cb() + cb) * v.s * v.blk;
        for (int64_t s = 0; s < v.s; ++s)
          for (int64_t j = 0; j < v.blk; ++j) {
            const int64_t ch = cb * v.blk + j, k = base + s * v.blk + j;
            const float xhat = (x[k] - mean[ch]) * inv[ch];
            float dy = dy_in[k];
            if (relu && xhat * g[ch] + b[ch] <= 0.f) dy = 0.f;
            dx[k] = ch < v.c ? g[ch] * inv[ch] * (dy - mdy[ch] - xhat * mdyx[ch]) : 0.f;
          }
      }
  }

  BatchNormSpec spec_;
  dnnl::engine eng_{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm_{eng_};
  Tensor mean_, var_;            // (C) batch statistics of the last training forward (global)
  std::vector<float> inv_std_;   // (C)
  int64_t count_ = 0;            // samples x positions over all ranks in the last forward
  std::vector<float> red_;       // reduction buffer handed to allreduce_sum
  std::vector<double> partial_;  // (threads, outs, padded C) partial sums
  Tensor src_plain_, dst_plain_, dsrc_plain_, ddst_scratch_;  // layouts the loops do not handle
};

}  // namespace

std::unique_ptr<BatchNormOp> MakeCpuSyncBatchNorm(const BatchNormSpec& spec) {
  return std::make_unique<CpuSyncBatchNorm>(spec);
}

}  // namespace resdist
