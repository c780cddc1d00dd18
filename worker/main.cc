// resdist-worker: trains a ResNet. With --config job.yaml it runs the job file, data parallel
// across the ranks of `mpirun -np N resdist-worker --config job.yaml` (a world of one without
// mpirun); without --config the flags describe a single-process run. With --coordinator ADDR
// --job ID (the local launcher's command) the job comes from the coordinator instead of a file,
// and every rank registers, heartbeats and reports its outcome (worker/coordination/).
#include <cstdio>
#include <deque>
#include <exception>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/str_join.h"
#include "common/checkpoint.h"
#include "common/job_spec.h"
#include "common/log.h"
#include "worker/comm/communicator.h"
#include "worker/nn/model.h"
#include "worker/train/job.h"
#include "worker/coordination/session.h"
#include "worker/train/trainer.h"

namespace resdist {
namespace {

struct Flags {
  ModelSpec model;
  std::string shortcut = "A";
  bool num_classes_set = false;
  TrainConfig train;
  std::string schedule = "cosine";
  std::string train_path, eval_path;
  int64_t synthetic = 0, synthetic_eval = 0;
  std::string synthetic_shape = "32x32x3";
  int synthetic_classes = 10;
  int threads = 1;
  uint64_t seed = 1;
  int crop_padding = 0;
  bool flip = false;
  std::string progress = "auto";
  std::string in_memory = "auto";
  // --config mode
  std::string config;
  std::string coordinator, job_id;  // --coordinator mode (token in RESDIST_JOB_TOKEN)
  double bucket_mb = 0;  // > 0: overrides comm.bucket_mb
  JobOverrides overrides;
  int TEST_fail_at_startup_rank = -1;
};

Status ParseShape(const std::string& text, SyntheticSpec* spec) {
  std::vector<std::string> parts = absl::StrSplit(text, 'x');
  int v[3];
  if (parts.size() != 3 || !absl::SimpleAtoi(parts[0], &v[0]) ||
      !absl::SimpleAtoi(parts[1], &v[1]) || !absl::SimpleAtoi(parts[2], &v[2]))
    return absl::InvalidArgumentError(absl::StrCat("--synthetic-shape: '", text,
                                                   "' is not HxWxC (e.g. 32x32x3)"));
  spec->height = v[0], spec->width = v[1], spec->channels = v[2];
  return absl::OkStatus();
}

StatusOr<std::unique_ptr<BatchSource>> OpenSource(const Flags& f, const std::string& path,
                                                  bool training, int64_t synthetic_n,
                                                  int64_t synthetic_first) {
  if (!path.empty()) {
    data::LoaderOptions o;
    o.path = path;
    o.seed = f.seed;
    o.batch_size = static_cast<int>(f.train.batch_size);
    o.layout = data::BatchLayout::kNCHW;
    if (training) {
      o.augment.crop_padding = f.crop_padding;
      o.augment.horizontal_flip = f.flip;
      o.remainder = RemainderPolicy::kDrop;
      o.drop_last_batch = true;
    } else {
      o.shuffle = false;
      o.remainder = RemainderPolicy::kPad;
    }
    if (f.in_memory == "on") o.in_memory = data::InMemoryMode::kAlways;
    else if (f.in_memory == "off") o.in_memory = data::InMemoryMode::kNever;
    return OpenLoaderSource(o);
  }
  SyntheticSourceOptions o;
  RETURN_IF_ERROR(ParseShape(f.synthetic_shape, &o.data));
  o.data.num_samples = synthetic_n;
  o.data.num_classes = f.synthetic_classes;
  o.data.seed = f.seed;
  o.first_sample = synthetic_first;
  o.batch_size = static_cast<int>(f.train.batch_size);
  o.shuffle = training;
  o.drop_last_batch = training;
  o.shuffle_seed = f.seed;
  return MakeSyntheticSource(o);
}

// Rank 0's bridge between the trainer's hooks and the coordinator session: every step's progress
// becomes the next heartbeat's report; checkpoint and stop commands from the heartbeat replies
// become the step's StepCommand (the trainer agrees on it across ranks); every checkpoint file
// written is queued for the coordinator's index, carrying the ids of the requests it answers.
//
// Epochs: Progress.epoch is 0-based (proto/resdist/v1/job.proto; the CLI shows epoch + 1), like
// StepReport::epoch and CheckpointMeta::epoch; TrainResult's EpochResult::epoch is 1-based, so
// the final report converts it here (FinalProgress) and nowhere else.
class CoordinatorBridge {
 public:
  CoordinatorBridge(coordination::CoordinatorSession* coord, int64_t global_batch,
                    std::string resume_path, Logger log)
      : coord_(coord), global_batch_(global_batch), resume_path_(std::move(resume_path)),
        log_(std::move(log)) {}

  TrainerHooks hooks() {
    TrainerHooks h;
    h.on_step = [this](const StepReport& r) { return OnStep(r); };
    h.on_checkpoint = [this](const std::string& path, const CheckpointMeta& meta) {
      OnCheckpoint(path, meta);
    };
    return h;
  }

  // Training thread (rank 0), after every step: never blocks on the network.
  StepCommand OnStep(const StepReport& r) {
    coordination::Progress p;
    p.epoch = r.epoch;
    p.step = r.global_step;
    p.total_steps = r.total_steps;
    p.samples = r.step_in_epoch * global_batch_;
    p.loss = r.loss;
    p.train_accuracy = r.accuracy;
    p.learning_rate = r.lr;
    p.images_per_s = r.images_per_s;
    p.last_checkpoint = r.last_checkpoint;
    coord_->report_progress(p);
    StepCommand command = StepCommand::kContinue;
    for (const coordination::Command& c : coord_->poll_commands()) {
      if (c.kind == coordination::Command::Kind::kStop) {
        log_.info(absl::StrCat("coordinator: stop (", c.reason, ") after global step ",
                               r.global_step));
        command = StepCommand::kStop;
      } else if (command == StepCommand::kContinue) {
        command = StepCommand::kCheckpoint;
      }
      if (c.kind == coordination::Command::Kind::kCheckpoint) {
        std::lock_guard<std::mutex> lock(mu_);
        requests_.push_back({r.global_step, c.request_id});
      }
    }
    if (coord_->stop_requested()) command = StepCommand::kStop;
    return command;
  }

  // Checkpoint writer thread (rank 0), after a file is complete. The file is validated (which
  // also yields its checksum) before it is offered to the index the coordinator resumes from.
  void OnCheckpoint(const std::string& path, const CheckpointMeta& meta) {
    coordination::CheckpointReport report;
    report.path = path;
    report.epoch = meta.epoch;
    report.step = meta.global_step;
    report.samples = meta.samples_consumed;
    std::error_code ec;
    const auto bytes = std::filesystem::file_size(path, ec);
    report.bytes = ec ? 0 : static_cast<int64_t>(bytes);
    report.checksum = meta.checksum;
    if (report.checksum.empty()) {
      StatusOr<CheckpointMeta> read = ValidateCheckpoint(path);
      if (!read.ok()) {
        log_.error(absl::StrCat("checkpoint ", path, " does not validate after writing; not "
                                "reported to the coordinator: ", read.status().message()));
        return;
      }
      report.checksum = read->checksum;
    }
    {
      // Requests made at or before this checkpoint's step are answered by it (a request on an
      // epoch's last step is answered by the epoch-end or final checkpoint of the same step).
      std::lock_guard<std::mutex> lock(mu_);
      std::vector<std::string> ids;
      while (!requests_.empty() && requests_.front().first <= meta.global_step) {
        ids.push_back(requests_.front().second);
        requests_.pop_front();
      }
      report.request_id = absl::StrJoin(ids, ",");
    }
    // Runs on the session's heartbeat thread, possibly after this bridge is gone: copies only.
    coord_->report_checkpoint_async(std::move(report), [resume = resume_path_, log = log_](
                                                           const std::vector<std::string>& pruned) {
      // The checkpointer's keep_last normally deleted these already; the index is the authority
      // for anything it missed. Never the file this run resumed from.
      for (const std::string& old : pruned) {
        if (old == resume) continue;
        std::error_code ec;
        if (std::filesystem::remove(old, ec))
          log.info(absl::StrCat("checkpoint: removed ", old, " (pruned from the coordinator's index)"));
      }
    });
  }

 private:
  coordination::CoordinatorSession* const coord_;
  const int64_t global_batch_;
  const std::string resume_path_;
  Logger log_;
  std::mutex mu_;
  std::deque<std::pair<int64_t, std::string>> requests_;  // GUARDED_BY(mu_) (step, request id)
};

// The final report (finished = true): the job SUCCEEDS when every rank has sent it.
coordination::Progress FinalProgress(const JobSpec& job, const TrainResult& result) {
  coordination::Progress p;
  p.step = result.steps;
  p.total_steps = result.steps;
  p.images_per_s = result.images_per_s;
  p.epoch = std::max<int64_t>(0, job.epochs - 1);  // 0-based: the last epoch was trained
  p.last_checkpoint = result.last_checkpoint;
  if (!result.epochs.empty()) {
    p.loss = result.epochs.back().train_loss;
    p.train_accuracy = result.epochs.back().train_accuracy;
  }
  if (result.final_eval.samples > 0) {
    p.eval_accuracy = result.final_eval.accuracy;
    p.eval_loss = result.final_eval.loss;
  }
  return p;
}

// Runs the job file on every rank of the MPI job (or a world of one). Any error on any rank ends
// the whole job through Communicator::abort with that rank's message.
int RunConfig(Flags& f, const CLI::App& app) {
  std::unique_ptr<Communicator> comm;
  if (LaunchedByMpiRuntime()) {
    auto c = MakeMpiCommunicator();
    if (!c.ok()) {
      std::fprintf(stderr, "resdist-worker: %s\n", std::string(c.status().message()).c_str());
      return 2;
    }
    comm = std::move(*c);
  } else {
    comm = MakeSingleCommunicator();
  }
  Communicator* cm = comm.get();
  std::unique_ptr<coordination::CoordinatorSession> coord;
  // With a coordinator, the failing rank reports its message before the whole job is aborted.
  auto fail = [cm, &coord](const Status& s, int code) {
    if (coord) coord->report_failure(std::string(s.message())).IgnoreError();
    cm->abort(std::string(s.message()), code);
  };
  try {
    StatusOr<JobSpec> job = absl::UnknownError("no job");
    if (!f.coordinator.empty()) {
      auto options =
          coordination::SessionOptionsFromEnv(f.coordinator, f.job_id, cm->rank(), cm->size());
      if (!options.ok()) fail(options.status(), 2);
      auto session = coordination::CoordinatorSession::connect(*options);
      if (!session.ok()) fail(session.status(), 2);
      coord = std::move(*session);
      job = coord->job_spec();
    } else {
      job = ParseJobFile(f.config);
    }
    if (cm->rank() == f.TEST_fail_at_startup_rank)
      fail(absl::InternalError("TEST_fail_at_startup_rank: injected start-up failure"), 1);
    if (!job.ok()) fail(job.status(), 2);
    if (app.count("--epochs")) job->epochs = f.train.epochs;
    if (app.count("--max-steps-per-epoch")) job->max_steps_per_epoch = f.train.max_steps_per_epoch;
    if (app.count("--threads")) job->threads_per_worker = f.threads;
    if (app.count("--progress")) job->progress = f.progress;
    if (f.bucket_mb > 0) job->comm.bucket_mb = f.bucket_mb;
    // A restarted attempt resumes where the coordinator says (its newest indexed checkpoint,
    // a path under the data root); the first attempt follows the job's own `resume:`.
    if (coord && !coord->assignment().resume_from().path().empty())
      job->resume = coord->assignment().resume_from().path();
    if (Status s = ValidateJobSpec(*job); !s.ok()) fail(s, 2);
    Logger log("worker", cm->rank(), job->name);
    auto session = JobSession::Create(*job, cm, f.overrides, log);
    if (!session.ok()) fail(session.status(), 2);
    std::unique_ptr<CoordinatorBridge> bridge;
    if (coord && cm->rank() == 0) {  // commands are rank 0's; the trainer broadcasts them
      const std::string resume =
          job->resume == "none" || job->resume == "latest" ? std::string() : job->resume;
      bridge = std::make_unique<CoordinatorBridge>(coord.get(), job->batch_size, resume, log);
      (*session)->set_hooks(bridge->hooks());
    }
    auto result = (*session)->run();
    if (!result.ok()) fail(result.status(), 1);
    if (cm->rank() == 0) {
      if (result->final_eval.samples > 0)
        std::printf("final eval accuracy: %.4f (%lld images, loss %.4f)\n",
                    result->final_eval.accuracy,
                    static_cast<long long>(result->final_eval.samples), result->final_eval.loss);
      else if (!result->epochs.empty())
        std::printf("final train accuracy: %.4f (no evaluation data)\n",
                    result->epochs.back().train_accuracy);
      if (result->step_seconds > 0)
        std::printf(
            "throughput: %.1f images/s (%d ranks x %lld, steady state after %lld steps), "
            "step %.4f s, communication wait %.4f s per step%s\n",
            result->images_per_s, cm->size(),
            static_cast<long long>((*session)->train_config().batch_size),
            static_cast<long long>(Trainer::kTimingWarmupSteps), result->step_seconds,
            result->comm_wait_seconds, f.overrides.skip_allreduce ? " (all-reduce skipped)" : "");
      std::fflush(stdout);
    }
    if (coord && result->stopped) {
      // Stopped before the end (a stop command, or SIGTERM after writing a checkpoint): not a
      // success. A SIGTERM that did not come through the coordinator (Slurm, Kubernetes
      // preemption) fails the attempt with that reason, so it restarts from the checkpoint.
      // The stop checkpoint's report is queued: give it a few seconds to reach the index.
      for (int i = 0; i < 100 && coord->pending_checkpoint_reports() > 0; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (cm->rank() == 0 && !coord->stop_requested()) {
        coord->report_failure(absl::StrCat(
            result->stop_reason, ": stopped after global step ", result->steps,
            result->last_checkpoint.empty() ? std::string()
                                            : absl::StrCat(", checkpoint ", result->last_checkpoint)))
            .IgnoreError();
      }
    } else if (coord) {
      if (Status s = coord->finish(FinalProgress(*job, *result)); !s.ok())
        std::fprintf(stderr, "resdist-worker: rank %d: final report to the coordinator: %s\n",
                     cm->rank(), std::string(s.message()).c_str());
    }
    session->reset();
  } catch (const std::exception& e) {
    fail(absl::InternalError(absl::StrCat("uncaught exception: ", e.what())), 1);
  }
  return 0;
}

int Run(Flags& f) {
  Logger log("worker");
  auto fail = [&](const Status& s, int code) {
    std::fprintf(stderr, "resdist-worker: %s\n", std::string(s.message()).c_str());
    return code;
  };
  if (f.shortcut != "A" && f.shortcut != "B")
    return fail(absl::InvalidArgumentError(absl::StrCat(
                    "--shortcut: '", f.shortcut, "' is not a shortcut option; expected A or B")),
                2);
  f.model.shortcut = f.shortcut[0];
  if (f.train_path.empty() && f.synthetic <= 0)
    return fail(absl::InvalidArgumentError(
                    "no training data: pass --train FILE.h5 or --synthetic N (N > 0)"),
                2);
  auto schedule = ParseLrSchedule(f.schedule);
  if (!schedule.ok()) return fail(schedule.status(), 2);
  f.train.lr.schedule = *schedule;
  f.train.lr.base_lr = f.train.sgd.lr;
  f.train.lr.global_batch = f.train.batch_size;
  if (f.progress == "auto") f.train.progress = ProgressMode::kAuto;
  else if (f.progress == "bar") f.train.progress = ProgressMode::kBar;
  else if (f.progress == "lines") f.train.progress = ProgressMode::kLines;
  else if (f.progress == "off") f.train.progress = ProgressMode::kOff;
  else
    return fail(absl::InvalidArgumentError(absl::StrCat(
                    "--progress: '", f.progress, "' is not allowed; expected auto, bar, lines or off")),
                2);
  if (Status s = ValidateTrainConfig(f.train); !s.ok()) return fail(s, 2);

  auto train = OpenSource(f, f.train_path, true, f.synthetic, 0);
  if (!train.ok()) return fail(train.status(), 2);
  std::unique_ptr<BatchSource> eval;
  if (!f.eval_path.empty() || (f.train_path.empty() && f.synthetic_eval > 0)) {
    auto e = OpenSource(f, f.eval_path, false, f.synthetic_eval, f.synthetic);
    if (!e.ok()) return fail(e.status(), 2);
    eval = std::move(*e);
  }
  f.model.in_channels = (*train)->channels();
  f.model.height = (*train)->height();
  f.model.width = (*train)->width();
  if (!f.num_classes_set) f.model.num_classes = (*train)->num_classes();
  if (eval && (eval->channels() != f.model.in_channels || eval->height() != f.model.height ||
               eval->width() != f.model.width))
    return fail(absl::InvalidArgumentError(absl::StrCat(
                    "evaluation data ", eval->describe(), " has another image shape than the training data ",
                    (*train)->describe())),
                2);

  auto backend = MakeCpuBackend(f.threads);
  auto model = Model::Build(f.model, backend.get(), f.seed);
  if (!model.ok()) return fail(model.status(), 2);
  Trainer trainer(f.train, backend.get(), model->get(), train->get(), eval.get(), log);
  auto result = trainer.run();
  if (!result.ok()) return fail(result.status(), 1);
  if (eval) {
    std::printf("final eval accuracy: %.4f (%lld images, loss %.4f)\n",
                result->final_eval.accuracy, static_cast<long long>(result->final_eval.samples),
                result->final_eval.loss);
  } else if (!result->epochs.empty()) {
    std::printf("final train accuracy: %.4f (no evaluation data)\n",
                result->epochs.back().train_accuracy);
  }
  return 0;
}

}  // namespace
}  // namespace resdist

int main(int argc, char** argv) {
  resdist::Flags f;
  CLI::App app{"resdist-worker: train a ResNet (--config job.yaml: the job file, data parallel "
               "under mpirun)"};
  app.add_option("--config", f.config, "job file (YAML or JSON, docs/job-file.md); other flags "
                 "then override --epochs, --max-steps-per-epoch, --threads, --progress");
  app.add_option("--bucket-mb", f.bucket_mb, "override comm.bucket_mb");
  app.add_option("--check-replicas-every", f.overrides.check_replicas_every,
                 "verify bit-identical parameters on all ranks every N steps (0: never)");
  // Hidden: benchmarks and tests.
  app.add_flag("--skip-allreduce", f.overrides.skip_allreduce)->group("");
  app.add_option("--TEST_fail_rank", f.overrides.TEST_fail_rank)->group("");
  app.add_option("--TEST_fail_at_step", f.overrides.TEST_fail_at_step)->group("");
  app.add_option("--TEST_fail_at_startup_rank", f.TEST_fail_at_startup_rank)->group("");
  app.add_option("--arch", f.model.arch, "resnet20|32|44|56|110, resnet18|34|50|101|152, resmlp");
  app.add_option_function<int64_t>("--num-classes", [&](int64_t v) {
    f.model.num_classes = v;
    f.num_classes_set = true;
  }, "classes (default: from the data)");
  app.add_option("--shortcut", f.shortcut, "CIFAR ResNets: A (parameter-free) or B (projection)");
  app.add_flag("--small-input-stem", f.model.small_input_stem, "ImageNet ResNets: 3x3 stride-1 stem, no max pool");
  app.add_flag("--zero-init-residual", f.model.zero_init_residual, "zero the last BN scale of each block");
  app.add_option("--dropout", f.model.dropout, "resmlp dropout probability");
  app.add_option("--train", f.train_path, "training set (resdist HDF5)");
  app.add_option("--eval", f.eval_path, "evaluation set (resdist HDF5)");
  app.add_option("--synthetic", f.synthetic, "train on N synthetic images instead of a file");
  app.add_option("--synthetic-eval", f.synthetic_eval, "evaluate on N synthetic images");
  app.add_option("--synthetic-shape", f.synthetic_shape, "HxWxC of synthetic images");
  app.add_option("--synthetic-classes", f.synthetic_classes, "classes of synthetic images");
  app.add_option("--in-memory", f.in_memory, "auto|on|off: load the whole file into memory");
  app.add_option("--epochs", f.train.epochs, "epochs");
  app.add_option("--batch-size", f.train.batch_size, "batch size");
  app.add_option("--max-steps-per-epoch", f.train.max_steps_per_epoch, "cap on steps per epoch (0: all)");
  app.add_option("--lr", f.train.sgd.lr, "peak learning rate");
  app.add_option("--momentum", f.train.sgd.momentum, "SGD momentum");
  app.add_flag("--nesterov", f.train.sgd.nesterov, "Nesterov momentum");
  app.add_option("--weight-decay", f.train.sgd.weight_decay, "L2 weight decay");
  app.add_flag("--no-decay-bn-bias{false}", f.train.sgd.decay_bn_and_bias,
               "no weight decay on batch-norm and bias parameters");
  app.add_option("--schedule", f.schedule, "constant|step|cosine");
  app.add_option("--warmup-epochs", f.train.lr.warmup_epochs, "linear warm-up epochs");
  app.add_option("--milestones", f.train.lr.milestones, "step schedule: epochs where lr *= gamma");
  app.add_option("--gamma", f.train.lr.gamma, "step schedule multiplier");
  app.add_flag("--linear-scaling", f.train.lr.linear_scaling, "lr x batch / 256");
  app.add_option("--label-smoothing", f.train.label_smoothing, "label smoothing in [0, 1)");
  app.add_option("--eval-every-epochs", f.train.eval_every_epochs, "evaluation period (0: only at the end)");
  app.add_option("--threads", f.threads, "compute threads");
  app.add_option("--seed", f.seed, "seed for initialization, shuffling, augmentation");
  app.add_option("--crop-padding", f.crop_padding, "random crop padding (0: off)");
  app.add_flag("--flip", f.flip, "random horizontal flips");
  app.add_option("--progress", f.progress, "auto|bar|lines|off");
  app.add_option("--metrics", f.train.metrics_path, "append JSON-lines metrics to this file");
  app.add_option("--coordinator", f.coordinator,
                 "coordinator host:port: take the job from it (with --job; token in "
                 "RESDIST_JOB_TOKEN) instead of --config");
  app.add_option("--job", f.job_id, "job id at the coordinator");
  CLI11_PARSE(app, argc, argv);
  if (f.coordinator.empty() != f.job_id.empty()) {
    std::fprintf(stderr, "resdist-worker: --coordinator and --job go together\n");
    return 2;
  }
  if (!f.config.empty() && !f.coordinator.empty()) {
    std::fprintf(stderr, "resdist-worker: give either --config or --coordinator/--job\n");
    return 2;
  }
  if (!f.config.empty() || !f.coordinator.empty()) return resdist::RunConfig(f, app);
  return resdist::Run(f);
}
