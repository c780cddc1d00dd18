// JobSpec -> model spec, data sources and training configuration (see job.h).
#include "worker/train/job.h"

#include <filesystem>
#include <fstream>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace resdist {

StatusOr<ModelSpec> ModelSpecFromJob(const JobSpec& job) {
  ModelSpec m;
  m.arch = job.model.arch;
  m.num_classes = job.model.num_classes;
  m.shortcut = job.model.shortcut.empty() ? 'A' : job.model.shortcut[0];
  m.small_input_stem = job.model.small_input_stem;
  m.zero_init_residual = job.model.zero_init_residual;
  m.dropout = static_cast<float>(job.model.dropout);
  m.stage_blocks.assign(job.model.stage_blocks.begin(), job.model.stage_blocks.end());
  m.base_width = job.model.base_width;
  if (job.model.mlp_width > 0) m.mlp_width = job.model.mlp_width;
  if (job.model.mlp_hidden > 0) m.mlp_hidden = job.model.mlp_hidden;
  return m;
}

namespace {

// `train` (for the evaluation split): its normalization statistics are reused.
StatusOr<std::unique_ptr<BatchSource>> OpenJobSource(const JobSpec& job, bool training,
                                                     int rank, int world, int64_t batch,
                                                     const BatchSource* train = nullptr) {
  const JobSpec::Data& d = job.data;
  if (!d.train.empty()) {
    data::LoaderOptions o;
    o.path = training ? d.train : d.eval;
    o.rank = rank;
    o.world_size = world;
    o.seed = job.seed;
    o.batch_size = static_cast<int>(batch);
    o.layout = data::BatchLayout::kNCHW;
    if (training) {
      o.augment.crop_padding = static_cast<int>(d.augment.crop_padding);
      o.augment.horizontal_flip = d.augment.flip;
      o.remainder = RemainderPolicy::kDrop;
      o.drop_last_batch = true;
    } else {
      o.shuffle = false;
      o.remainder = RemainderPolicy::kPad;
      if (train) train->normalization(&o.normalize_mean, &o.normalize_std);
    }
    if (d.in_memory == "on") o.in_memory = data::InMemoryMode::kAlways;
    if (d.in_memory == "off") o.in_memory = data::InMemoryMode::kNever;
    return OpenLoaderSource(o);
  }
  const JobSpec::Data::Synthetic& syn = d.synthetic;
  SyntheticSourceOptions o;
  o.data.height = static_cast<int>(syn.height);
  o.data.width = static_cast<int>(syn.width);
  o.data.channels = static_cast<int>(syn.channels);
  o.data.num_classes = static_cast<int>(syn.classes);
  o.data.seed = job.seed;
  o.data.num_samples = training ? syn.train_samples : syn.eval_samples;
  o.first_sample = training ? 0 : syn.train_samples;
  o.batch_size = static_cast<int>(batch);
  o.shuffle = training;
  o.drop_last_batch = training;
  o.shuffle_seed = job.seed;
  o.use_shard_plan = true;
  o.rank = rank;
  o.world_size = world;
  return MakeSyntheticSource(o);
}

}  // namespace

StatusOr<std::unique_ptr<JobSession>> JobSession::Create(const JobSpec& job, Communicator* comm,
                                                         const JobOverrides& ov, Logger logger) {
  RETURN_IF_ERROR(ValidateJobSpec(job));
  const int world = comm->size(), rank = comm->rank();
  if (job.batch_size % world != 0)
    return absl::InvalidArgumentError(absl::StrCat(
        "batch_size: ", job.batch_size, " is not allowed with ", world,
        " ranks; expected a multiple of the number of ranks (the global batch is split evenly)"));
  std::unique_ptr<JobSession> s(new JobSession());
  TrainConfig& c = s->config_;
  c.batch_size = job.batch_size / world;
  c.epochs = job.epochs;
  c.max_steps_per_epoch = job.max_steps_per_epoch;
  c.sgd.lr = job.optimizer.lr;
  c.sgd.momentum = job.optimizer.momentum;
  c.sgd.nesterov = job.optimizer.nesterov;
  c.sgd.weight_decay = job.optimizer.weight_decay;
  c.sgd.decay_bn_and_bias = job.optimizer.decay_bn_and_bias;
  ASSIGN_OR_RETURN(c.lr.schedule, ParseLrSchedule(job.optimizer.schedule));
  c.lr.base_lr = job.optimizer.lr;
  c.lr.warmup_epochs = job.optimizer.warmup_epochs;
  c.lr.milestones = job.optimizer.milestones;
  c.lr.gamma = job.optimizer.gamma;
  c.lr.linear_scaling = job.optimizer.linear_scaling;
  c.lr.global_batch = job.batch_size;
  c.label_smoothing = static_cast<float>(job.optimizer.label_smoothing);
  c.eval_every_epochs = job.eval_every_epochs;
  c.progress = job.progress == "bar"     ? ProgressMode::kBar
               : job.progress == "lines" ? ProgressMode::kLines
               : job.progress == "off"   ? ProgressMode::kOff
                                         : ProgressMode::kAuto;
  c.bucket_mb = job.comm.bucket_mb;
  c.skip_allreduce = ov.skip_allreduce;
  c.check_replicas_every = ov.check_replicas_every;
  c.TEST_fail_at_step = ov.TEST_fail_at_step;
  c.TEST_fail_rank = ov.TEST_fail_rank;
  c.TEST_sigterm_at_step = ov.TEST_sigterm_at_step;
  c.TEST_sigterm_rank = ov.TEST_sigterm_rank;
  c.checkpoint.dir = EffectiveCheckpointDir(job);
  c.checkpoint.every_steps = job.checkpoint.every_steps;
  c.checkpoint.every_seconds = job.checkpoint.every_seconds;
  c.checkpoint.keep_last = job.checkpoint.keep_last;
  c.checkpoint.resume = job.resume;
  c.checkpoint.job_spec = JobSpecToYaml(job);
  c.checkpoint.seed = job.seed;
  const bool resuming = !job.resume.empty() && job.resume != "none";
  if (!job.output_dir.empty() && ov.write_metrics) {
    c.metrics_path = (std::filesystem::path(job.output_dir) / "metrics.jsonl").string();
    if (rank == 0) {
      std::error_code ec;
      std::filesystem::create_directories(job.output_dir, ec);
      if (ec)
        return absl::UnavailableError(absl::StrCat("output_dir: cannot create ", job.output_dir,
                                                   " (", ec.message(), ")"));
      // A resumed run appends to the metrics of the run it continues.
      std::ofstream truncate(c.metrics_path, resuming ? std::ios::app : std::ios::trunc);
      if (!truncate)
        return absl::UnavailableError(
            absl::StrCat("output_dir: cannot write ", c.metrics_path));
    }
  }
  RETURN_IF_ERROR(ValidateTrainConfig(c));

  ASSIGN_OR_RETURN(s->train_, OpenJobSource(job, true, rank, world, c.batch_size));
  const bool has_eval = !job.data.train.empty() ? !job.data.eval.empty()
                                                : job.data.synthetic.eval_samples > 0;
  if (has_eval) {
    ASSIGN_OR_RETURN(s->eval_, OpenJobSource(job, false, rank, world, c.batch_size, s->train_.get()));
  }
  ASSIGN_OR_RETURN(ModelSpec m, ModelSpecFromJob(job));
  m.in_channels = s->train_->channels();
  m.height = s->train_->height();
  m.width = s->train_->width();
  if (m.num_classes == 0) m.num_classes = s->train_->num_classes();
  if (s->eval_ && (s->eval_->channels() != m.in_channels || s->eval_->height() != m.height ||
                   s->eval_->width() != m.width))
    return absl::InvalidArgumentError(absl::StrCat("data.eval: ", s->eval_->describe(),
                                                   " has another image shape than data.train ",
                                                   s->train_->describe()));
  s->backend_ = MakeCpuBackend(static_cast<int>(job.threads_per_worker));
  std::function<void(float*, size_t)> bn_sync;
  if (job.model.sync_batchnorm)
    bn_sync = [comm](float* data, size_t count) { comm->allreduce_sum(data, count); };
  ASSIGN_OR_RETURN(s->model_, Model::Build(m, s->backend_.get(), job.seed, std::move(bn_sync)));
  s->trainer_ = std::make_unique<Trainer>(c, s->backend_.get(), s->model_.get(), s->train_.get(),
                                          s->eval_.get(), std::move(logger), comm);
  return s;
}

}  // namespace resdist
