// Gradient reducer implementation (see reducer.h for the design).
#include "worker/train/reducer.h"

#include <sys/mman.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>

namespace resdist {

GradientReducer::GradientReducer(Communicator* comm, std::vector<Parameter*> params,
                                 size_t bucket_bytes)
    : comm_(comm), params_(std::move(params)) {
  const size_t n = params_.size();
  param_offset_.assign(n, 0);
  param_bucket_.assign(n, -1);
  reported_.assign(n, 0);
  const size_t cap_floats = std::max<size_t>(1, bucket_bytes / sizeof(float));
  // Reverse registration order ~ the order backward produces gradients.
  size_t offset = 0;
  for (size_t k = 0; k < n; ++k) {
    const int i = static_cast<int>(n - 1 - k);
    const size_t count = static_cast<size_t>(params_[i]->value.numel());
    if (buckets_.empty() || (buckets_.back().count > 0 && buckets_.back().count + count > cap_floats)) {
      Bucket b;
      b.offset = offset;
      buckets_.push_back(b);
    }
    Bucket& b = buckets_.back();
    param_offset_[i] = offset;
    param_bucket_[i] = static_cast<int>(buckets_.size() - 1);
    b.params.push_back(i);
    b.count += count;
    offset += count;
    index_of_[params_[i]] = i;
  }
  total_ = offset;
  // One arena for every bucket: 2 MiB aligned so large models get transparent huge pages, and
  // touched now, not in the first step (first touch is expensive on these VMs).
  constexpr size_t kAlign = size_t{2} << 20;
  arena_bytes_ = std::max<size_t>(kAlign, (total_ * sizeof(float) + kAlign - 1) / kAlign * kAlign);
  arena_ = static_cast<float*>(std::aligned_alloc(kAlign, arena_bytes_));
  if (arena_ == nullptr) throw std::bad_alloc();
  madvise(arena_, arena_bytes_, MADV_HUGEPAGE);
  std::memset(arena_, 0, arena_bytes_);
  begin_step();
}

GradientReducer::~GradientReducer() {
  // An all-reduce may still be in flight if training stopped between begin_step and finish.
  if (last_ticket_ != 0) comm_->wait(last_ticket_);
  std::free(arena_);
}

void GradientReducer::begin_step() {
  for (Bucket& b : buckets_) {
    b.pending = static_cast<int>(b.params.size());
    b.launched = false;
  }
  std::fill(reported_.begin(), reported_.end(), 0);
  next_launch_ = 0;
}

void GradientReducer::copy_in(int i) {
  const Parameter& p = *params_[i];
  std::memcpy(arena_ + param_offset_[i], p.grad.data(), sizeof(float) * p.value.numel());
  reported_[i] = 1;
  --buckets_[param_bucket_[i]].pending;
}

void GradientReducer::grad_ready(const Parameter& p) {
  auto it = index_of_.find(&p);
  if (it == index_of_.end() || reported_[it->second]) return;  // not ours, or reported twice
  copy_in(it->second);
  launch_ready();
}

void GradientReducer::launch(Bucket& b) {
  if (!skip_allreduce_) last_ticket_ = comm_->allreduce_sum_async(arena_ + b.offset, b.count);
  b.launched = true;
}

void GradientReducer::launch_ready() {
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0)
    launch(buckets_[next_launch_++]);
}

double GradientReducer::finish(float scale) {
  const auto t0 = std::chrono::steady_clock::now();
  for (; next_launch_ < buckets_.size(); ++next_launch_) {
    Bucket& b = buckets_[next_launch_];
    for (int i : b.params)
      if (!reported_[i]) copy_in(i);
    launch(b);
  }
  if (last_ticket_ != 0) comm_->wait(last_ticket_);
  last_ticket_ = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    Parameter& p = *params_[i];
    const float* src = arena_ + param_offset_[i];
    float* dst = p.grad.data();
    const int64_t count = p.value.numel();
    for (int64_t k = 0; k < count; ++k) dst[k] = src[k] * scale;
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace resdist
