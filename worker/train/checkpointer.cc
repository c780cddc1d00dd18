// Checkpointer: snapshot buffer, writer thread, pruning; restore and resume selection.
#include "worker/train/checkpointer.h"

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace resdist {
namespace {

constexpr size_t kArenaAlign = size_t{2} << 20;  // huge-page aligned (PLATFORM.md: first touch)

std::string dims_string(const std::vector<int64_t>& dims) {
  return absl::StrCat("(", absl::StrJoin(dims, ","), ")");
}

bool is_num_batches_tracked(const Buffer& b) {
  return absl::EndsWith(b.name, ".num_batches_tracked") && b.value.numel() == 1;
}

// File shape `stored` matches model shape `model`; a scalar in the file matches a (1) tensor
// (PyTorch stores num_batches_tracked as a 0-d tensor, resdist as (1)).
bool same_shape(const std::vector<int64_t>& stored, const std::vector<int64_t>& model) {
  if (stored == model) return true;
  return stored.empty() && model == std::vector<int64_t>{1};
}

}  // namespace

void Checkpointer::FreeArena::operator()(float* p) const { std::free(p); }

Checkpointer::Checkpointer(const CheckpointerOptions& options, Model* model, Sgd* sgd,
                           Logger logger)
    : options_(options), model_(model), sgd_(sgd), logger_(std::move(logger)) {
  protect_ = options_.protect;
}

StatusOr<std::unique_ptr<Checkpointer>> Checkpointer::Create(const CheckpointerOptions& options,
                                                             Model* model, Sgd* sgd,
                                                             Logger logger) {
  if (options.dir.empty()) {
    return absl::InvalidArgumentError("checkpoint.dir is empty; expected a directory");
  }
  if (options.keep_last < 0) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint.keep_last: ", options.keep_last,
                                                   " is not allowed; expected >= 0 (0 = all)"));
  }
  std::error_code ec;
  std::filesystem::create_directories(options.dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat("checkpoint.dir ", options.dir, ": cannot create: ", ec.message()));
  }
  std::unique_ptr<Checkpointer> c(new Checkpointer(options, model, sgd, std::move(logger)));

  // Lay out the arena: parameters, buffers, momentum, each tensor 16-float (64-byte) aligned.
  size_t offset = 0;
  auto add = [&](std::vector<Entry>* list, const std::string& name, const Tensor& t,
                 StoredType stored, std::vector<int64_t> dims) -> Status {
    if (!t.is_plain()) {
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint: tensor ", name, " is not in a plain layout"));
    }
    Entry e;
    e.view.name = name;
    e.view.dims = std::move(dims);
    e.view.stored = stored;
    e.source = t.data();
    e.count = t.numel();
    e.offset = offset;
    offset += (static_cast<size_t>(e.count) + 15) / 16 * 16;
    list->push_back(std::move(e));
    return absl::OkStatus();
  };
  for (const Parameter* p : model->parameters()) {
    RETURN_IF_ERROR(add(&c->params_, p->name, p->value, StoredType::kFloat32, p->value.dims()));
  }
  for (const Buffer* b : model->buffers()) {
    if (is_num_batches_tracked(*b)) {
      RETURN_IF_ERROR(add(&c->buffers_, b->name, b->value, StoredType::kInt64, {}));
    } else {
      RETURN_IF_ERROR(add(&c->buffers_, b->name, b->value, StoredType::kFloat32, b->value.dims()));
    }
  }
  if (sgd != nullptr) {
    std::vector<Tensor>& m = sgd->momentum_buffers();
    const std::vector<Parameter*>& ps = model->parameters();
    if (m.size() != ps.size()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "checkpoint: the optimizer has %d momentum buffers, the model %d parameters", m.size(),
          ps.size()));
    }
    for (size_t i = 0; i < ps.size(); ++i) {
      if (m[i].numel() != ps[i]->value.numel()) {
        return absl::FailedPreconditionError(
            absl::StrCat("checkpoint: momentum buffer of ", ps[i]->name, " has ", m[i].numel(),
                         " elements, the parameter ", ps[i]->value.numel()));
      }
      RETURN_IF_ERROR(
          add(&c->momentum_, ps[i]->name, m[i], StoredType::kFloat32, ps[i]->value.dims()));
    }
  }
  c->arena_floats_ = offset;
  const size_t bytes = std::max<size_t>(offset * sizeof(float), 64);
  const size_t rounded = (bytes + kArenaAlign - 1) / kArenaAlign * kArenaAlign;
  float* arena = static_cast<float*>(std::aligned_alloc(kArenaAlign, rounded));
  if (arena == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("checkpoint: cannot allocate a ", rounded, "-byte snapshot buffer"));
  }
  c->arena_.reset(arena);
  ::madvise(arena, rounded, MADV_HUGEPAGE);
  std::memset(arena, 0, rounded);  // fault the pages in now, not during the first save
  for (std::vector<Entry>* list : {&c->params_, &c->buffers_, &c->momentum_}) {
    for (Entry& e : *list) e.view.data = arena + e.offset;
  }

  if (options.remove_stale_temp_files) {
    StatusOr<std::vector<std::string>> removed = RemoveStaleTempFiles(options.dir);
    if (removed.ok()) {
      for (const std::string& p : *removed) {
        c->logger_.warn(
            absl::StrCat("checkpoint: removed temporary file of an interrupted "
                         "write: ",
                         p));
      }
    }
  }
  c->thread_ = std::thread([raw = c.get()] { raw->writer_loop(); });
  return c;
}

Checkpointer::~Checkpointer() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return !pending_; });
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  if (!error_.ok()) logger_.error(absl::StrCat("checkpoint: unreported error: ", error_.message()));
}

StatusOr<std::string> Checkpointer::save_async(const CheckpointMeta& meta_in) {
  CheckpointMeta meta = meta_in;
  if (meta.arch.empty()) meta.arch = model_->spec().arch;
  if (meta.arch != model_->spec().arch) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint: meta.arch is ", meta.arch,
                                                   ", the model is ", model_->spec().arch));
  }
  const std::string path = CheckpointPath(options_.dir, meta.epoch, meta.global_step);
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return !pending_; });
  // The writer is idle and will not touch the arena until pending_ is set again.
  for (std::vector<Entry>* list : {&params_, &buffers_}) {
    for (Entry& e : *list) {
      std::memcpy(const_cast<float*>(e.view.data), e.source, e.count * sizeof(float));
    }
  }
  const bool with_momentum =
      sgd_ != nullptr && sgd_->has_momentum_state() && sgd_->options().momentum > 0;
  if (with_momentum) {
    for (Entry& e : momentum_) {
      std::memcpy(const_cast<float*>(e.view.data), e.source, e.count * sizeof(float));
    }
  }
  pending_ = true;
  pending_path_ = path;
  pending_meta_ = std::move(meta);
  pending_with_momentum_ = with_momentum;
  lock.unlock();
  cv_.notify_all();
  return path;
}

Status Checkpointer::save(const CheckpointMeta& meta) {
  RETURN_IF_ERROR(save_async(meta).status());
  return wait();
}

Status Checkpointer::wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return !pending_; });
  Status s = error_;
  error_ = absl::OkStatus();
  return s;
}

bool Checkpointer::busy() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pending_;
}

void Checkpointer::protect(const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  protect_.push_back(path);
}

std::string Checkpointer::last_written() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_written_;
}

void Checkpointer::writer_loop() {
  for (;;) {
    std::string path;
    CheckpointMeta meta;
    bool with_momentum;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return pending_ || stop_; });
      if (!pending_) return;  // stop_ and nothing left to write
      path = pending_path_;
      meta = pending_meta_;
      with_momentum = pending_with_momentum_;
    }
    write_one(path, meta, with_momentum);
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_ = false;
    }
    cv_.notify_all();
  }
}

void Checkpointer::write_one(const std::string& path, const CheckpointMeta& meta,
                             bool with_momentum) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<CheckpointTensorView> params, buffers, momentum;
  for (const Entry& e : params_) params.push_back(e.view);
  for (const Entry& e : buffers_) buffers.push_back(e.view);
  if (with_momentum) {
    for (const Entry& e : momentum_) momentum.push_back(e.view);
  }
  Status s = WriteCheckpoint(path, meta, params, buffers, momentum, options_.write);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!s.ok()) {
    logger_.error(absl::StrCat("checkpoint: write failed: ", s.message()));
    std::lock_guard<std::mutex> lock(mu_);
    if (error_.ok()) error_ = s;
    return;
  }
  logger_.info(absl::StrFormat("checkpoint: wrote %s (epoch %d, step %d, %.1f MB, %.2f s)", path,
                               meta.epoch, meta.global_step, snapshot_bytes() / 1e6, secs));
  std::vector<std::string> protect;
  {
    std::lock_guard<std::mutex> lock(mu_);
    last_written_ = path;
    protect = protect_;
  }
  if (options_.on_written) options_.on_written(path, meta);
  if (options_.keep_last > 0) {
    StatusOr<std::vector<std::string>> deleted =
        PruneCheckpoints(options_.dir, options_.keep_last, protect, /*just_written=*/path);
    if (!deleted.ok()) {
      logger_.warn(absl::StrCat("checkpoint: pruning failed: ", deleted.status().message()));
    } else {
      for (const std::string& p : *deleted) {
        logger_.info(
            absl::StrCat("checkpoint: pruned ", p, " (keep_last ", options_.keep_last, ")"));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Restore

Status RestoreCheckpoint(const std::string& path, Model* model, Sgd* sgd, CheckpointMeta* meta) {
  ASSIGN_OR_RETURN(CheckpointContents c, ReadCheckpoint(path));
  const std::string& arch = model->spec().arch;
  if (c.meta.arch != arch) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", path, ": holds a ", c.meta.arch, " model, expected ", arch));
  }
  auto mismatch = [&](const std::string& where, const std::vector<int64_t>& stored,
                      const std::vector<int64_t>& expected) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", path, ": ", where, " has shape ", dims_string(stored), ", the ",
                     arch, " model expects ", dims_string(expected)));
  };
  auto missing = [&](const std::string& where, const std::vector<int64_t>& expected) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", path, ": ", where, " is missing; the ", arch,
                     " model has it with shape ", dims_string(expected)));
  };

  // Pass 1: check everything.
  for (const Parameter* p : model->parameters()) {
    const CheckpointTensor* t = c.find_param(p->name);
    const std::vector<int64_t> dims = p->value.dims();
    if (t == nullptr) return missing(absl::StrCat("/params/", p->name), dims);
    if (!same_shape(t->dims, dims))
      return mismatch(absl::StrCat("/params/", p->name), t->dims, dims);
  }
  for (const Buffer* b : model->buffers()) {
    const CheckpointTensor* t = c.find_buffer(b->name);
    const std::vector<int64_t> dims = b->value.dims();
    if (t == nullptr) return missing(absl::StrCat("/buffers/", b->name), dims);
    if (!same_shape(t->dims, dims)) {
      return mismatch(absl::StrCat("/buffers/", b->name), t->dims, dims);
    }
  }
  for (const CheckpointTensor& t : c.params) {
    if (model->find_parameter(t.name) == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint ", path, ": /params/", t.name, " is not a parameter of the ",
                       arch, " model (", model->parameters().size(), " parameters)"));
    }
  }
  for (const CheckpointTensor& t : c.buffers) {
    if (model->find_buffer(t.name) == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          "checkpoint ", path, ": /buffers/", t.name, " is not a buffer of the ", arch, " model"));
    }
  }
  const bool restore_momentum = sgd != nullptr && !c.momentum.empty();
  if (restore_momentum) {
    const std::vector<Parameter*>& ps = model->parameters();
    if (sgd->momentum_buffers().size() != ps.size()) {
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint ", path, ": the optimizer does not match the model"));
    }
    for (const Parameter* p : ps) {
      if (c.find_momentum(p->name) == nullptr) {
        return missing(absl::StrCat("/optimizer/", p->name, "/momentum"), p->value.dims());
      }
    }
  }

  // Pass 2: copy.
  for (Parameter* p : model->parameters()) {
    const CheckpointTensor* t = c.find_param(p->name);
    std::memcpy(p->value.data(), t->values.data(), t->values.size() * sizeof(float));
  }
  for (Buffer* b : model->buffers()) {
    const CheckpointTensor* t = c.find_buffer(b->name);
    std::memcpy(b->value.data(), t->values.data(), t->values.size() * sizeof(float));
  }
  if (sgd != nullptr) {
    if (restore_momentum) {
      const std::vector<Parameter*>& ps = model->parameters();
      std::vector<Tensor>& m = sgd->momentum_buffers();
      for (size_t i = 0; i < ps.size(); ++i) {
        const CheckpointTensor* t = c.find_momentum(ps[i]->name);
        std::memcpy(m[i].data(), t->values.data(), t->values.size() * sizeof(float));
      }
    } else {
      for (Tensor& m : sgd->momentum_buffers()) m.zero();
    }
    sgd->set_has_momentum_state(restore_momentum);
  }
  if (meta != nullptr) *meta = std::move(c.meta);
  return absl::OkStatus();
}

StatusOr<std::optional<LatestCheckpoint>> SelectResumeCheckpoint(const std::string& resume,
                                                                 const std::string& dir,
                                                                 const Logger& logger) {
  if (resume.empty() || resume == "none") return std::optional<LatestCheckpoint>();
  if (resume == "latest") {
    StatusOr<LatestCheckpoint> latest = FindLatestValidCheckpoint(
        dir, [&logger](const std::string& line) { logger.warn(absl::StrCat("resume: ", line)); });
    if (!latest.ok()) {
      // No checkpoint files at all: a fresh start. Files that all fail validation: an error,
      // not a silent restart from scratch that would throw the run's progress away.
      ASSIGN_OR_RETURN(std::vector<CheckpointFile> files, ListCheckpoints(dir));
      if (absl::IsNotFound(latest.status()) && files.empty()) {
        logger.info(absl::StrCat("resume: no checkpoint in ", dir, "; starting fresh"));
        return std::optional<LatestCheckpoint>();
      }
      return absl::FailedPreconditionError(
          absl::StrCat("resume: latest: ", latest.status().message()));
    }
    if (!latest.ok()) return latest.status();
    logger.info(absl::StrFormat("resume: from %s (epoch %d, step %d, %d samples of the epoch)",
                                latest->path, latest->meta.epoch, latest->meta.global_step,
                                latest->meta.samples_consumed));
    return std::optional<LatestCheckpoint>(std::move(latest).value());
  }
  LatestCheckpoint named;
  named.path = resume;
  ASSIGN_OR_RETURN(named.meta, ValidateCheckpoint(resume));
  logger.info(absl::StrFormat("resume: from %s (epoch %d, step %d)", resume, named.meta.epoch,
                              named.meta.global_step));
  return std::optional<LatestCheckpoint>(std::move(named));
}

}  // namespace resdist
