// Host tensor: dims, f32 data in a oneDNN memory format, 64-byte aligned storage that is
// allocated once and reused when the shape stays the same. Not a general ndarray.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"

namespace resdist {

using Dims = std::vector<int64_t>;
using MemDesc = dnnl::memory::desc;

// The plain (row-major, "abcd…") f32 descriptor for `dims`: OIHW for weights, NCHW for images.
MemDesc PlainDesc(const Dims& dims);

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(const MemDesc& md) { resize(md); }
  explicit Tensor(const Dims& dims) { resize(PlainDesc(dims)); }
  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;

  // Sets the layout; reallocates only when the new layout needs more bytes than the storage
  // holds, so a tensor reused for the same shape every step never touches the allocator.
  void resize(const MemDesc& md);
  void resize(const Dims& dims) { resize(PlainDesc(dims)); }

  bool empty() const { return bytes() == 0; }
  const MemDesc& desc() const { return md_; }
  Dims dims() const;
  int64_t dim(int i) const { return md_.data.dims[i]; }
  int ndims() const { return md_.data.ndims; }
  int64_t numel() const;            // logical elements (product of dims)
  size_t bytes() const { return md_.get_size(); }  // physical bytes, padding included
  int64_t physical_size() const { return static_cast<int64_t>(bytes() / sizeof(float)); }
  bool is_plain() const { return md_ == PlainDesc(dims()); }

  float* data() { return buf_.get(); }
  const float* data() const { return buf_.get(); }
  void zero();
  void fill(float v);  // only meaningful for plain layouts (padding would be filled too)
  // Copies `other`'s layout and values into this tensor.
  void copy_from(const Tensor& other);

  // A oneDNN memory object over this storage; cheap (no allocation of data).
  dnnl::memory mem(const dnnl::engine& eng) const {
    return dnnl::memory(md_, eng, const_cast<float*>(buf_.get()));
  }

 private:
  struct Free {
    void operator()(float* p) const;
  };
  MemDesc md_;
  std::unique_ptr<float[], Free> buf_;
  size_t capacity_ = 0;
};

}  // namespace resdist
