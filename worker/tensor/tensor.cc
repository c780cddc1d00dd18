// Tensor storage: aligned allocation with huge-page advice for large buffers (first-touch page
// faults cost ~12 µs per 4 KiB page on our VMs, see PLATFORM.md).
#include "worker/tensor/tensor.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <new>

namespace resdist {

MemDesc PlainDesc(const Dims& dims) {
  using tag = dnnl::memory::format_tag;
  static constexpr tag kTags[] = {tag::undef, tag::a, tag::ab, tag::abc, tag::abcd, tag::abcde};
  if (dims.empty() || dims.size() > 5) return MemDesc();
  return MemDesc(dnnl::memory::dims(dims.begin(), dims.end()), dnnl::memory::data_type::f32,
                 kTags[dims.size()]);
}

void Tensor::Free::operator()(float* p) const { std::free(p); }

void Tensor::resize(const MemDesc& md) {
  md_ = md;
  const size_t need = md.get_size();
  if (need <= capacity_) return;
  constexpr size_t kHuge = 2u << 20;
  const size_t align = need >= kHuge ? kHuge : 64;
  const size_t rounded = (need + align - 1) / align * align;
  void* p = std::aligned_alloc(align, rounded);
  if (p == nullptr) throw std::bad_alloc();
  if (align == kHuge) madvise(p, rounded, MADV_HUGEPAGE);
  buf_.reset(static_cast<float*>(p));
  capacity_ = rounded;
}

Dims Tensor::dims() const {
  return Dims(md_.data.dims, md_.data.dims + md_.data.ndims);
}

int64_t Tensor::numel() const {
  if (md_.data.ndims == 0) return 0;
  int64_t n = 1;
  for (int i = 0; i < md_.data.ndims; ++i) n *= md_.data.dims[i];
  return n;
}

void Tensor::zero() {
  if (bytes()) std::memset(buf_.get(), 0, bytes());
}

void Tensor::fill(float v) {
  float* p = buf_.get();
  for (int64_t i = 0, n = physical_size(); i < n; ++i) p[i] = v;
}

void Tensor::copy_from(const Tensor& other) {
  resize(other.desc());
  if (bytes()) std::memcpy(buf_.get(), other.data(), bytes());
}

}  // namespace resdist
