// The checkpoint file format (docs/checkpoint-format.md): one HDF5 file per checkpoint holding
// named float arrays (parameters, buffers, optimizer momentum) and the training position, with
// a checksum over all of it; the atomic writer, the validating reader, directory listing,
// latest-valid selection and keep_last pruning. Shared by the worker (which writes and
// restores), the coordinator (which indexes) and the CLI. No dependency on worker/: callers
// pass plain float arrays; mapping them onto a Model/Sgd is worker/train/checkpointer.h.
//
// Rationale. A checkpoint is what a failed job restarts from, so a half-written or damaged file
// must never be taken for a good one. Three layers guard that: (1) the file is written under a
// temporary name in the same directory, fsynced, renamed onto its final name and the directory
// fsynced, so a final name always refers to a complete file; (2) a format/version attribute and
// a schema check catch foreign or outdated files; (3) an XXH64 checksum over a canonical byte
// stream of every dataset and attribute catches flipped or truncated bytes that HDF5 itself
// does not detect (HDF5 1.10's default file format has no checksums on raw data).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace resdist {

inline constexpr char kCheckpointFormatName[] = "resdist-checkpoint";
inline constexpr int64_t kCheckpointFormatVersion = 1;

// Streaming XXH64 (Collet's xxHash, 64-bit variant, seed 0 by default), bit-exact with the
// reference implementation. Used for the checkpoint checksum; no dependency on libxxhash.
class Xxh64 {
 public:
  explicit Xxh64(uint64_t seed = 0);
  void update(const void* data, size_t len);
  uint64_t digest() const;

 private:
  uint64_t v_[4];
  uint64_t seed_;
  uint64_t total_len_ = 0;
  unsigned char buf_[32];
  size_t buf_len_ = 0;
};

// How a tensor is stored in the file. In memory every tensor is float; kInt64 tensors (batch
// norm's num_batches_tracked, as in PyTorch) must hold integral values.
enum class StoredType { kFloat32, kInt64 };

// A borrowed, read-only view of one tensor to be written.
struct CheckpointTensorView {
  std::string name;           // torchvision name, e.g. "layer1.0.conv1.weight"; no '/'
  std::vector<int64_t> dims;  // PyTorch shape; empty = a scalar (0-d) tensor
  StoredType stored = StoredType::kFloat32;
  const float* data = nullptr;  // product(dims) values, row-major (PyTorch's contiguous layout)
};

// One tensor read back from a file (owned values).
struct CheckpointTensor {
  std::string name;
  std::vector<int64_t> dims;
  StoredType stored = StoredType::kFloat32;
  std::vector<float> values;
};

// Everything a checkpoint records besides the tensors.
struct CheckpointMeta {
  std::string arch;              // ModelSpec::arch, e.g. "resnet20"
  int64_t epoch = 0;             // 0-based epoch the next step belongs to
  int64_t global_step = 0;       // optimizer steps taken since the start of training
  int64_t samples_consumed = 0;  // samples of `epoch` consumed by all ranks together
  uint64_t seed = 0;             // the job's seed
  std::string rng_state;         // opaque bytes supplied by the caller (may be empty)
  int64_t world_size = 1;        // ranks at save time (informational; resume may differ)
  std::string job_spec;          // the JobSpec as text (YAML), stored verbatim
  int64_t created_unix_ms = 0;   // set by the writer when 0 (milliseconds since the epoch)
  // Read back only: the format version and the checksum ("xxh64:<16 hex digits>").
  int64_t format_version = kCheckpointFormatVersion;
  std::string checksum;
};

// Points in WriteCheckpoint at which the test hook is called (crash-safety tests).
enum class CheckpointWriteStage {
  kTempCreated,         // the temporary file exists and is empty of payload
  kPayloadHalfWritten,  // about half of the tensors have been written to the temporary file
  kBeforeRename,        // the temporary file is complete and fsynced
  kAfterRename,         // the final name refers to the new file; directory not yet fsynced
  kDone,
};
const char* CheckpointWriteStageName(CheckpointWriteStage stage);

struct CheckpointWriteOptions {
  // Called at each stage with the temporary and final paths. Tests only.
  std::function<void(CheckpointWriteStage, const std::string& temp_path)> TEST_on_stage;
};

// Writes a checkpoint atomically: `path` + ".tmp-<pid>" hidden sibling (see TempPathFor),
// fsync, rename onto `path`, fsync of the directory. On error the temporary file is removed and
// `path` is untouched. `momentum` names must be a subset of `params` names with the same dims.
// Errors name the file and the offending tensor / field.
Status WriteCheckpoint(const std::string& path, const CheckpointMeta& meta,
                       const std::vector<CheckpointTensorView>& params,
                       const std::vector<CheckpointTensorView>& buffers,
                       const std::vector<CheckpointTensorView>& momentum,
                       const CheckpointWriteOptions& options = {});

// A checkpoint read back and fully validated.
struct CheckpointContents {
  CheckpointMeta meta;
  std::vector<CheckpointTensor> params;    // sorted by name
  std::vector<CheckpointTensor> buffers;   // sorted by name
  std::vector<CheckpointTensor> momentum;  // sorted by name; names are parameter names
  const CheckpointTensor* find_param(std::string_view name) const;
  const CheckpointTensor* find_buffer(std::string_view name) const;
  const CheckpointTensor* find_momentum(std::string_view name) const;
};

// Reads and validates a checkpoint: HDF5 readable, format name and version, every required
// attribute, dataset types (float32; int64 for buffers), names, shapes, and the checksum.
// Error codes: NotFound (no file), DataLoss (checksum mismatch, truncation, damaged HDF5),
// InvalidArgument (not a checkpoint, schema mismatch), FailedPrecondition (newer version).
// Messages start with the file path.
StatusOr<CheckpointContents> ReadCheckpoint(const std::string& path);

// The same checks as ReadCheckpoint, keeping only the metadata (tensors are streamed through
// the checksum one at a time).
StatusOr<CheckpointMeta> ValidateCheckpoint(const std::string& path);

// ---------------------------------------------------------------------------------------------
// Checkpoint directories.

// "ckpt-e0003-s000001234.h5" for epoch 3, global step 1234 (wider numbers grow the field).
std::string CheckpointFileName(int64_t epoch, int64_t global_step);
// `dir`/CheckpointFileName(...).
std::string CheckpointPath(const std::string& dir, int64_t epoch, int64_t global_step);
// Parses a checkpoint file name (no directory); false for anything else, including temp files.
bool ParseCheckpointFileName(std::string_view file_name, int64_t* epoch, int64_t* global_step);
// The hidden temporary sibling WriteCheckpoint writes first: "<dir>/.<name>.tmp-<pid>".
std::string TempPathFor(const std::string& path, int64_t pid);

struct CheckpointFile {
  std::string path;
  int64_t epoch = 0;
  int64_t global_step = 0;
};

// Checkpoint files in `dir` (by name only; nothing is opened), newest first: by global step,
// then epoch. A missing directory is an empty list; other errors name the directory.
StatusOr<std::vector<CheckpointFile>> ListCheckpoints(const std::string& dir);

struct LatestCheckpoint {
  std::string path;
  CheckpointMeta meta;
  // One line per newer file that was skipped: "<path>: <reason>".
  std::vector<std::string> skipped;
};

// The newest checkpoint in `dir` that passes ValidateCheckpoint; newer invalid files are
// skipped and reported in `skipped` (and through `on_skip`, e.g. to log them). NotFound when
// the directory holds no valid checkpoint (the message lists what was skipped).
StatusOr<LatestCheckpoint> FindLatestValidCheckpoint(
    const std::string& dir, const std::function<void(const std::string&)>& on_skip = {});

// Deletes all but the newest `keep_last` checkpoint files of `dir` (0 keeps all), newest by
// name (global step, then epoch). Never deletes a path listed in `protect` (e.g. the file the
// current run resumed from; protected files do not count towards keep_last). `just_written`
// (optional) is always kept and counts as one of the keep_last, even when older-named files
// exist (a run that resumed from an earlier step than a damaged newer file). Returns the
// deleted paths.
StatusOr<std::vector<std::string>> PruneCheckpoints(const std::string& dir, int64_t keep_last,
                                                    const std::vector<std::string>& protect,
                                                    const std::string& just_written = "");

// Deletes temporary files that crashed writers left in `dir` (".ckpt-*.tmp-*"). Call only when
// no other process writes checkpoints into `dir`. Returns the deleted paths.
StatusOr<std::vector<std::string>> RemoveStaleTempFiles(const std::string& dir);

}  // namespace resdist
