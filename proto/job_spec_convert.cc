// Field-by-field copies; keep in the order of common/job_spec.h so a new field is easy to spot.
#include "proto/job_spec_convert.h"

namespace resdist {
namespace {

template <typename P, typename T>
void Take(bool has, const P& value, T* out) {
  if (has) *out = static_cast<T>(value);
}
void TakeString(const std::string& value, std::string* out) {
  if (!value.empty()) *out = value;
}

}  // namespace

JobSpec JobSpecFromProto(const v1::JobSpec& p) {
  JobSpec j;
  TakeString(p.name(), &j.name);

  const v1::ModelSpec& m = p.model();
  TakeString(m.arch(), &j.model.arch);
  Take(m.has_num_classes(), m.num_classes(), &j.model.num_classes);
  TakeString(m.shortcut(), &j.model.shortcut);
  Take(m.has_small_input_stem(), m.small_input_stem(), &j.model.small_input_stem);
  Take(m.has_zero_init_residual(), m.zero_init_residual(), &j.model.zero_init_residual);
  Take(m.has_dropout(), m.dropout(), &j.model.dropout);
  Take(m.has_sync_batchnorm(), m.sync_batchnorm(), &j.model.sync_batchnorm);
  if (m.stage_blocks_size() > 0) j.model.stage_blocks.assign(m.stage_blocks().begin(), m.stage_blocks().end());
  Take(m.has_base_width(), m.base_width(), &j.model.base_width);
  Take(m.has_mlp_width(), m.mlp_width(), &j.model.mlp_width);
  Take(m.has_mlp_hidden(), m.mlp_hidden(), &j.model.mlp_hidden);

  const v1::DataSpec& d = p.data();
  j.data.train = d.train();
  j.data.eval = d.eval();
  Take(d.augment().has_crop_padding(), d.augment().crop_padding(), &j.data.augment.crop_padding);
  Take(d.augment().has_flip(), d.augment().flip(), &j.data.augment.flip);
  TakeString(d.in_memory(), &j.data.in_memory);
  const v1::SyntheticDataSpec& s = d.synthetic();
  Take(s.has_train_samples(), s.train_samples(), &j.data.synthetic.train_samples);
  Take(s.has_eval_samples(), s.eval_samples(), &j.data.synthetic.eval_samples);
  Take(s.has_height(), s.height(), &j.data.synthetic.height);
  Take(s.has_width(), s.width(), &j.data.synthetic.width);
  Take(s.has_channels(), s.channels(), &j.data.synthetic.channels);
  Take(s.has_classes(), s.classes(), &j.data.synthetic.classes);

  Take(p.has_batch_size(), p.batch_size(), &j.batch_size);
  Take(p.has_epochs(), p.epochs(), &j.epochs);
  Take(p.has_max_steps_per_epoch(), p.max_steps_per_epoch(), &j.max_steps_per_epoch);

  const v1::OptimizerSpec& o = p.optimizer();
  Take(o.has_lr(), o.lr(), &j.optimizer.lr);
  Take(o.has_momentum(), o.momentum(), &j.optimizer.momentum);
  Take(o.has_nesterov(), o.nesterov(), &j.optimizer.nesterov);
  Take(o.has_weight_decay(), o.weight_decay(), &j.optimizer.weight_decay);
  Take(o.has_decay_bn_and_bias(), o.decay_bn_and_bias(), &j.optimizer.decay_bn_and_bias);
  TakeString(o.schedule(), &j.optimizer.schedule);
  Take(o.has_warmup_epochs(), o.warmup_epochs(), &j.optimizer.warmup_epochs);
  if (o.milestones_size() > 0) j.optimizer.milestones.assign(o.milestones().begin(), o.milestones().end());
  Take(o.has_gamma(), o.gamma(), &j.optimizer.gamma);
  Take(o.has_linear_scaling(), o.linear_scaling(), &j.optimizer.linear_scaling);
  Take(o.has_label_smoothing(), o.label_smoothing(), &j.optimizer.label_smoothing);

  Take(p.has_seed(), p.seed(), &j.seed);
  Take(p.has_threads_per_worker(), p.threads_per_worker(), &j.threads_per_worker);
  Take(p.comm().has_bucket_mb(), p.comm().bucket_mb(), &j.comm.bucket_mb);
  Take(p.has_eval_every_epochs(), p.eval_every_epochs(), &j.eval_every_epochs);
  j.output_dir = p.output_dir();
  TakeString(p.progress(), &j.progress);
  const v1::CheckpointSpec& c = p.checkpoint();
  j.checkpoint.dir = c.dir();
  Take(c.has_every_steps(), c.every_steps(), &j.checkpoint.every_steps);
  Take(c.has_every_seconds(), c.every_seconds(), &j.checkpoint.every_seconds);
  Take(c.has_keep_last(), c.keep_last(), &j.checkpoint.keep_last);
  TakeString(p.resume(), &j.resume);
  Take(p.has_workers(), p.workers(), &j.workers);
  Take(p.has_max_restarts(), p.max_restarts(), &j.max_restarts);
  return j;
}

v1::JobSpec JobSpecToProto(const JobSpec& j) {
  v1::JobSpec p;
  p.set_name(j.name);

  v1::ModelSpec* m = p.mutable_model();
  m->set_arch(j.model.arch);
  m->set_num_classes(j.model.num_classes);
  m->set_shortcut(j.model.shortcut);
  m->set_small_input_stem(j.model.small_input_stem);
  m->set_zero_init_residual(j.model.zero_init_residual);
  m->set_dropout(j.model.dropout);
  m->set_sync_batchnorm(j.model.sync_batchnorm);
  for (int64_t b : j.model.stage_blocks) m->add_stage_blocks(b);
  m->set_base_width(j.model.base_width);
  m->set_mlp_width(j.model.mlp_width);
  m->set_mlp_hidden(j.model.mlp_hidden);

  v1::DataSpec* d = p.mutable_data();
  d->set_train(j.data.train);
  d->set_eval(j.data.eval);
  d->mutable_augment()->set_crop_padding(j.data.augment.crop_padding);
  d->mutable_augment()->set_flip(j.data.augment.flip);
  d->set_in_memory(j.data.in_memory);
  v1::SyntheticDataSpec* s = d->mutable_synthetic();
  s->set_train_samples(j.data.synthetic.train_samples);
  s->set_eval_samples(j.data.synthetic.eval_samples);
  s->set_height(j.data.synthetic.height);
  s->set_width(j.data.synthetic.width);
  s->set_channels(j.data.synthetic.channels);
  s->set_classes(j.data.synthetic.classes);

  p.set_batch_size(j.batch_size);
  p.set_epochs(j.epochs);
  p.set_max_steps_per_epoch(j.max_steps_per_epoch);

  v1::OptimizerSpec* o = p.mutable_optimizer();
  o->set_lr(j.optimizer.lr);
  o->set_momentum(j.optimizer.momentum);
  o->set_nesterov(j.optimizer.nesterov);
  o->set_weight_decay(j.optimizer.weight_decay);
  o->set_decay_bn_and_bias(j.optimizer.decay_bn_and_bias);
  o->set_schedule(j.optimizer.schedule);
  o->set_warmup_epochs(j.optimizer.warmup_epochs);
  for (double x : j.optimizer.milestones) o->add_milestones(x);
  o->set_gamma(j.optimizer.gamma);
  o->set_linear_scaling(j.optimizer.linear_scaling);
  o->set_label_smoothing(j.optimizer.label_smoothing);

  p.set_seed(j.seed);
  p.set_threads_per_worker(j.threads_per_worker);
  p.mutable_comm()->set_bucket_mb(j.comm.bucket_mb);
  p.set_eval_every_epochs(j.eval_every_epochs);
  p.set_output_dir(j.output_dir);
  p.set_progress(j.progress);
  v1::CheckpointSpec* c = p.mutable_checkpoint();
  c->set_dir(j.checkpoint.dir);
  c->set_every_steps(j.checkpoint.every_steps);
  c->set_every_seconds(j.checkpoint.every_seconds);
  c->set_keep_last(j.checkpoint.keep_last);
  p.set_resume(j.resume);
  p.set_workers(j.workers);
  p.set_max_restarts(j.max_restarts);
  return p;
}

}  // namespace resdist
