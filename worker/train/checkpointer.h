// Checkpoints of a training run: a snapshot of the model's parameters and buffers and the
// optimizer's momentum, taken at a step boundary into a host buffer allocated once, and written
// by a background thread (common/checkpoint.h: temp file, fsync, rename, directory fsync) while
// training continues; keep_last pruning; resume selection; restore into a Model + Sgd. Rank 0
// only. Not the triggers (every N steps / T seconds / epoch end / on demand / SIGTERM): the
// training loop decides when to call save_async.
//
// Rationale. The caller pays only for one memcpy of the state (≈1 MB for ResNet-20, ≈200 MB with
// momentum for ResNet-50); the HDF5 encoding, the checksum and the fsyncs run on the writer
// thread. There is one snapshot buffer, so a save requested while the previous one is still
// being written waits for it (busy() lets a periodic trigger defer instead). HDF5 is built
// thread-safe (one library-wide lock); the writer issues one H5Dwrite per tensor, so the data
// loader's reads interleave with a checkpoint write rather than waiting for all of it.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/checkpoint.h"
#include "common/log.h"
#include "common/status.h"
#include "worker/nn/model.h"
#include "worker/optim/sgd.h"

namespace resdist {

struct CheckpointerOptions {
  std::string dir;        // created if missing
  int64_t keep_last = 0;  // newest files kept after each write; 0 keeps all
  // Files never pruned (e.g. the checkpoint this run resumed from); see also protect().
  std::vector<std::string> protect;
  // Delete temporary files of crashed writers (".ckpt-*.tmp-*") in `dir` on creation. Safe when
  // this process is the only checkpoint writer of the directory (rank 0 of one job).
  bool remove_stale_temp_files = true;
  // Called on the writer thread after each successful write (e.g. to report the file to the
  // coordinator's checkpoint index). Must not call back into the Checkpointer.
  std::function<void(const std::string& path, const CheckpointMeta& meta)> on_written;
  CheckpointWriteOptions write;  // test hooks (TEST_on_stage runs on the writer thread)
};

class Checkpointer {
 public:
  // Allocates (and pre-faults) the snapshot buffer for `model`'s parameters and buffers and
  // `sgd`'s momentum (sgd may be null: no optimizer state), and starts the writer thread.
  // Model and Sgd must outlive the Checkpointer; their shapes must not change.
  static StatusOr<std::unique_ptr<Checkpointer>> Create(const CheckpointerOptions& options,
                                                        Model* model, Sgd* sgd, Logger logger);
  // Finishes a write in flight (a snapshot taken is always written), then stops the thread.
  ~Checkpointer();
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  // Call at a step boundary (after the optimizer step, before the next forward). Waits for a
  // previous write still in flight, copies the state into the snapshot buffer, hands it to the
  // writer thread and returns the path the checkpoint will have. `meta` gives the training
  // position (epoch, global_step, samples_consumed, seed, rng_state, world_size, job_spec);
  // arch is taken from the model when empty. After it returns, the model may change freely.
  StatusOr<std::string> save_async(const CheckpointMeta& meta);
  // save_async + wait (end of training, SIGTERM).
  Status save(const CheckpointMeta& meta);
  // Blocks until no write is in flight; returns the first error of the writes since the last
  // wait() (and clears it), OK otherwise.
  Status wait();
  // True while a snapshot is being written.
  bool busy() const;

  // Never prune `path` (the checkpoint a resume uses).
  void protect(const std::string& path);
  // The last file written successfully; empty if none yet.
  std::string last_written() const;
  // Bytes of the snapshot buffer (params + buffers + momentum).
  size_t snapshot_bytes() const { return arena_floats_ * sizeof(float); }

 private:
  struct Entry {
    CheckpointTensorView view;      // data points into the arena
    const float* source = nullptr;  // the live tensor (plain layout)
    int64_t count = 0;
    size_t offset = 0;  // floats from the start of the arena
  };
  struct FreeArena {
    void operator()(float* p) const;
  };

  Checkpointer(const CheckpointerOptions& options, Model* model, Sgd* sgd, Logger logger);
  void writer_loop();
  void write_one(const std::string& path, const CheckpointMeta& meta, bool with_momentum);

  CheckpointerOptions options_;
  Model* model_;
  Sgd* sgd_;
  Logger logger_;
  std::unique_ptr<float[], FreeArena> arena_;  // (params | buffers | momentum), allocated once
  size_t arena_floats_ = 0;
  std::vector<Entry> params_, buffers_, momentum_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool pending_ = false;                // GUARDED_BY(mu_): a snapshot waits for / is in writing
  bool stop_ = false;                   // GUARDED_BY(mu_)
  std::string pending_path_;            // GUARDED_BY(mu_)
  CheckpointMeta pending_meta_;         // GUARDED_BY(mu_)
  bool pending_with_momentum_ = false;  // GUARDED_BY(mu_)
  Status error_;                        // GUARDED_BY(mu_): first unreported write error
  std::string last_written_;            // GUARDED_BY(mu_)
  std::vector<std::string> protect_;    // GUARDED_BY(mu_)
  std::thread thread_;
};

// Loads a checkpoint into `model` (parameters and buffers) and, when `sgd` is given, its
// momentum (has_momentum_state is set from the file). Names, shapes and the architecture must
// match exactly; errors name the file, the tensor and both shapes. Everything is checked before
// anything is changed, so a failed restore leaves the model and optimizer untouched.
// `meta` (optional) receives the training position.
Status RestoreCheckpoint(const std::string& path, Model* model, Sgd* sgd,
                         CheckpointMeta* meta = nullptr);

// Resolves a JobSpec `resume:` value. "latest": the newest valid checkpoint of `dir` (corrupt
// newer files are logged and skipped), or nullopt when `dir` holds no checkpoint file (a fresh
// start); FailedPrecondition when files exist but none validates (never a silent fresh start).
// "" or "none": nullopt. Anything else is a path that must validate (an error otherwise).
StatusOr<std::optional<LatestCheckpoint>> SelectResumeCheckpoint(const std::string& resume,
                                                                 const std::string& dir,
                                                                 const Logger& logger);

}  // namespace resdist
