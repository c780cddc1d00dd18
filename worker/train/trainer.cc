// Training loop implementation. Buffers (images, labels, gradients) are allocated before the
// first step and reused; the step loop performs no large allocation.
#include "worker/train/trainer.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string_view>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/job_spec.h"
#include "worker/train/reducer.h"

namespace resdist {
namespace {

using Clock = std::chrono::steady_clock;

// SIGTERM count of this process. The one piece of global mutable state in the trainer, and
// unavoidable: a signal handler has no other way to reach the training loop, and it may only
// touch lock-free atomics (async-signal-safe). The loop reads it at each step boundary and agrees
// on it across ranks; nothing else happens in the handler.
std::atomic<int> g_sigterm_count{0};
static_assert(std::atomic<int>::is_always_lock_free);

extern "C" void OnSigterm(int) { g_sigterm_count.fetch_add(1, std::memory_order_relaxed); }

// Installs OnSigterm for the lifetime of a run (when enabled) and restores the previous
// disposition afterwards, so a process that trains twice (tests) or does other work after
// training keeps its own handling.
class SigtermScope {
 public:
  explicit SigtermScope(bool enable) : installed_(false) {
    if (!enable) return;
    g_sigterm_count.store(0);
    struct sigaction sa {};
    sa.sa_handler = OnSigterm;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;  // blocking reads (HDF5, MPI) continue; the loop polls the flag
    installed_ = sigaction(SIGTERM, &sa, &previous_) == 0;
  }
  ~SigtermScope() {
    if (installed_) sigaction(SIGTERM, &previous_, nullptr);
  }
  SigtermScope(const SigtermScope&) = delete;
  SigtermScope& operator=(const SigtermScope&) = delete;

 private:
  bool installed_;
  struct sigaction previous_ {};
};

// rng_state of a checkpoint: the only generator state the trainer has is the dropout counter
// (NnContext::step); augmentation and shuffling are keyed by (seed, epoch, sample) and need none.
constexpr char kRngStatePrefix[] = "nn.step=";

std::string EncodeRngState(uint64_t nn_step) { return absl::StrCat(kRngStatePrefix, nn_step); }

bool DecodeRngState(const std::string& state, uint64_t* nn_step) {
  if (state.rfind(kRngStatePrefix, 0) != 0) return false;
  return absl::SimpleAtoi(state.substr(sizeof(kRngStatePrefix) - 1), nn_step);
}

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// One progress line, redrawn in place on a terminal.
void DrawBar(int64_t epoch, int64_t epochs, int64_t step, int64_t steps, double loss, double acc,
             double ips, bool final) {
  constexpr int kWidth = 28;
  const int filled = steps > 0 ? static_cast<int>(kWidth * step / steps) : kWidth;
  std::string bar(filled, '#');
  bar.resize(kWidth, '.');
  std::fprintf(stderr, "\r\033[Kepoch %lld/%lld [%s] %lld/%lld loss %.4f acc %.2f%% %.0f img/s",
               static_cast<long long>(epoch + 1), static_cast<long long>(epochs), bar.c_str(),
               static_cast<long long>(step), static_cast<long long>(steps), loss, 100 * acc, ips);
  if (final) std::fputc('\n', stderr);
  std::fflush(stderr);
}

}  // namespace

Status ValidateTrainConfig(const TrainConfig& c) {
  if (c.batch_size < 1 || c.batch_size > (1 << 20))
    return absl::InvalidArgumentError(
        absl::StrCat("batch_size: ", c.batch_size, " is not allowed; expected 1..1048576"));
  if (c.epochs < 1 || c.epochs > 100000)
    return absl::InvalidArgumentError(
        absl::StrCat("epochs: ", c.epochs, " is not allowed; expected 1..100000"));
  if (!(c.label_smoothing >= 0.f && c.label_smoothing < 1.f))
    return absl::InvalidArgumentError(
        absl::StrCat("label_smoothing: ", c.label_smoothing, " is outside [0, 1)"));
  if (c.eval_every_epochs < 0)
    return absl::InvalidArgumentError(absl::StrCat(
        "eval_every_epochs: ", c.eval_every_epochs, " is not allowed; expected >= 0"));
  if (c.max_steps_per_epoch < 0)
    return absl::InvalidArgumentError(absl::StrCat(
        "max_steps_per_epoch: ", c.max_steps_per_epoch, " is not allowed; expected >= 0"));
  RETURN_IF_ERROR(ValidateSgdOptions(c.sgd));
  RETURN_IF_ERROR(ValidateLrSchedule(c.lr, static_cast<double>(c.epochs)));
  return absl::OkStatus();
}

uint64_t ModelChecksum(const Model& model, bool buffers) {
  // FNV-1a over 64-bit words: order-sensitive, so a swapped or changed value shows.
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](const Tensor& t) {
    const auto* p = reinterpret_cast<const uint8_t*>(t.data());
    const size_t n = t.bytes();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      h = (h ^ w) * 1099511628211ull;
    }
    for (; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  };
  for (const Parameter* p : model.parameters()) mix(p->value);
  if (buffers)
    for (const Buffer* b : model.buffers()) mix(b->value);
  return h;
}

Trainer::Trainer(const TrainConfig& config, Backend* backend, Model* model, BatchSource* train,
                 BatchSource* eval, Logger logger, Communicator* comm)
    : config_(config),
      backend_(backend),
      model_(model),
      train_(train),
      eval_(eval),
      logger_(std::move(logger)),
      sgd_(model->parameters(), config.sgd),
      loss_op_(backend->softmax_cross_entropy()),
      comm_(comm) {
  if (comm_ == nullptr) {
    own_comm_ = MakeSingleCommunicator();
    comm_ = own_comm_.get();
  }
  const ModelSpec& s = model->spec();
  images_.resize(Dims{config.batch_size, s.in_channels, s.height, s.width});
  images_.zero();  // first touch now, not in the step loop
  labels_.assign(config.batch_size, 0);
  if (distributed()) {
    const size_t bucket_bytes =
        static_cast<size_t>(std::max(1.0, config.bucket_mb * 1024.0 * 1024.0));
    reducer_ = std::make_unique<GradientReducer>(comm_, model->parameters(), bucket_bytes);
    reducer_->set_skip_allreduce(config.skip_allreduce);
  }
}

Trainer::~Trainer() {
  checkpointer_.reset();  // finishes a write in flight
  model_->context().on_grad_ready = nullptr;
}

bool SigtermReceived() { return g_sigterm_count.load() > 0; }

Status Trainer::write_metrics(const std::string& line) {
  if (config_.metrics_path.empty() || comm_->rank() != 0) return absl::OkStatus();
  if (!metrics_.is_open()) metrics_.open(config_.metrics_path, std::ios::app);
  metrics_ << line << '\n';
  metrics_.flush();  // a line per step; readers (tests, tail -f) see whole lines
  if (!metrics_)
    return absl::UnavailableError(absl::StrCat("metrics file ", config_.metrics_path,
                                               ": cannot append (", std::strerror(errno), ")"));
  return absl::OkStatus();
}

Status Trainer::synchronize_replicas() {
  if (!distributed()) return absl::OkStatus();
  // One flat buffer, one broadcast (set-up only; not in the step loop).
  size_t total = 0;
  for (const Parameter* p : model_->parameters()) total += p->value.bytes();
  for (const Buffer* b : model_->buffers()) total += b->value.bytes();
  std::vector<uint8_t> flat(total);
  size_t off = 0;
  auto pack = [&](Tensor& t, bool to_flat) {
    if (to_flat) std::memcpy(flat.data() + off, t.data(), t.bytes());
    else std::memcpy(t.data(), flat.data() + off, t.bytes());
    off += t.bytes();
  };
  for (Parameter* p : model_->parameters()) pack(p->value, true);
  for (Buffer* b : model_->buffers()) pack(b->value, true);
  comm_->broadcast(flat.data(), flat.size(), 0);
  off = 0;
  for (Parameter* p : model_->parameters()) pack(p->value, false);
  for (Buffer* b : model_->buffers()) pack(b->value, false);
  return check_replicas("after the initial broadcast from rank 0", /*buffers=*/true);
}

void Trainer::broadcast_buffers() {
  if (!distributed()) return;
  for (Buffer* b : model_->buffers()) comm_->broadcast(b->value.data(), b->value.bytes(), 0);
}

Status Trainer::check_replicas(const std::string& when, bool buffers) {
  if (!distributed()) return absl::OkStatus();
  const std::vector<uint64_t> sums = comm_->allgather(ModelChecksum(*model_, buffers));
  std::vector<int> differ;
  for (size_t r = 1; r < sums.size(); ++r)
    if (sums[r] != sums[0]) differ.push_back(static_cast<int>(r));
  if (differ.empty()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(
      "replicas diverged ", when, ": parameters of rank(s) ", absl::StrJoin(differ, ", "),
      " differ from rank 0 (checksum ", absl::StrFormat("%016x", sums[0]), ")"));
}

StatusOr<EvalResult> Trainer::evaluate(BatchSource& source) {
  RETURN_IF_ERROR(source.start_epoch(0, 0));
  const ModelSpec& s = model_->spec();
  const int64_t per = s.in_channels * s.height * s.width;
  // sums[0] loss * valid, sums[1] correct, sums[2] valid: exact in double.
  double sums[3] = {0, 0, 0};
  int size = 0, valid = 0;
  Tensor& partial = partial_batch_;
  while (source.next(images_.data(), labels_.data(), &size, &valid)) {
    const Tensor* batch = &images_;
    if (size != config_.batch_size) {  // the last, smaller batch of the split
      partial.resize(Dims{size, s.in_channels, s.height, s.width});
      std::memcpy(partial.data(), images_.data(), sizeof(float) * size * per);
      batch = &partial;
    }
    const Tensor& logits = model_->forward(*batch, /*training=*/false);
    if (valid == 0) continue;  // a batch of pad duplicates only
    const LossResult r = loss_op_->forward_backward(
        logits, std::span<const int32_t>(labels_.data(), size), valid, 0.f, nullptr);
    sums[0] += r.loss * valid;
    sums[1] += static_cast<double>(r.correct);
    sums[2] += valid;
  }
  RETURN_IF_ERROR(source.status());
  comm_->allreduce_sum(sums, 3);
  EvalResult res;
  res.samples = static_cast<int64_t>(sums[2]);
  if (res.samples > 0) {
    res.loss = sums[0] / sums[2];
    res.accuracy = sums[1] / sums[2];
  }
  return res;
}

CheckpointMeta Trainer::checkpoint_meta(int64_t epoch, int64_t global_step,
                                        int64_t samples_consumed) const {
  CheckpointMeta m;
  m.arch = model_->spec().arch;
  m.epoch = epoch;
  m.global_step = global_step;
  m.samples_consumed = samples_consumed;
  m.seed = config_.checkpoint.seed;
  m.rng_state = EncodeRngState(model_->context().step);
  m.world_size = comm_->size();
  m.job_spec = config_.checkpoint.job_spec;
  return m;
}

StatusOr<std::string> Trainer::restore_for_resume(CheckpointMeta* meta) {
  const CheckpointConfig& ck = config_.checkpoint;
  if (ck.resume.empty() || ck.resume == "none") return std::string();
  if (ck.resume == "latest" && ck.dir.empty())
    return absl::InvalidArgumentError(
        "resume: 'latest' needs checkpoint.dir (the directory to take the newest checkpoint from)");
  // Rank 0 chooses (it logs skipped files once); every rank gets the same path: a length, then
  // the bytes. A negative length says rank 0 failed (its own error is the one that matters).
  std::string path;
  Status selected = absl::OkStatus();
  if (comm_->rank() == 0) {
    StatusOr<std::optional<LatestCheckpoint>> pick =
        SelectResumeCheckpoint(ck.resume, ck.dir, logger_);
    if (!pick.ok()) selected = pick.status();
    else if (pick->has_value()) path = (*pick)->path;
  }
  int64_t length = selected.ok() ? static_cast<int64_t>(path.size()) : -1;
  comm_->broadcast(&length, sizeof(length), 0);
  if (length < 0) {
    if (comm_->rank() == 0) return selected;
    return absl::FailedPreconditionError(
        absl::StrCat("resume: ", ck.resume, ": rank 0 could not select a checkpoint"));
  }
  path.resize(static_cast<size_t>(length));
  if (length > 0) comm_->broadcast(path.data(), path.size(), 0);
  if (path.empty()) return path;  // "latest" in an empty directory: a fresh start
  // Every rank reads the file (parameters, buffers, momentum); synchronize_replicas() then
  // checks that they all hold the same bits.
  RETURN_IF_ERROR(RestoreCheckpoint(path, model_, &sgd_, meta));
  uint64_t nn_step = static_cast<uint64_t>(meta->global_step);
  DecodeRngState(meta->rng_state, &nn_step);
  model_->context().step = nn_step;
  return path;
}

StatusOr<TrainResult> Trainer::run() {
  RETURN_IF_ERROR(ValidateTrainConfig(config_));
  const ModelSpec& s = model_->spec();
  const int world = comm_->size();
  const bool rank0 = comm_->rank() == 0;
  const int64_t global_batch = config_.batch_size * world;
  const CheckpointConfig& ck = config_.checkpoint;
  if (train_->channels() != s.in_channels || train_->height() != s.height ||
      train_->width() != s.width)
    return absl::InvalidArgumentError(absl::StrCat(
        "training data ", train_->describe(), " does not match the model input ", s.in_channels,
        "x", s.height, "x", s.width, " (C x H x W)"));
  if (train_->num_classes() > s.num_classes)
    return absl::InvalidArgumentError(absl::StrCat("training data has ", train_->num_classes(),
                                                   " classes but model.num_classes is ",
                                                   s.num_classes));
  RETURN_IF_ERROR(train_->start_epoch(0, 0));
  int64_t steps_per_epoch = train_->batches_in_epoch();
  if (config_.max_steps_per_epoch > 0)
    steps_per_epoch = std::min(steps_per_epoch, config_.max_steps_per_epoch);
  if (steps_per_epoch < 1)
    return absl::InvalidArgumentError(absl::StrCat("training data ", train_->describe(),
                                                   " gives no full batch of ", config_.batch_size,
                                                   world > 1 ? " per rank" : ""));
  const int64_t total_steps = steps_per_epoch * config_.epochs;

  // Checkpoints: rank 0 owns the writer; the other ranks only take part in the per-step
  // command exchange (and the barrier of a stop). The handler is installed before the resume so
  // that a SIGTERM during set-up is honoured at the first step boundary.
  SigtermScope sigterm(ck.enabled() && ck.handle_sigterm);
  TrainResult result;
  int64_t first_epoch = 0, first_step_in_epoch = 0;
  // Resume (the position of the checkpoint, checked against this run's shape of an epoch) and
  // the checkpoint writer. A failure on one rank fails every rank, none waits in a collective.
  const Status prepared = [&]() -> Status {
    CheckpointMeta meta;
    ASSIGN_OR_RETURN(result.resumed_from, restore_for_resume(&meta));
    if (!result.resumed_from.empty()) {
      const std::string& from = result.resumed_from;
      if (!meta.job_spec.empty()) {
        StatusOr<JobSpec> saved = ParseJobSpec(meta.job_spec);
        if (saved.ok() && saved->batch_size != global_batch)
          return absl::FailedPreconditionError(absl::StrCat(
              "resume: checkpoint ", from, " was trained with batch_size ", saved->batch_size,
              " (global) but this run has ", global_batch, " (", world, " ranks x ",
              config_.batch_size, "); a resume must keep the global batch (batch_size is "
              "split across ranks, so any number of ranks that divides it works)"));
      }
      if (meta.samples_consumed % global_batch != 0)
        return absl::FailedPreconditionError(absl::StrCat(
            "resume: checkpoint ", from, ": samples_consumed ", meta.samples_consumed,
            " is not a multiple of the global batch ", global_batch,
            "; the checkpoint was written with another global batch_size"));
      first_epoch = meta.epoch;
      first_step_in_epoch = meta.samples_consumed / global_batch;
      if (first_step_in_epoch == steps_per_epoch) {
        ++first_epoch;  // written after the last step of an epoch: start the next one
        first_step_in_epoch = 0;
      }
      const int64_t expected = first_epoch * steps_per_epoch + first_step_in_epoch;
      if (first_step_in_epoch > steps_per_epoch || meta.global_step != expected)
        return absl::FailedPreconditionError(absl::StrCat(
            "resume: checkpoint ", from, " is at global step ", meta.global_step, " (epoch ",
            meta.epoch, ", ", meta.samples_consumed, " samples into it), which does not fit ",
            steps_per_epoch, " steps of ", global_batch,
            " samples per epoch (expected global step ", expected,
            "); the data set, batch_size or max_steps_per_epoch changed since it was written"));
      if (first_epoch > config_.epochs)
        return absl::FailedPreconditionError(absl::StrCat(
            "resume: checkpoint ", from, " is at epoch ", first_epoch, ", beyond epochs ",
            config_.epochs, " of this run"));
      result.resumed_at_step = meta.global_step;
      if (rank0)
        logger_.info(absl::StrFormat(
            "resuming from %s: epoch %d, step %d of %d in it (global step %d of %d), saved by %d "
            "rank(s), now %d",
            from, first_epoch + 1, first_step_in_epoch, steps_per_epoch, meta.global_step,
            total_steps, meta.world_size, world));
    }
    if (rank0 && ck.enabled()) {
      CheckpointerOptions o;
      o.dir = ck.dir;
      o.keep_last = ck.keep_last;
      if (!result.resumed_from.empty()) o.protect.push_back(result.resumed_from);
      o.on_written = hooks_.on_checkpoint;
      ASSIGN_OR_RETURN(checkpointer_, Checkpointer::Create(o, model_, &sgd_, logger_));
    }
    return absl::OkStatus();
  }();
  if (distributed()) {
    double failed = prepared.ok() ? 0 : 1;
    comm_->allreduce_sum(&failed, 1);
    if (failed > 0 && prepared.ok())
      return absl::AbortedError(absl::StrCat(
          static_cast<int>(failed), " other rank(s) could not prepare the run (resume: ",
          ck.resume.empty() ? "none" : ck.resume, ", checkpoint.dir: ",
          ck.dir.empty() ? "none" : ck.dir, "); their errors name the cause"));
  }
  RETURN_IF_ERROR(prepared);
  RETURN_IF_ERROR(synchronize_replicas());
  LrScheduler lr(config_.lr, steps_per_epoch, total_steps);
  const bool tty = isatty(STDERR_FILENO);
  const bool bar = rank0 && (config_.progress == ProgressMode::kBar ||
                             (config_.progress == ProgressMode::kAuto && tty));
  const bool lines = rank0 && (config_.progress == ProgressMode::kLines ||
                               (config_.progress == ProgressMode::kAuto && !tty));
  if (rank0)
    logger_.info(absl::StrCat(
        "training ", s.arch, " (", model_->num_parameters(), " parameters) on ",
        train_->describe(), ": ", config_.epochs, " epochs x ", steps_per_epoch, " steps, batch ",
        global_batch,
        world > 1 ? absl::StrCat(" (", world, " ranks x ", config_.batch_size, ")") : "", ", ",
        backend_->name(), " ", backend_->threads(), " threads",
        reducer_ ? absl::StrCat(", ", reducer_->buckets().size(), " gradient buckets",
                                config_.skip_allreduce ? " (all-reduce SKIPPED)" : "")
                 : ""));

  auto last_save = Clock::now();
  // Rank 0: starts a checkpoint of the state after `global_step` (the next step is step
  // `step_in_epoch` of `epoch`); blocking when `wait`.
  auto save = [&](int64_t epoch, int64_t step_in_epoch, int64_t global_step, bool wait,
                  const char* why) -> Status {
    if (!checkpointer_) return absl::OkStatus();
    if (step_in_epoch >= steps_per_epoch) ++epoch, step_in_epoch = 0;
    const CheckpointMeta m =
        checkpoint_meta(epoch, global_step, samples_consumed_at(step_in_epoch, global_batch));
    last_save = Clock::now();
    if (wait) {
      RETURN_IF_ERROR(checkpointer_->save(m));
      result.last_checkpoint = checkpointer_->last_written();
    } else {
      ASSIGN_OR_RETURN(result.last_checkpoint, checkpointer_->save_async(m));
    }
    // The writer logs every file; a checkpoint someone asked for also says why and when.
    if (std::string_view(why) == "requested")
      logger_.info(absl::StrCat("checkpoint requested after global step ", global_step, ": ",
                                result.last_checkpoint));
    return absl::OkStatus();
  };

  if (reducer_) {
    GradientReducer* reducer = reducer_.get();
    model_->context().on_grad_ready = [reducer](Parameter& p) { reducer->grad_ready(p); };
  }
  const float grad_scale = 1.0f / static_cast<float>(world);  // equal per-rank batches

  int64_t step = result.resumed_at_step;
  int64_t run_steps = 0;  // steps of this process (timing warm-up)
  double steady_seconds = 0, steady_wait = 0;
  int64_t steady_steps = 0;
  for (int64_t epoch = first_epoch; epoch < config_.epochs && !result.stopped; ++epoch) {
    const bool resumed_epoch = epoch == first_epoch && first_step_in_epoch > 0;
    const int64_t skip = resumed_epoch ? first_step_in_epoch : 0;
    // Mid-epoch resume: the shard plan deals the rest of this epoch's global order, whatever the
    // world size now; later epochs start at 0.
    RETURN_IF_ERROR(train_->start_epoch(epoch, samples_consumed_at(skip, global_batch)));
    const auto t0 = Clock::now();
    double loss_sum = 0;  // over all ranks
    int64_t correct = 0, seen = 0, done = skip;
    int size = 0, valid = 0;
    auto last_report = t0;
    double epoch_wait = 0, epoch_step_seconds = 0;
    while (done < steps_per_epoch) {
      const auto step_t0 = Clock::now();
      const bool got = train_->next(images_.data(), labels_.data(), &size, &valid);
      if (!got || size != config_.batch_size) {
        // Every rank has the same number of full batches (shard plan), so all stop together.
        break;
      }
      if (step + 1 == config_.TEST_fail_at_step && comm_->rank() == config_.TEST_fail_rank)
        return absl::InternalError(absl::StrCat("TEST_fail_at_step: injected failure at step ",
                                                step + 1, " on rank ", comm_->rank()));
      const double step_lr = lr.lr_at(step);
      const Tensor& logits = model_->forward(images_, /*training=*/true);
      const LossResult r = loss_op_->forward_backward(
          logits, std::span<const int32_t>(labels_.data(), size), valid,
          config_.label_smoothing, &dlogits_);
      // stats[0] loss * valid, stats[1] correct, stats[2] valid (summed over ranks).
      double stats[3] = {r.loss * valid, static_cast<double>(r.correct),
                         static_cast<double>(valid)};
      double wait = 0;
      if (reducer_) {
        reducer_->begin_step();
        model_->backward(dlogits_);
        const CommTicket stats_ticket = comm_->allreduce_sum_async(stats, 3);
        wait = reducer_->finish(grad_scale);
        const auto w0 = Clock::now();
        comm_->wait(stats_ticket);
        wait += Seconds(w0, Clock::now());
      } else {
        model_->backward(dlogits_);
      }
      const double step_loss = stats[0] / std::max(1.0, stats[2]);
      if (!std::isfinite(step_loss))
        return absl::InternalError(absl::StrCat("training diverged: loss is ", step_loss,
                                                " at epoch ", epoch + 1, " step ", done + 1,
                                                " (lr ", step_lr, "); lower optimizer.lr"));
      sgd_.step(step_lr);
      loss_sum += stats[0];
      correct += static_cast<int64_t>(stats[1]);
      seen += static_cast<int64_t>(stats[2]);
      ++done;
      ++step;
      ++run_steps;
      if (config_.check_replicas_every > 0 && step % config_.check_replicas_every == 0)
        RETURN_IF_ERROR(check_replicas(absl::StrCat("after step ", step), /*buffers=*/false));
      const auto now = Clock::now();
      const double step_seconds = Seconds(step_t0, now);
      epoch_wait += wait;
      epoch_step_seconds += step_seconds;
      if (run_steps > kTimingWarmupSteps) {
        steady_seconds += step_seconds;
        steady_wait += wait;
        ++steady_steps;
      }
      const double ips = static_cast<double>(seen) / std::max(1e-9, Seconds(t0, now));
      if (bar && (Seconds(last_report, now) > 0.2 || done == steps_per_epoch)) {
        DrawBar(epoch, config_.epochs, done, steps_per_epoch, loss_sum / seen,
                static_cast<double>(correct) / seen, ips, false);
        last_report = now;
      } else if (lines && Seconds(last_report, now) > 10) {
        logger_.info(absl::StrFormat("epoch %d step %d/%d loss %.4f acc %.2f%% %.0f img/s lr %.4g",
                                     epoch + 1, done, steps_per_epoch, loss_sum / seen,
                                     100.0 * correct / seen, ips, step_lr));
        last_report = now;
      }
      RETURN_IF_ERROR(write_metrics(absl::StrFormat(
          R"({"step":%d,"epoch":%d,"loss":%.6f,"accuracy":%.6f,"lr":%.6g,"images_per_s":%.1f,"step_s":%.6f,"compute_s":%.6f,"comm_wait_s":%.6f})",
          step, epoch + 1, step_loss, stats[1] / std::max(1.0, stats[2]), step_lr, ips,
          step_seconds, step_seconds - wait, wait)));

      if (step == config_.TEST_sigterm_at_step && comm_->rank() == config_.TEST_sigterm_rank)
        ::raise(SIGTERM);
      // Step boundary: the hook (rank 0), then one tiny all-reduce agrees on the command and on
      // SIGTERM (any rank's), so every rank stops after the same step. Checkpoints themselves
      // are rank 0's business (all replicas are identical) and need no agreement.
      StepCommand command = StepCommand::kContinue;
      if (rank0 && hooks_.on_step) {
        StepReport rep;
        rep.epoch = epoch;
        rep.step_in_epoch = done;
        rep.steps_per_epoch = steps_per_epoch;
        rep.global_step = step;
        rep.total_steps = total_steps;
        rep.loss = step_loss;
        rep.accuracy = stats[1] / std::max(1.0, stats[2]);
        rep.lr = step_lr;
        rep.images_per_s = ips;
        rep.last_checkpoint = checkpointer_ ? checkpointer_->last_written() : std::string();
        command = hooks_.on_step(rep);
      }
      // flags[0]: rank 0's command; flags[1]: ranks that received SIGTERM.
      double flags[2] = {rank0 ? static_cast<double>(static_cast<int>(command)) : 0.0,
                         g_sigterm_count.load(std::memory_order_relaxed) > 0 ? 1.0 : 0.0};
      if (distributed()) comm_->allreduce_sum(flags, 2);
      const bool sigterm = flags[1] > 0;
      command = static_cast<StepCommand>(static_cast<int>(flags[0]));
      if (sigterm || command == StepCommand::kStop) {
        result.stopped = true;
        result.stop_reason = sigterm ? "SIGTERM" : "stop requested";
        if (rank0) {
          if (checkpointer_) {
            if (Status earlier = checkpointer_->wait(); !earlier.ok())
              logger_.warn(absl::StrCat("an earlier checkpoint failed: ", earlier.message()));
          }
          RETURN_IF_ERROR(save(epoch, done, step, /*wait=*/true, result.stop_reason.c_str()));
        }
        comm_->barrier();  // every rank leaves once the checkpoint is durable
        if (rank0)
          logger_.info(absl::StrCat(
              result.stop_reason, ": stopped after global step ", step, " of ", total_steps,
              result.last_checkpoint.empty()
                  ? std::string(" (no checkpoint.dir: nothing saved)")
                  : absl::StrCat("; resume from ", result.last_checkpoint)));
        break;
      }
      if (checkpointer_ && done < steps_per_epoch) {  // the epoch end has its own checkpoint
        const char* why = nullptr;
        if (command == StepCommand::kCheckpoint) why = "requested";
        else if (ck.every_steps > 0 && step % ck.every_steps == 0) why = "every_steps";
        else if (ck.every_seconds > 0 && Seconds(last_save, now) >= ck.every_seconds &&
                 !checkpointer_->busy())
          why = "every_seconds";
        if (why != nullptr) RETURN_IF_ERROR(save(epoch, done, step, /*wait=*/false, why));
      }
    }
    if (result.stopped) break;
    RETURN_IF_ERROR(train_->status());
    const bool last = epoch + 1 == config_.epochs;
    // End of the epoch: position (epoch + 1, 0). Taken before the evaluation, whose forward
    // passes do not change the state, so the write overlaps it. The last epoch's is the final
    // checkpoint below.
    if (!last) RETURN_IF_ERROR(save(epoch + 1, 0, step, /*wait=*/false, "end of epoch"));
    EpochResult er;
    er.epoch = epoch + 1;
    er.seconds = Seconds(t0, Clock::now());
    er.train_loss = seen ? loss_sum / seen : 0;
    er.train_accuracy = seen ? static_cast<double>(correct) / seen : 0;
    er.images_per_s = seen / std::max(1e-9, er.seconds);
    if (bar) DrawBar(epoch, config_.epochs, done, steps_per_epoch, er.train_loss,
                     er.train_accuracy, er.images_per_s, true);
    if (eval_ && (last || (config_.eval_every_epochs > 0 &&
                           (epoch + 1) % config_.eval_every_epochs == 0))) {
      broadcast_buffers();
      ASSIGN_OR_RETURN(er.eval, evaluate(*eval_));
      er.evaluated = true;
    }
    if (rank0)
      logger_.info(absl::StrFormat(
          "epoch %d/%d: train loss %.4f acc %.2f%%%s, %.0f img/s, %.1f s (compute %.1f s, "
          "communication wait %.2f s)",
          er.epoch, config_.epochs, er.train_loss, 100 * er.train_accuracy,
          er.evaluated ? absl::StrFormat(", eval loss %.4f acc %.2f%% (%d images)", er.eval.loss,
                                         100 * er.eval.accuracy, er.eval.samples)
                       : std::string(),
          er.images_per_s, er.seconds, epoch_step_seconds - epoch_wait, epoch_wait));
    RETURN_IF_ERROR(write_metrics(absl::StrFormat(
        R"({"epoch_end":%d,"train_loss":%.6f,"train_accuracy":%.6f,"images_per_s":%.1f,"seconds":%.3f,"compute_s":%.3f,"comm_wait_s":%.3f%s})",
        er.epoch, er.train_loss, er.train_accuracy, er.images_per_s, er.seconds,
        epoch_step_seconds - epoch_wait, epoch_wait,
        er.evaluated ? absl::StrFormat(R"(,"eval_loss":%.6f,"eval_accuracy":%.6f,"eval_samples":%d)",
                                       er.eval.loss, er.eval.accuracy, er.eval.samples)
                     : std::string())));
    if (er.evaluated) result.final_eval = er.eval;
    result.epochs.push_back(er);
  }
  model_->context().on_grad_ready = nullptr;
  result.steps = step;
  if (result.stopped) {
    checkpointer_.reset();
    return result;
  }
  broadcast_buffers();
  if (config_.check_replicas_every > 0)
    RETURN_IF_ERROR(check_replicas("at the end of training", /*buffers=*/true));
  if (step == result.resumed_at_step && !result.resumed_from.empty()) {
    // Resumed from the final checkpoint (a restart after training had finished): nothing to
    // train; evaluate so the run still reports its accuracy.
    if (rank0)
      logger_.info(absl::StrCat("resume: ", result.resumed_from,
                                " is the end of training; nothing left to train"));
    if (eval_) {
      ASSIGN_OR_RETURN(result.final_eval, evaluate(*eval_));
    }
  } else if (checkpointer_) {
    if (Status earlier = checkpointer_->wait(); !earlier.ok())
      logger_.warn(absl::StrCat("an earlier checkpoint failed: ", earlier.message()));
    RETURN_IF_ERROR(save(config_.epochs, 0, step, /*wait=*/true, "end of training"));
  }
  checkpointer_.reset();
  if (steady_steps > 0) {
    result.step_seconds = steady_seconds / steady_steps;
    result.comm_wait_seconds = steady_wait / steady_steps;
    result.images_per_s = global_batch / result.step_seconds;
  }
  return result;
}

}  // namespace resdist
