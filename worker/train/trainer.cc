// Training loop implementation. Buffers (images, labels, gradients) are allocated before the
// first step and reused; the step loop performs no large allocation.
#include "worker/train/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "worker/train/reducer.h"

namespace resdist {
namespace {

using Clock = std::chrono::steady_clock;

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

Trainer::~Trainer() { model_->context().on_grad_ready = nullptr; }

Status Trainer::write_metrics(const std::string& line) {
  if (config_.metrics_path.empty() || comm_->rank() != 0) return absl::OkStatus();
  std::ofstream out(config_.metrics_path, std::ios::app);
  out << line << '\n';
  if (!out)
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
  Tensor partial;
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

StatusOr<TrainResult> Trainer::run() {
  RETURN_IF_ERROR(ValidateTrainConfig(config_));
  const ModelSpec& s = model_->spec();
  const int world = comm_->size();
  const bool rank0 = comm_->rank() == 0;
  const int64_t global_batch = config_.batch_size * world;
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
  RETURN_IF_ERROR(synchronize_replicas());
  const int64_t total_steps = steps_per_epoch * config_.epochs;
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
  if (reducer_) {
    GradientReducer* reducer = reducer_.get();
    model_->context().on_grad_ready = [reducer](Parameter& p) { reducer->grad_ready(p); };
  }
  const float grad_scale = 1.0f / static_cast<float>(world);  // equal per-rank batches

  TrainResult result;
  int64_t step = 0;
  double steady_seconds = 0, steady_wait = 0;
  int64_t steady_steps = 0;
  for (int64_t epoch = 0; epoch < config_.epochs; ++epoch) {
    RETURN_IF_ERROR(train_->start_epoch(epoch, 0));
    const auto t0 = Clock::now();
    double loss_sum = 0;  // over all ranks
    int64_t correct = 0, seen = 0, done = 0;
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
      if (config_.check_replicas_every > 0 && step % config_.check_replicas_every == 0)
        RETURN_IF_ERROR(check_replicas(absl::StrCat("after step ", step), /*buffers=*/false));
      const auto now = Clock::now();
      const double step_seconds = Seconds(step_t0, now);
      epoch_wait += wait;
      epoch_step_seconds += step_seconds;
      if (step > kTimingWarmupSteps) {
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
    }
    RETURN_IF_ERROR(train_->status());
    EpochResult er;
    er.epoch = epoch + 1;
    er.seconds = Seconds(t0, Clock::now());
    er.train_loss = seen ? loss_sum / seen : 0;
    er.train_accuracy = seen ? static_cast<double>(correct) / seen : 0;
    er.images_per_s = seen / std::max(1e-9, er.seconds);
    if (bar) DrawBar(epoch, config_.epochs, done, steps_per_epoch, er.train_loss,
                     er.train_accuracy, er.images_per_s, true);
    const bool last = epoch + 1 == config_.epochs;
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
  broadcast_buffers();
  if (config_.check_replicas_every > 0)
    RETURN_IF_ERROR(check_replicas("at the end of training", /*buffers=*/true));
  result.steps = step;
  if (steady_steps > 0) {
    result.step_seconds = steady_seconds / steady_steps;
    result.comm_wait_seconds = steady_wait / steady_steps;
    result.images_per_s = global_batch / result.step_seconds;
  }
  return result;
}

}  // namespace resdist
