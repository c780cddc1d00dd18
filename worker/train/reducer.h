// The gradient reducer: packs parameter gradients into flat buckets and all-reduces each bucket
// as soon as backward has produced all of its gradients, while backward continues. Not the
// communicator (worker/comm/), which moves the bytes, nor the optimizer, which runs after
// finish().
//
// Rationale. A static network produces its gradients in (roughly) reverse registration order on
// every rank, so buckets are cut once, at construction, walking the parameters from last to
// first up to a byte cap (comm.bucket_mb, like PyTorch DDP's bucket_cap_mb). Each bucket is a
// slice of one arena allocated and first-touched once (huge pages where the kernel allows), so
// the step loop never allocates. grad_ready() (wired to NnContext::on_grad_ready) copies a
// gradient into its slice; the bucket's all-reduce is handed to the communicator when its last
// gradient arrives. Buckets are launched strictly in index order, so every rank issues the same
// collectives in the same order even if its backward reported two gradients the other way round;
// no Horovod-style negotiation is needed. finish() launches whatever was not reported (a
// parameter that backward never reached), waits for all, and writes sum * scale back into each
// gradient: scale = 1 / world size averages over the global batch when per-rank batches are
// equal (the trainer guarantees that).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "worker/comm/communicator.h"
#include "worker/nn/module.h"

namespace resdist {

class GradientReducer {
 public:
  struct Bucket {
    size_t offset = 0;         // first float in the arena
    size_t count = 0;          // floats
    std::vector<int> params;   // indices into the parameter list, in fill order
    int pending = 0;           // gradients not yet reported this step
    bool launched = false;
  };

  // `params` in registration order; `bucket_bytes` caps a bucket (a single larger parameter gets
  // a bucket of its own).
  GradientReducer(Communicator* comm, std::vector<Parameter*> params, size_t bucket_bytes);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Benchmarks only: do everything except the collective (measures what overlap hides).
  void set_skip_allreduce(bool skip) { skip_allreduce_ = skip; }

  // Resets the per-step state; call before backward.
  void begin_step();
  // Called once per parameter per step, right after its gradient was written.
  void grad_ready(const Parameter& p);
  // Waits for every bucket and writes the reduced gradient * scale into each parameter's grad.
  // Returns the seconds spent blocked here (communication not hidden behind backward).
  double finish(float scale);

  const std::vector<Bucket>& buckets() const { return buckets_; }
  size_t total_floats() const { return total_; }

 private:
  void copy_in(int index);
  void launch_ready();
  void launch(Bucket& b);

  Communicator* comm_;
  std::vector<Parameter*> params_;
  std::vector<size_t> param_offset_;  // [param] first float in the arena
  std::vector<int> param_bucket_;     // [param] bucket index
  std::vector<uint8_t> reported_;     // [param] gradient copied in this step
  std::unordered_map<const Parameter*, int> index_of_;
  std::vector<Bucket> buckets_;  // in launch order (last layers first)
  size_t next_launch_ = 0;
  CommTicket last_ticket_ = 0;
  bool skip_allreduce_ = false;
  float* arena_ = nullptr;  // (total_) floats, 64-byte aligned
  size_t arena_bytes_ = 0;
  size_t total_ = 0;
};

}  // namespace resdist
