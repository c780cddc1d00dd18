// Job file parsing (yaml-cpp) and validation. yaml-cpp reports type errors by throwing; they are
// caught here, at the smallest scope, and turned into Status values naming the key.
#include "common/job_spec.h"

#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "yaml-cpp/yaml.h"

namespace resdist {
namespace {

std::string Join(const std::string& path, const std::string& key) {
  return path.empty() ? key : absl::StrCat(path, ".", key);
}

std::string Where(const YAML::Node& n) {
  const YAML::Mark m = n.Mark();
  return m.line >= 0 ? absl::StrCat(" (line ", m.line + 1, ")") : std::string();
}

std::string Shown(const YAML::Node& n) {
  if (n.IsScalar()) return absl::StrCat("'", n.Scalar(), "'");
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  return "null";
}

Status TypeError(const std::string& path, const YAML::Node& n, const std::string& expected) {
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": ", Shown(n), " is not ", expected, Where(n)));
}

// Reads one mapping: each known key is consumed by a handler; leftovers are errors.
class MapReader {
 public:
  MapReader(const YAML::Node& node, std::string path) : node_(node), path_(std::move(path)) {}

  Status check_is_map() const {
    if (!node_.IsMap())
      return TypeError(path_.empty() ? std::string("job file") : path_, node_,
                       "a mapping of keys to values");
    return absl::OkStatus();
  }

  // Registers `key`; `fn(node, path)` runs when the key is present.
  void on(const std::string& key,
          std::function<Status(const YAML::Node&, const std::string&)> fn) {
    keys_.push_back(key);
    handlers_.push_back(std::move(fn));
  }

  Status run() {
    RETURN_IF_ERROR(check_is_map());
    std::set<std::string> seen;
    for (auto it = node_.begin(); it != node_.end(); ++it) {
      if (!it->first.IsScalar())
        return absl::InvalidArgumentError(
            absl::StrCat(path_.empty() ? "job file" : path_, ": keys must be plain names",
                         Where(it->first)));
      const std::string key = it->first.Scalar();
      const std::string path = Join(path_, key);
      if (!seen.insert(key).second)
        return absl::InvalidArgumentError(absl::StrCat(path, ": key given twice", Where(it->first)));
      size_t i = 0;
      while (i < keys_.size() && keys_[i] != key) ++i;
      if (i == keys_.size())
        return absl::InvalidArgumentError(absl::StrCat(path, ": unknown key; expected one of ",
                                                       absl::StrJoin(keys_, ", "),
                                                       Where(it->first)));
      RETURN_IF_ERROR(handlers_[i](it->second, path));
    }
    return absl::OkStatus();
  }

 private:
  YAML::Node node_;
  std::string path_;
  std::vector<std::string> keys_;
  std::vector<std::function<Status(const YAML::Node&, const std::string&)>> handlers_;
};

Status ReadString(const YAML::Node& n, const std::string& path, std::string* out) {
  if (!n.IsScalar()) return TypeError(path, n, "a string");
  *out = n.Scalar();
  return absl::OkStatus();
}

Status ReadBool(const YAML::Node& n, const std::string& path, bool* out) {
  if (!n.IsScalar()) return TypeError(path, n, "a boolean (true or false)");
  const std::string& s = n.Scalar();
  if (s == "true" || s == "True" || s == "TRUE") *out = true;
  else if (s == "false" || s == "False" || s == "FALSE") *out = false;
  else return TypeError(path, n, "a boolean (true or false)");
  return absl::OkStatus();
}

Status ReadInt(const YAML::Node& n, const std::string& path, int64_t* out) {
  if (!n.IsScalar()) return TypeError(path, n, "an integer");
  try {
    *out = n.as<int64_t>();
  } catch (const YAML::Exception&) {
    return TypeError(path, n, "an integer");
  }
  return absl::OkStatus();
}

Status ReadUint(const YAML::Node& n, const std::string& path, uint64_t* out) {
  if (!n.IsScalar() || (!n.Scalar().empty() && n.Scalar()[0] == '-'))
    return TypeError(path, n, "a non-negative integer");
  try {
    *out = n.as<uint64_t>();
  } catch (const YAML::Exception&) {
    return TypeError(path, n, "a non-negative integer");
  }
  return absl::OkStatus();
}

Status ReadDouble(const YAML::Node& n, const std::string& path, double* out) {
  if (!n.IsScalar()) return TypeError(path, n, "a number");
  try {
    *out = n.as<double>();
  } catch (const YAML::Exception&) {
    return TypeError(path, n, "a number");
  }
  return absl::OkStatus();
}

template <typename T, typename ReadFn>
Status ReadList(const YAML::Node& n, const std::string& path, std::vector<T>* out, ReadFn read,
                const char* what) {
  if (!n.IsSequence()) return TypeError(path, n, absl::StrCat("a list of ", what));
  out->clear();
  for (size_t i = 0; i < n.size(); ++i) {
    T v{};
    RETURN_IF_ERROR(read(n[i], absl::StrCat(path, "[", i, "]"), &v));
    out->push_back(v);
  }
  return absl::OkStatus();
}

// Handlers binding a key to a field.
auto Str(std::string* f) {
  return [f](const YAML::Node& n, const std::string& p) { return ReadString(n, p, f); };
}
auto Bool(bool* f) {
  return [f](const YAML::Node& n, const std::string& p) { return ReadBool(n, p, f); };
}
auto Int(int64_t* f) {
  return [f](const YAML::Node& n, const std::string& p) { return ReadInt(n, p, f); };
}
auto Uint(uint64_t* f) {
  return [f](const YAML::Node& n, const std::string& p) { return ReadUint(n, p, f); };
}
auto Num(double* f) {
  return [f](const YAML::Node& n, const std::string& p) { return ReadDouble(n, p, f); };
}

Status ReadModel(const YAML::Node& node, const std::string& path, JobSpec::Model* m) {
  MapReader r(node, path);
  r.on("arch", Str(&m->arch));
  r.on("num_classes", Int(&m->num_classes));
  r.on("shortcut", Str(&m->shortcut));
  r.on("small_input_stem", Bool(&m->small_input_stem));
  r.on("zero_init_residual", Bool(&m->zero_init_residual));
  r.on("dropout", Num(&m->dropout));
  r.on("sync_batchnorm", Bool(&m->sync_batchnorm));
  r.on("stage_blocks", [m](const YAML::Node& n, const std::string& p) {
    return ReadList(n, p, &m->stage_blocks, ReadInt, "integers");
  });
  r.on("base_width", Int(&m->base_width));
  r.on("mlp_width", Int(&m->mlp_width));
  r.on("mlp_hidden", Int(&m->mlp_hidden));
  return r.run();
}

Status ReadData(const YAML::Node& node, const std::string& path, JobSpec::Data* d) {
  MapReader r(node, path);
  r.on("train", Str(&d->train));
  r.on("eval", Str(&d->eval));
  r.on("augment", [d](const YAML::Node& n, const std::string& p) {
    MapReader a(n, p);
    a.on("crop_padding", Int(&d->augment.crop_padding));
    a.on("flip", Bool(&d->augment.flip));
    return a.run();
  });
  r.on("in_memory", Str(&d->in_memory));
  r.on("synthetic", [d](const YAML::Node& n, const std::string& p) {
    JobSpec::Data::Synthetic& s = d->synthetic;
    MapReader a(n, p);
    a.on("train_samples", Int(&s.train_samples));
    a.on("eval_samples", Int(&s.eval_samples));
    a.on("height", Int(&s.height));
    a.on("width", Int(&s.width));
    a.on("channels", Int(&s.channels));
    a.on("classes", Int(&s.classes));
    return a.run();
  });
  return r.run();
}

Status ReadOptimizer(const YAML::Node& node, const std::string& path, JobSpec::Optimizer* o) {
  MapReader r(node, path);
  r.on("lr", Num(&o->lr));
  r.on("momentum", Num(&o->momentum));
  r.on("nesterov", Bool(&o->nesterov));
  r.on("weight_decay", Num(&o->weight_decay));
  r.on("decay_bn_and_bias", Bool(&o->decay_bn_and_bias));
  r.on("schedule", Str(&o->schedule));
  r.on("warmup_epochs", Num(&o->warmup_epochs));
  r.on("milestones", [o](const YAML::Node& n, const std::string& p) {
    return ReadList(n, p, &o->milestones, ReadDouble, "numbers");
  });
  r.on("gamma", Num(&o->gamma));
  r.on("linear_scaling", Bool(&o->linear_scaling));
  r.on("label_smoothing", Num(&o->label_smoothing));
  return r.run();
}

Status ReadJob(const YAML::Node& root, JobSpec* j) {
  MapReader r(root, "");
  r.on("name", Str(&j->name));
  r.on("model", [j](const YAML::Node& n, const std::string& p) {
    return ReadModel(n, p, &j->model);
  });
  r.on("data", [j](const YAML::Node& n, const std::string& p) {
    return ReadData(n, p, &j->data);
  });
  r.on("batch_size", Int(&j->batch_size));
  r.on("epochs", Int(&j->epochs));
  r.on("max_steps_per_epoch", Int(&j->max_steps_per_epoch));
  r.on("optimizer", [j](const YAML::Node& n, const std::string& p) {
    return ReadOptimizer(n, p, &j->optimizer);
  });
  r.on("seed", Uint(&j->seed));
  r.on("threads_per_worker", Int(&j->threads_per_worker));
  r.on("comm", [j](const YAML::Node& n, const std::string& p) {
    MapReader c(n, p);
    c.on("bucket_mb", Num(&j->comm.bucket_mb));
    return c.run();
  });
  r.on("eval_every_epochs", Int(&j->eval_every_epochs));
  r.on("output_dir", Str(&j->output_dir));
  r.on("progress", Str(&j->progress));
  r.on("workers", Int(&j->workers));
  r.on("max_restarts", Int(&j->max_restarts));
  r.on("checkpoint", [j](const YAML::Node& n, const std::string& p) {
    MapReader c(n, p);
    c.on("dir", Str(&j->checkpoint.dir));
    c.on("every_steps", Int(&j->checkpoint.every_steps));
    c.on("every_seconds", Num(&j->checkpoint.every_seconds));
    c.on("keep_last", Int(&j->checkpoint.keep_last));
    return c.run();
  });
  r.on("resume", Str(&j->resume));
  return r.run();
}

Status OutOfRange(const std::string& key, const std::string& value, const std::string& expected) {
  return absl::InvalidArgumentError(
      absl::StrCat(key, ": ", value, " is not allowed; expected ", expected));
}

Status IntRange(const std::string& key, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi) return OutOfRange(key, absl::StrCat(v), absl::StrCat(lo, "..", hi));
  return absl::OkStatus();
}

Status OneOf(const std::string& key, const std::string& v, const std::vector<std::string>& ok) {
  for (const std::string& o : ok)
    if (v == o) return absl::OkStatus();
  return OutOfRange(key, absl::StrCat("'", v, "'"), absl::StrCat("one of ", absl::StrJoin(ok, ", ")));
}

}  // namespace

std::string EffectiveCheckpointDir(const JobSpec& j) {
  if (!j.checkpoint.dir.empty()) return j.checkpoint.dir;
  if (!j.output_dir.empty()) {
    return j.output_dir.back() == '/' ? absl::StrCat(j.output_dir, "checkpoints")
                                      : absl::StrCat(j.output_dir, "/checkpoints");
  }
  return std::string();
}

const std::vector<std::string>& JobSpecArchitectures() {
  static const std::vector<std::string> kArchs = {
      "resnet20", "resnet32", "resnet44",  "resnet56",  "resnet110", "resnet18",
      "resnet34", "resnet50", "resnet101", "resnet152", "resmlp"};
  return kArchs;
}

Status ValidateJobSpec(const JobSpec& j) {
  if (j.name.empty() || j.name.size() > 128 ||
      j.name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
          std::string::npos)
    return OutOfRange("name", absl::StrCat("'", j.name, "'"),
                      "1 to 128 characters from A-Z a-z 0-9 . _ -");
  // model
  RETURN_IF_ERROR(OneOf("model.arch", j.model.arch, JobSpecArchitectures()));
  if (j.model.num_classes != 0) RETURN_IF_ERROR(IntRange("model.num_classes", j.model.num_classes, 2, 100000));
  RETURN_IF_ERROR(OneOf("model.shortcut", j.model.shortcut, {"A", "B"}));
  if (!(j.model.dropout >= 0 && j.model.dropout < 1))
    return OutOfRange("model.dropout", absl::StrCat(j.model.dropout), "a value in [0, 1)");
  for (size_t i = 0; i < j.model.stage_blocks.size(); ++i)
    RETURN_IF_ERROR(IntRange(absl::StrCat("model.stage_blocks[", i, "]"), j.model.stage_blocks[i], 1, 1000));
  RETURN_IF_ERROR(IntRange("model.base_width", j.model.base_width, 0, 4096));
  RETURN_IF_ERROR(IntRange("model.mlp_width", j.model.mlp_width, 0, 1 << 16));
  RETURN_IF_ERROR(IntRange("model.mlp_hidden", j.model.mlp_hidden, 0, 1 << 16));
  // data
  const JobSpec::Data::Synthetic& syn = j.data.synthetic;
  if (j.data.train.empty() && syn.train_samples <= 0)
    return absl::InvalidArgumentError(
        "data.train: missing; expected the path of a resdist HDF5 training set (or "
        "data.synthetic.train_samples > 0)");
  if (!j.data.train.empty() && syn.train_samples > 0)
    return absl::InvalidArgumentError(
        "data.synthetic: not allowed together with data.train; expected one source of training data");
  RETURN_IF_ERROR(IntRange("data.augment.crop_padding", j.data.augment.crop_padding, 0, 64));
  RETURN_IF_ERROR(OneOf("data.in_memory", j.data.in_memory, {"auto", "on", "off"}));
  RETURN_IF_ERROR(IntRange("data.synthetic.train_samples", syn.train_samples, 0, int64_t{1} << 31));
  RETURN_IF_ERROR(IntRange("data.synthetic.eval_samples", syn.eval_samples, 0, int64_t{1} << 31));
  RETURN_IF_ERROR(IntRange("data.synthetic.height", syn.height, 1, 4096));
  RETURN_IF_ERROR(IntRange("data.synthetic.width", syn.width, 1, 4096));
  RETURN_IF_ERROR(IntRange("data.synthetic.channels", syn.channels, 1, 64));
  RETURN_IF_ERROR(IntRange("data.synthetic.classes", syn.classes, 2, 100000));
  // schedule
  RETURN_IF_ERROR(IntRange("batch_size", j.batch_size, 1, 1 << 20));
  RETURN_IF_ERROR(IntRange("epochs", j.epochs, 1, 100000));
  RETURN_IF_ERROR(IntRange("max_steps_per_epoch", j.max_steps_per_epoch, 0, int64_t{1} << 40));
  const JobSpec::Optimizer& o = j.optimizer;
  if (!(o.lr > 0) || !std::isfinite(o.lr))
    return OutOfRange("optimizer.lr", absl::StrCat(o.lr), "a finite value > 0");
  if (!(o.momentum >= 0 && o.momentum < 1))
    return OutOfRange("optimizer.momentum", absl::StrCat(o.momentum), "a value in [0, 1)");
  if (o.nesterov && o.momentum == 0)
    return OutOfRange("optimizer.nesterov", "true", "false unless optimizer.momentum > 0");
  if (!(o.weight_decay >= 0) || !std::isfinite(o.weight_decay))
    return OutOfRange("optimizer.weight_decay", absl::StrCat(o.weight_decay), "a finite value >= 0");
  RETURN_IF_ERROR(OneOf("optimizer.schedule", o.schedule, {"constant", "step", "cosine"}));
  if (!(o.warmup_epochs >= 0 && o.warmup_epochs < static_cast<double>(j.epochs)))
    return OutOfRange("optimizer.warmup_epochs", absl::StrCat(o.warmup_epochs),
                      absl::StrCat("a value in [0, epochs = ", j.epochs, ")"));
  for (size_t i = 0; i < o.milestones.size(); ++i) {
    const double m = o.milestones[i];
    if (!(m > 0 && m <= static_cast<double>(j.epochs)) || (i > 0 && !(m > o.milestones[i - 1])))
      return OutOfRange(absl::StrCat("optimizer.milestones[", i, "]"), absl::StrCat(m),
                        absl::StrCat("increasing epochs in (0, ", j.epochs, "]"));
  }
  if (o.schedule == "step" && o.milestones.empty())
    return absl::InvalidArgumentError(
        "optimizer.milestones: missing; the step schedule needs at least one milestone epoch");
  if (!(o.gamma > 0 && o.gamma <= 1))
    return OutOfRange("optimizer.gamma", absl::StrCat(o.gamma), "a value in (0, 1]");
  if (!(o.label_smoothing >= 0 && o.label_smoothing < 1))
    return OutOfRange("optimizer.label_smoothing", absl::StrCat(o.label_smoothing),
                      "a value in [0, 1)");
  RETURN_IF_ERROR(IntRange("threads_per_worker", j.threads_per_worker, 1, 1024));
  if (!(j.comm.bucket_mb > 0 && j.comm.bucket_mb <= 1024))
    return OutOfRange("comm.bucket_mb", absl::StrCat(j.comm.bucket_mb), "a value in (0, 1024]");
  RETURN_IF_ERROR(IntRange("eval_every_epochs", j.eval_every_epochs, 0, 100000));
  RETURN_IF_ERROR(OneOf("progress", j.progress, {"auto", "bar", "lines", "off"}));
  RETURN_IF_ERROR(IntRange("workers", j.workers, 1, 1 << 16));
  RETURN_IF_ERROR(IntRange("max_restarts", j.max_restarts, 0, 1000));
  if (j.batch_size % j.workers != 0)
    return OutOfRange("batch_size", absl::StrCat(j.batch_size),
                      absl::StrCat("a multiple of workers = ", j.workers,
                                   " (the global batch is split evenly across ranks)"));
  // checkpoint, resume
  const JobSpec::Checkpoint& ck = j.checkpoint;
  RETURN_IF_ERROR(IntRange("checkpoint.every_steps", ck.every_steps, 0, int64_t{1} << 40));
  if (!(ck.every_seconds >= 0) || !std::isfinite(ck.every_seconds))
    return OutOfRange("checkpoint.every_seconds", absl::StrCat(ck.every_seconds),
                      "a finite number of seconds >= 0 (0: no time trigger)");
  RETURN_IF_ERROR(IntRange("checkpoint.keep_last", ck.keep_last, 0, 1000000));
  const bool has_dir = !EffectiveCheckpointDir(j).empty();
  if (!has_dir && (ck.every_steps > 0 || ck.every_seconds > 0 || ck.keep_last > 0))
    return absl::InvalidArgumentError(
        "checkpoint: triggers or keep_last given but no directory; expected checkpoint.dir "
        "(or output_dir, whose checkpoints/ subdirectory is the default)");
  if (j.resume == "latest" && !has_dir)
    return absl::InvalidArgumentError(
        "resume: 'latest' needs a checkpoint directory; expected checkpoint.dir or output_dir "
        "to be set (or resume: none, or the path of a checkpoint file)");
  return absl::OkStatus();
}

StatusOr<JobSpec> ParseJobSpec(const std::string& text) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    return absl::InvalidArgumentError(absl::StrCat("job file: not valid YAML or JSON: ", e.msg,
                                                   " (line ", e.mark.line + 1, ")"));
  }
  JobSpec spec;
  if (root.IsNull()) return absl::InvalidArgumentError("job file: empty; expected a mapping");
  RETURN_IF_ERROR(ReadJob(root, &spec));
  RETURN_IF_ERROR(ValidateJobSpec(spec));
  return spec;
}

StatusOr<JobSpec> ParseJobFile(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    return absl::NotFoundError(absl::StrCat("job file ", path, ": cannot be opened"));
  std::stringstream ss;
  ss << in.rdbuf();
  StatusOr<JobSpec> spec = ParseJobSpec(ss.str());
  if (!spec.ok())
    return Status(spec.status().code(), absl::StrCat(path, ": ", spec.status().message()));
  return spec;
}

std::string JobSpecToYaml(const JobSpec& j) {
  YAML::Emitter e;
  e.SetDoublePrecision(17);
  e << YAML::BeginMap;
  e << YAML::Key << "name" << YAML::Value << YAML::DoubleQuoted << j.name;
  e << YAML::Key << "model" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "arch" << YAML::Value << j.model.arch;
  e << YAML::Key << "num_classes" << YAML::Value << j.model.num_classes;
  e << YAML::Key << "shortcut" << YAML::Value << j.model.shortcut;
  e << YAML::Key << "small_input_stem" << YAML::Value << j.model.small_input_stem;
  e << YAML::Key << "zero_init_residual" << YAML::Value << j.model.zero_init_residual;
  e << YAML::Key << "dropout" << YAML::Value << j.model.dropout;
  e << YAML::Key << "sync_batchnorm" << YAML::Value << j.model.sync_batchnorm;
  e << YAML::Key << "stage_blocks" << YAML::Value << YAML::Flow << j.model.stage_blocks;
  e << YAML::Key << "base_width" << YAML::Value << j.model.base_width;
  e << YAML::Key << "mlp_width" << YAML::Value << j.model.mlp_width;
  e << YAML::Key << "mlp_hidden" << YAML::Value << j.model.mlp_hidden;
  e << YAML::EndMap;
  e << YAML::Key << "data" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "train" << YAML::Value << YAML::DoubleQuoted << j.data.train;
  e << YAML::Key << "eval" << YAML::Value << YAML::DoubleQuoted << j.data.eval;
  e << YAML::Key << "augment" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "crop_padding" << YAML::Value << j.data.augment.crop_padding;
  e << YAML::Key << "flip" << YAML::Value << j.data.augment.flip;
  e << YAML::EndMap;
  e << YAML::Key << "in_memory" << YAML::Value << j.data.in_memory;
  e << YAML::Key << "synthetic" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "train_samples" << YAML::Value << j.data.synthetic.train_samples;
  e << YAML::Key << "eval_samples" << YAML::Value << j.data.synthetic.eval_samples;
  e << YAML::Key << "height" << YAML::Value << j.data.synthetic.height;
  e << YAML::Key << "width" << YAML::Value << j.data.synthetic.width;
  e << YAML::Key << "channels" << YAML::Value << j.data.synthetic.channels;
  e << YAML::Key << "classes" << YAML::Value << j.data.synthetic.classes;
  e << YAML::EndMap;
  e << YAML::EndMap;
  e << YAML::Key << "batch_size" << YAML::Value << j.batch_size;
  e << YAML::Key << "epochs" << YAML::Value << j.epochs;
  e << YAML::Key << "max_steps_per_epoch" << YAML::Value << j.max_steps_per_epoch;
  e << YAML::Key << "optimizer" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "lr" << YAML::Value << j.optimizer.lr;
  e << YAML::Key << "momentum" << YAML::Value << j.optimizer.momentum;
  e << YAML::Key << "nesterov" << YAML::Value << j.optimizer.nesterov;
  e << YAML::Key << "weight_decay" << YAML::Value << j.optimizer.weight_decay;
  e << YAML::Key << "decay_bn_and_bias" << YAML::Value << j.optimizer.decay_bn_and_bias;
  e << YAML::Key << "schedule" << YAML::Value << j.optimizer.schedule;
  e << YAML::Key << "warmup_epochs" << YAML::Value << j.optimizer.warmup_epochs;
  e << YAML::Key << "milestones" << YAML::Value << YAML::Flow << j.optimizer.milestones;
  e << YAML::Key << "gamma" << YAML::Value << j.optimizer.gamma;
  e << YAML::Key << "linear_scaling" << YAML::Value << j.optimizer.linear_scaling;
  e << YAML::Key << "label_smoothing" << YAML::Value << j.optimizer.label_smoothing;
  e << YAML::EndMap;
  e << YAML::Key << "seed" << YAML::Value << j.seed;
  e << YAML::Key << "threads_per_worker" << YAML::Value << j.threads_per_worker;
  e << YAML::Key << "comm" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "bucket_mb" << YAML::Value << j.comm.bucket_mb;
  e << YAML::EndMap;
  e << YAML::Key << "eval_every_epochs" << YAML::Value << j.eval_every_epochs;
  e << YAML::Key << "output_dir" << YAML::Value << YAML::DoubleQuoted << j.output_dir;
  e << YAML::Key << "progress" << YAML::Value << j.progress;
  e << YAML::Key << "workers" << YAML::Value << j.workers;
  e << YAML::Key << "max_restarts" << YAML::Value << j.max_restarts;
  e << YAML::Key << "checkpoint" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "dir" << YAML::Value << YAML::DoubleQuoted << j.checkpoint.dir;
  e << YAML::Key << "every_steps" << YAML::Value << j.checkpoint.every_steps;
  e << YAML::Key << "every_seconds" << YAML::Value << j.checkpoint.every_seconds;
  e << YAML::Key << "keep_last" << YAML::Value << j.checkpoint.keep_last;
  e << YAML::EndMap;
  e << YAML::Key << "resume" << YAML::Value << YAML::DoubleQuoted << j.resume;
  e << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

}  // namespace resdist
