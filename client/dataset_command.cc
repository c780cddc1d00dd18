// `resdist dataset convert` (IDX, CIFAR-10/100, image folder, synthetic -> resdist HDF5) and
// `resdist dataset inspect` (print and validate). The converters themselves are in converters.cc.
#include <sys/stat.h>

#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/commands.h"
#include "client/converters.h"
#include "client/progress.h"
#include "common/dataset.h"

namespace resdist::client {
namespace {

struct ConvertFlags {
  std::string from;
  std::string images, labels;       // idx
  std::vector<std::string> inputs;  // cifar files or one folder
  std::string size;                 // folder: HxW
  int channels = 3;                 // folder
  int64_t num = 0;                  // synthetic
  std::string shape = "28x28x1";    // synthetic
  int classes = 10;                 // synthetic
  uint64_t seed = 0;                // synthetic
  std::string cifar100_label = "fine";
  std::string out;
  bool gzip = false;
  int gzip_level = 4;
  std::string class_names;  // comma separated
  bool quiet = false;
};

Status missing(const std::string& from, const std::string& flag, const std::string& what) {
  return absl::InvalidArgumentError(
      absl::StrFormat("dataset convert --from %s: %s is required (%s)", from, flag, what));
}

StatusOr<std::unique_ptr<ImageSource>> open_source(const ConvertFlags& f) {
  if (f.from == "idx") {
    if (f.images.empty()) return missing(f.from, "--images", "the IDX image file");
    if (f.labels.empty()) return missing(f.from, "--labels", "the IDX label file");
    return open_idx(f.images, f.labels, {});
  }
  if (f.from == "cifar10" || f.from == "cifar100") {
    if (f.inputs.empty()) return missing(f.from, "--input", "one or more binary batch files");
    CifarKind kind = CifarKind::kCifar10;
    if (f.from == "cifar100") {
      if (f.cifar100_label != "fine" && f.cifar100_label != "coarse") {
        return absl::InvalidArgumentError(absl::StrFormat(
            "dataset convert: --label is \"%s\", expected fine or coarse", f.cifar100_label));
      }
      kind = f.cifar100_label == "fine" ? CifarKind::kCifar100Fine : CifarKind::kCifar100Coarse;
    }
    return open_cifar(f.inputs, kind);
  }
  if (f.from == "folder") {
    if (f.inputs.size() != 1) return missing(f.from, "--input", "exactly one directory");
    if (f.size.empty()) return missing(f.from, "--size", "HxW to resize to, e.g. 32x32");
    ASSIGN_OR_RETURN(std::vector<int> hw, parse_shape(f.size, 2));
    return open_folder(f.inputs[0], hw[0], hw[1], f.channels);
  }
  if (f.from == "synthetic") {
    if (f.num < 1) return missing(f.from, "--num", "the number of images, >= 1");
    ASSIGN_OR_RETURN(std::vector<int> hwc, parse_shape(f.shape, 3));
    return open_synthetic(f.num, hwc[0], hwc[1], hwc[2], f.classes, f.seed);
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "dataset convert: --from is \"%s\", expected idx, cifar10, cifar100, folder or synthetic",
      f.from));
}

std::string floats(const std::vector<float>& v) {
  return absl::StrJoin(
      v, ", ", [](std::string* out, float x) { absl::StrAppend(out, absl::StrFormat("%.4f", x)); });
}

Status run_convert(const ConvertFlags& f) {
  if (f.out.empty()) return absl::InvalidArgumentError("dataset convert: --out is required");
  ASSIGN_OR_RETURN(std::unique_ptr<ImageSource> source, open_source(f));
  ConvertOptions options;
  options.out_path = f.out;
  options.gzip_level = f.gzip ? f.gzip_level : 0;
  if (f.gzip && (f.gzip_level < 1 || f.gzip_level > 9)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("dataset convert: --gzip-level is %d, expected 1..9", f.gzip_level));
  }
  if (!f.class_names.empty()) {
    options.class_names = absl::StrSplit(f.class_names, ',');
  }
  ProgressBar bar(absl::StrFormat("converting %s", f.out));
  if (!f.quiet) options.progress = [&bar](int64_t done, int64_t total) { bar.update(done, total); };
  RETURN_IF_ERROR(convert(*source, options));
  ASSIGN_OR_RETURN(std::unique_ptr<DatasetReader> check, DatasetReader::open(f.out));
  const DatasetInfo& info = check->info();
  std::printf("wrote %s: %lld images %dx%dx%d, %d classes, mean [%s], std [%s]\n", f.out.c_str(),
              static_cast<long long>(info.num_samples), info.height, info.width, info.channels,
              info.num_classes(), floats(info.mean).c_str(), floats(info.std).c_str());
  return absl::OkStatus();
}

Status run_inspect(const std::string& path, bool json) {
  ASSIGN_OR_RETURN(std::unique_ptr<DatasetReader> reader, DatasetReader::open(path));
  const DatasetInfo& info = reader->info();
  const std::vector<int64_t> counts = reader->class_counts();
  struct stat st {};
  ::stat(path.c_str(), &st);
  const double chunk_mib = static_cast<double>(info.chunk_samples * info.image_bytes()) / (1 << 20);
  if (json) {
    nlohmann::json j;
    j["path"] = path;
    j["file_bytes"] = static_cast<int64_t>(st.st_size);
    j["format_version"] = info.format_version;
    j["source"] = info.source;
    j["num_samples"] = info.num_samples;
    j["shape"] = {info.height, info.width, info.channels};
    j["mean"] = info.mean;
    j["std"] = info.std;
    j["chunk_samples"] = info.chunk_samples;
    j["gzip_level"] = info.gzip_level;
    nlohmann::json classes = nlohmann::json::array();
    for (int k = 0; k < info.num_classes(); ++k) {
      classes.push_back({{"label", k}, {"name", info.class_names[k]}, {"count", counts[k]}});
    }
    j["classes"] = classes;
    j["valid"] = true;
    std::printf("%s\n", j.dump(2).c_str());
    return absl::OkStatus();
  }
  std::printf("file:         %s (%.1f MiB)\n", path.c_str(),
              static_cast<double>(st.st_size) / (1 << 20));
  std::printf("format:       %s version %d\n", kDatasetFormatName, info.format_version);
  std::printf("source:       %s\n", info.source.empty() ? "(not recorded)" : info.source.c_str());
  std::printf("images:       %lld x %d x %d x %d uint8 (N,H,W,C)\n",
              static_cast<long long>(info.num_samples), info.height, info.width, info.channels);
  std::printf("labels:       %lld int32, %d classes\n", static_cast<long long>(info.num_samples),
              info.num_classes());
  std::printf("mean:         [%s] (of pixel/255, per channel)\n", floats(info.mean).c_str());
  std::printf("std:          [%s]\n", floats(info.std).c_str());
  if (info.chunk_samples > 0) {
    std::printf("chunking:     %lld images per chunk (%.2f MiB)%s\n",
                static_cast<long long>(info.chunk_samples), chunk_mib,
                info.chunks_whole_images ? "" : ", chunks split images (slow reads)");
  } else {
    std::printf("chunking:     none (contiguous)\n");
  }
  std::string compression =
      info.gzip_level >= 0 ? absl::StrFormat("gzip level %d", info.gzip_level) : "none";
  if (!info.other_filters.empty()) {
    absl::StrAppend(&compression, " + ", absl::StrJoin(info.other_filters, ", "));
  }
  std::printf("compression:  %s\n", compression.c_str());
  std::printf("classes:\n");
  for (int k = 0; k < info.num_classes(); ++k) {
    std::printf("  %4d  %-24s %10lld\n", k, info.class_names[k].c_str(),
                static_cast<long long>(counts[k]));
  }
  std::printf("valid:        yes\n");
  return absl::OkStatus();
}

int report(const Status& s) {
  if (s.ok()) return 0;
  std::fprintf(stderr, "resdist: error: %s\n", std::string(s.message()).c_str());
  return 1;
}

}  // namespace

void register_dataset_commands(CLI::App& app, CommandResult& result) {
  CLI::App* dataset = app.add_subcommand("dataset", "Convert and inspect HDF5 datasets");
  dataset->require_subcommand(1);

  auto flags = std::make_shared<ConvertFlags>();
  CLI::App* convert_cmd = dataset->add_subcommand(
      "convert", "Convert IDX, CIFAR, an image folder or synthetic data to a resdist HDF5 file");
  convert_cmd->add_option("--from", flags->from, "idx | cifar10 | cifar100 | folder | synthetic")
      ->required()
      ->check(CLI::IsMember({"idx", "cifar10", "cifar100", "folder", "synthetic"}));
  convert_cmd->add_option("--out", flags->out, "Output .h5 file (written to a temp file, renamed)")
      ->required();
  convert_cmd->add_option("--images", flags->images, "idx: image file (.gz or raw)");
  convert_cmd->add_option("--labels", flags->labels, "idx: label file (.gz or raw)");
  convert_cmd->add_option("--input", flags->inputs,
                          "cifar10/cifar100: batch files; folder: DIR/<class>/<image>");
  convert_cmd->add_option("--size", flags->size, "folder: resize to HxW");
  convert_cmd->add_option("--channels", flags->channels, "folder: 1 (grey) or 3 (RGB)")
      ->capture_default_str();
  convert_cmd->add_option("--label", flags->cifar100_label, "cifar100: fine or coarse labels")
      ->capture_default_str();
  convert_cmd->add_option("--num", flags->num, "synthetic: number of images");
  convert_cmd->add_option("--shape", flags->shape, "synthetic: HxWxC")->capture_default_str();
  convert_cmd->add_option("--classes", flags->classes, "synthetic: number of classes")
      ->capture_default_str();
  convert_cmd->add_option("--seed", flags->seed, "synthetic: seed")->capture_default_str();
  convert_cmd->add_flag("--gzip", flags->gzip, "Compress /images and /labels with gzip");
  convert_cmd->add_option("--gzip-level", flags->gzip_level, "gzip level 1..9 (with --gzip)")
      ->capture_default_str();
  convert_cmd->add_option("--class-names", flags->class_names,
                          "Comma-separated class names, overriding the source's");
  convert_cmd->add_flag("--quiet", flags->quiet, "No progress bar");
  convert_cmd->callback([flags, &result] { result.exit_code = report(run_convert(*flags)); });

  auto inspect_path = std::make_shared<std::string>();
  auto inspect_json = std::make_shared<bool>(false);
  CLI::App* inspect_cmd =
      dataset->add_subcommand("inspect", "Print a dataset's contents and validate it");
  inspect_cmd->add_option("file", *inspect_path, "Dataset .h5 file")->required();
  inspect_cmd->add_flag("--json", *inspect_json, "Machine-readable output");
  inspect_cmd->callback([inspect_path, inspect_json, &result] {
    result.exit_code = report(run_inspect(*inspect_path, *inspect_json));
  });
}

}  // namespace resdist::client
