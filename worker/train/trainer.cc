// Training loop implementation. Buffers (images, labels, gradients) are allocated before the
// first step and reused; the step loop performs no large allocation.
#include "worker/train/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <span>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

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

Trainer::Trainer(const TrainConfig& config, Backend* backend, Model* model, BatchSource* train,
                 BatchSource* eval, Logger logger)
    : config_(config),
      backend_(backend),
      model_(model),
      train_(train),
      eval_(eval),
      logger_(std::move(logger)),
      sgd_(model->parameters(), config.sgd),
      loss_op_(backend->softmax_cross_entropy()) {
  const ModelSpec& s = model->spec();
  images_.resize(Dims{config.batch_size, s.in_channels, s.height, s.width});
  images_.zero();  // first touch now, not in the step loop
  labels_.assign(config.batch_size, 0);
}

Status Trainer::write_metrics(const std::string& line) {
  if (config_.metrics_path.empty()) return absl::OkStatus();
  std::ofstream out(config_.metrics_path, std::ios::app);
  out << line << '\n';
  if (!out)
    return absl::UnavailableError(absl::StrCat("metrics file ", config_.metrics_path,
                                               ": cannot append (", std::strerror(errno), ")"));
  return absl::OkStatus();
}

StatusOr<EvalResult> Trainer::evaluate(BatchSource& source) {
  RETURN_IF_ERROR(source.start_epoch(0, 0));
  const ModelSpec& s = model_->spec();
  const int64_t per = s.in_channels * s.height * s.width;
  double loss_sum = 0;
  int64_t correct = 0, seen = 0;
  int size = 0, valid = 0;
  while (source.next(images_.data(), labels_.data(), &size, &valid)) {
    const Tensor* batch = &images_;
    Tensor partial;
    if (size != config_.batch_size) {  // the last, smaller batch of the split
      partial.resize(Dims{size, s.in_channels, s.height, s.width});
      std::memcpy(partial.data(), images_.data(), sizeof(float) * size * per);
      batch = &partial;
    }
    const Tensor& logits = model_->forward(*batch, /*training=*/false);
    const LossResult r = loss_op_->forward_backward(
        logits, std::span<const int32_t>(labels_.data(), size), valid, 0.f, nullptr);
    loss_sum += r.loss * valid;
    correct += r.correct;
    seen += valid;
  }
  RETURN_IF_ERROR(source.status());
  EvalResult res;
  res.samples = seen;
  if (seen > 0) {
    res.loss = loss_sum / seen;
    res.accuracy = static_cast<double>(correct) / seen;
  }
  return res;
}

StatusOr<TrainResult> Trainer::run() {
  RETURN_IF_ERROR(ValidateTrainConfig(config_));
  const ModelSpec& s = model_->spec();
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
                                                   " gives no full batch of ", config_.batch_size));
  const int64_t total_steps = steps_per_epoch * config_.epochs;
  LrScheduler lr(config_.lr, steps_per_epoch, total_steps);
  const bool tty = isatty(STDERR_FILENO);
  const bool bar = config_.progress == ProgressMode::kBar ||
                   (config_.progress == ProgressMode::kAuto && tty);
  const bool lines = config_.progress == ProgressMode::kLines ||
                     (config_.progress == ProgressMode::kAuto && !tty);
  logger_.info(absl::StrCat("training ", s.arch, " (", model_->num_parameters(),
                            " parameters) on ", train_->describe(), ": ", config_.epochs,
                            " epochs x ", steps_per_epoch, " steps, batch ", config_.batch_size,
                            ", ", backend_->name(), " ", backend_->threads(), " threads"));

  TrainResult result;
  int64_t step = 0;
  for (int64_t epoch = 0; epoch < config_.epochs; ++epoch) {
    RETURN_IF_ERROR(train_->start_epoch(epoch, 0));
    const auto t0 = Clock::now();
    double loss_sum = 0;
    int64_t correct = 0, seen = 0, done = 0;
    int size = 0, valid = 0;
    auto last_report = t0;
    while (done < steps_per_epoch && train_->next(images_.data(), labels_.data(), &size, &valid)) {
      if (size != config_.batch_size) break;  // sources drop the partial last batch
      const double step_lr = lr.lr_at(step);
      const Tensor& logits = model_->forward(images_, /*training=*/true);
      const LossResult r = loss_op_->forward_backward(
          logits, std::span<const int32_t>(labels_.data(), size), valid,
          config_.label_smoothing, &dlogits_);
      if (!std::isfinite(r.loss))
        return absl::InternalError(absl::StrCat("training diverged: loss is ", r.loss,
                                                " at epoch ", epoch + 1, " step ", done + 1,
                                                " (lr ", step_lr, "); lower optimizer.lr"));
      model_->backward(dlogits_);
      sgd_.step(step_lr);
      loss_sum += r.loss * valid;
      correct += r.correct;
      seen += valid;
      ++done;
      ++step;
      const auto now = Clock::now();
      const double ips = seen / std::max(1e-9, Seconds(t0, now));
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
          R"({"step":%d,"epoch":%d,"loss":%.6f,"accuracy":%.6f,"lr":%.6g,"images_per_s":%.1f})",
          step, epoch + 1, r.loss, static_cast<double>(r.correct) / std::max(1, valid), step_lr,
          ips)));
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
      ASSIGN_OR_RETURN(er.eval, evaluate(*eval_));
      er.evaluated = true;
    }
    logger_.info(absl::StrFormat(
        "epoch %d/%d: train loss %.4f acc %.2f%%%s, %.0f img/s, %.1f s", er.epoch,
        config_.epochs, er.train_loss, 100 * er.train_accuracy,
        er.evaluated ? absl::StrFormat(", eval loss %.4f acc %.2f%% (%d images)", er.eval.loss,
                                       100 * er.eval.accuracy, er.eval.samples)
                     : std::string(),
        er.images_per_s, er.seconds));
    RETURN_IF_ERROR(write_metrics(absl::StrFormat(
        R"({"epoch_end":%d,"train_loss":%.6f,"train_accuracy":%.6f,"images_per_s":%.1f,"seconds":%.3f%s})",
        er.epoch, er.train_loss, er.train_accuracy, er.images_per_s, er.seconds,
        er.evaluated ? absl::StrFormat(R"(,"eval_loss":%.6f,"eval_accuracy":%.6f)", er.eval.loss,
                                       er.eval.accuracy)
                     : std::string())));
    if (er.evaluated) result.final_eval = er.eval;
    result.epochs.push_back(er);
  }
  result.steps = step;
  return result;
}

}  // namespace resdist
