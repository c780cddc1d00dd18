// Dataset schema: validation on open, hyperslab reads, and the atomic temp-file writer.
#include "common/dataset.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace resdist {
namespace {

// Prefixes a status from the HDF5 layer with "dataset ", keeping its code.
Status in_dataset(const Status& s) {
  if (s.ok() || absl::StartsWith(s.message(), "dataset ")) return s;
  return Status(s.code(), absl::StrCat("dataset ", s.message()));
}

Status invalid(const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("dataset ", path, ": ", what));
}

}  // namespace

int64_t chunk_samples_for(int64_t image_bytes, int64_t num_samples, int64_t chunk_bytes) {
  int64_t n = image_bytes > 0 ? chunk_bytes / image_bytes : 1;
  n = std::max<int64_t>(n, 1);
  return std::max<int64_t>(1, std::min(n, num_samples));
}

// ---------------------------------------------------------------------------------------------
// Reader

StatusOr<std::unique_ptr<DatasetReader>> DatasetReader::open(const std::string& path) {
  std::unique_ptr<DatasetReader> r(new DatasetReader());
  DatasetInfo& info = r->info_;
  info.path = path;
  auto file = h5::File::open(path);
  if (!file.ok()) return in_dataset(file.status());
  r->file_ = std::move(file).value();
  const h5::File& f = r->file_;

  if (!f.has_link(kImagesPath)) {
    return absl::NotFoundError(absl::StrCat("dataset ", path, ": ", kImagesPath,
                                            " is missing, expected uint8 (N,H,W,C) images"));
  }
  if (!f.has_link(kLabelsPath)) {
    return absl::NotFoundError(absl::StrCat("dataset ", path, ": ", kLabelsPath,
                                            " is missing, expected int32 (N) labels"));
  }
  auto images = f.open_dataset(kImagesPath);
  if (!images.ok()) return in_dataset(images.status());
  r->images_ = std::move(images).value();
  auto labels = f.open_dataset(kLabelsPath);
  if (!labels.ok()) return in_dataset(labels.status());
  const h5::Dataset labels_ds = std::move(labels).value();

  // Shapes and element types.
  auto idims = r->images_.dims();
  if (!idims.ok()) return in_dataset(idims.status());
  if (idims->size() != 4) {
    return invalid(path, absl::StrFormat("%s has %d dimensions, expected 4 (N,H,W,C)", kImagesPath,
                                         idims->size()));
  }
  auto itype = r->images_.type();
  if (!itype.ok()) return in_dataset(itype.status());
  if (itype->element() != h5::ElementType::kUInt8) {
    return invalid(path, absl::StrFormat("%s has element type %s, expected uint8", kImagesPath,
                                         itype->name()));
  }
  auto ldims = labels_ds.dims();
  if (!ldims.ok()) return in_dataset(ldims.status());
  if (ldims->size() != 1) {
    return invalid(
        path, absl::StrFormat("%s has %d dimensions, expected 1 (N)", kLabelsPath, ldims->size()));
  }
  auto ltype = labels_ds.type();
  if (!ltype.ok()) return in_dataset(ltype.status());
  if (ltype->element() != h5::ElementType::kInt32) {
    return invalid(path, absl::StrFormat("%s has element type %s, expected int32", kLabelsPath,
                                         ltype->name()));
  }
  const auto& d = *idims;
  if (d[0] != (*ldims)[0]) {
    return invalid(path, absl::StrFormat("%s has %d images but %s has %d labels, expected equal",
                                         kImagesPath, d[0], kLabelsPath, (*ldims)[0]));
  }
  if (d[0] == 0) return invalid(path, absl::StrCat(kImagesPath, " has 0 images, expected >= 1"));
  if (d[1] < 1 || d[1] > kMaxImageSide || d[2] < 1 || d[2] > kMaxImageSide || d[3] < 1 ||
      d[3] > kMaxChannels || d[1] * d[2] * d[3] > static_cast<hsize_t>(kMaxImageBytes) ||
      d[0] > (hsize_t{1} << 40)) {
    return invalid(
        path, absl::StrFormat("%s has shape (%d,%d,%d,%d), expected N <= 2^40, H and W in [1, %d], "
                              "C in [1, %d] and H*W*C <= %d bytes",
                              kImagesPath, d[0], d[1], d[2], d[3], kMaxImageSide, kMaxChannels,
                              kMaxImageBytes));
  }
  info.num_samples = static_cast<int64_t>(d[0]);
  info.height = static_cast<int>(d[1]);
  info.width = static_cast<int>(d[2]);
  info.channels = static_cast<int>(d[3]);

  // Storage layout (informational).
  auto chunk = r->images_.chunk_dims();
  if (!chunk.ok()) return in_dataset(chunk.status());
  if (!chunk->empty()) {
    info.chunk_samples = static_cast<int64_t>((*chunk)[0]);
    info.chunks_whole_images = (*chunk)[1] == d[1] && (*chunk)[2] == d[2] && (*chunk)[3] == d[3];
  }
  auto gz = r->images_.gzip_level(&info.other_filters);
  if (!gz.ok()) return in_dataset(gz.status());
  info.gzip_level = *gz;

  // Attributes of the file (root group).
  if (!f.has_attribute("/", "format")) {
    return invalid(path, absl::StrFormat("attribute format is missing, expected \"%s\" "
                                         "(see docs/dataset-format.md)",
                                         kDatasetFormatName));
  }
  auto format = f.read_string_attribute("/", "format");
  if (!format.ok()) return in_dataset(format.status());
  if (*format != kDatasetFormatName) {
    return invalid(path, absl::StrFormat("attribute format is \"%s\", expected \"%s\"", *format,
                                         kDatasetFormatName));
  }
  if (!f.has_attribute("/", "format_version")) {
    return invalid(path, absl::StrFormat("attribute format_version is missing, expected %d",
                                         kDatasetFormatVersion));
  }
  auto version = f.read_numbers_attribute("/", "format_version");
  if (!version.ok()) return in_dataset(version.status());
  if (version->size() != 1 || (*version)[0] != kDatasetFormatVersion) {
    return invalid(path, absl::StrFormat("attribute format_version is %s, expected %d",
                                         absl::StrJoin(*version, ","), kDatasetFormatVersion));
  }
  info.format_version = kDatasetFormatVersion;
  if (!f.has_attribute("/", "class_names")) {
    return invalid(path, "attribute class_names is missing, expected one string per class");
  }
  auto names = f.read_strings_attribute("/", "class_names");
  if (!names.ok()) return in_dataset(names.status());
  if (names->empty() || static_cast<int64_t>(names->size()) > kMaxClasses) {
    return invalid(path, absl::StrFormat("attribute class_names has %d entries, expected 1..%d",
                                         names->size(), kMaxClasses));
  }
  info.class_names = std::move(names).value();
  for (const char* stat : {"mean", "std"}) {
    if (!f.has_attribute("/", stat)) {
      return invalid(path, absl::StrFormat("attribute %s is missing, expected %d floats (one per "
                                           "channel, of pixel/255)",
                                           stat, info.channels));
    }
    auto v = f.read_numbers_attribute("/", stat);
    if (!v.ok()) return in_dataset(v.status());
    if (static_cast<int>(v->size()) != info.channels) {
      return invalid(path, absl::StrFormat("attribute %s has %d values, expected %d (channels)",
                                           stat, v->size(), info.channels));
    }
    std::vector<float>& out = std::string_view(stat) == "mean" ? info.mean : info.std;
    for (double x : *v) {
      const bool ok = std::isfinite(x) && (std::string_view(stat) == "mean" || x > 0);
      if (!ok) {
        return invalid(
            path, absl::StrFormat("attribute %s contains %g, expected a finite%s value", stat, x,
                                  std::string_view(stat) == "std" ? " positive" : ""));
      }
      out.push_back(static_cast<float>(x));
    }
  }
  if (f.has_attribute("/", "source")) {
    auto src = f.read_string_attribute("/", "source");
    if (src.ok()) info.source = *src;
  }

  // Labels: read once, check every one.
  r->labels_.resize(static_cast<size_t>(info.num_samples));
  Status s = labels_ds.read_rows(H5T_NATIVE_INT32, 0, info.num_samples, r->labels_.data());
  if (!s.ok()) return in_dataset(s);
  const int32_t k = info.num_classes();
  for (int64_t i = 0; i < info.num_samples; ++i) {
    const int32_t l = r->labels_[i];
    if (l < 0 || l >= k) {
      return invalid(path, absl::StrFormat("%s[%d] is %d, expected 0 <= label < %d (the number "
                                           "of class_names)",
                                           kLabelsPath, i, l, k));
    }
  }
  return r;
}

std::vector<int64_t> DatasetReader::class_counts() const {
  std::vector<int64_t> counts(static_cast<size_t>(info_.num_classes()), 0);
  for (int32_t l : labels_) ++counts[l];
  return counts;
}

Status DatasetReader::read_images(int64_t first, int64_t count, uint8_t* out) const {
  return in_dataset(images_.read_rows(H5T_NATIVE_UINT8, first, count, out));
}

// ---------------------------------------------------------------------------------------------
// Writer

StatusOr<std::unique_ptr<DatasetWriter>> DatasetWriter::create(const std::string& path,
                                                               const DatasetWriteOptions& o) {
  if (o.num_samples < 1) return invalid(path, "0 images to write, expected >= 1");
  if (o.height < 1 || o.height > kMaxImageSide || o.width < 1 || o.width > kMaxImageSide ||
      o.channels < 1 || o.channels > kMaxChannels ||
      int64_t{o.height} * o.width * o.channels > kMaxImageBytes) {
    return invalid(path,
                   absl::StrFormat("image shape %dx%dx%d, expected H and W in [1, %d], C "
                                   "in [1, %d]",
                                   o.height, o.width, o.channels, kMaxImageSide, kMaxChannels));
  }
  if (o.class_names.empty() || static_cast<int64_t>(o.class_names.size()) > kMaxClasses) {
    return invalid(
        path, absl::StrFormat("%d class names, expected 1..%d", o.class_names.size(), kMaxClasses));
  }
  if (o.gzip_level < 0 || o.gzip_level > 9) {
    return invalid(path, absl::StrFormat("gzip level %d, expected 0..9", o.gzip_level));
  }
  std::unique_ptr<DatasetWriter> w(new DatasetWriter());
  w->path_ = path;
  w->temp_path_ = absl::StrCat(path, ".tmp-", ::getpid());
  w->options_ = o;
  w->sum_.assign(static_cast<size_t>(o.channels), 0);
  w->sum_sq_.assign(static_cast<size_t>(o.channels), 0);
  auto file = h5::File::create(w->temp_path_);
  if (!file.ok()) return in_dataset(file.status());
  w->file_ = std::move(file).value();

  const int64_t image_bytes = int64_t{o.height} * o.width * o.channels;
  const hsize_t n = static_cast<hsize_t>(o.num_samples);
  const hsize_t cs =
      static_cast<hsize_t>(chunk_samples_for(image_bytes, o.num_samples, o.chunk_bytes));
  const hsize_t h = o.height, wd = o.width, c = o.channels;
  auto images = w->file_.create_dataset(kImagesPath, H5T_STD_U8LE, {n, h, wd, c}, {cs, h, wd, c},
                                        o.gzip_level);
  if (!images.ok()) return in_dataset(images.status());
  w->images_ = std::move(images).value();
  const hsize_t lchunk = std::min<hsize_t>(n, 1 << 16);
  auto labels = w->file_.create_dataset(kLabelsPath, H5T_STD_I32LE, {n}, {lchunk}, o.gzip_level);
  if (!labels.ok()) return in_dataset(labels.status());
  w->labels_ = std::move(labels).value();
  return w;
}

DatasetWriter::~DatasetWriter() {
  if (!finished_) {
    images_ = h5::Dataset();
    labels_ = h5::Dataset();
    file_ = h5::File();
    if (!temp_path_.empty()) std::remove(temp_path_.c_str());
  }
}

Status DatasetWriter::append(const uint8_t* images, const int32_t* labels, int64_t count) {
  if (finished_)
    return absl::FailedPreconditionError(absl::StrCat("dataset ", path_, ": already finished"));
  if (count < 0 || written_ + count > options_.num_samples) {
    return invalid(path_, absl::StrFormat("appending %d images after %d, expected at most %d in "
                                          "total",
                                          count, written_, options_.num_samples));
  }
  const int32_t k = static_cast<int32_t>(options_.class_names.size());
  for (int64_t i = 0; i < count; ++i) {
    if (labels[i] < 0 || labels[i] >= k) {
      return invalid(path_, absl::StrFormat("label of sample %d is %d, expected 0 <= label < %d",
                                            written_ + i, labels[i], k));
    }
  }
  const int c = options_.channels;
  const int64_t values = count * options_.height * options_.width * c;
  // Per-channel sums over blocks of 16384 pixels: 32-bit partial sums cannot overflow
  // (255^2 * 16384 < 2^32) and keep the inner loop vectorizable.
  const int64_t block = int64_t{c} * 16384;
  for (int64_t b = 0; b < values; b += block) {
    const int64_t e = std::min(values, b + block);
    for (int ch = 0; ch < c; ++ch) {
      uint32_t ps = 0, psq = 0;
      for (int64_t j = b + ch; j < e; j += c) {
        const uint32_t v = images[j];
        ps += v;
        psq += v * v;
      }
      sum_[ch] += ps;
      sum_sq_[ch] += psq;
    }
  }
  RETURN_IF_ERROR(in_dataset(images_.write_rows(H5T_NATIVE_UINT8, written_, count, images)));
  RETURN_IF_ERROR(in_dataset(labels_.write_rows(H5T_NATIVE_INT32, written_, count, labels)));
  written_ += count;
  return absl::OkStatus();
}

Status DatasetWriter::finish() {
  if (finished_) return absl::OkStatus();
  if (written_ != options_.num_samples) {
    return invalid(
        path_, absl::StrFormat("%d images written, expected %d", written_, options_.num_samples));
  }
  const int c = options_.channels;
  const double count = static_cast<double>(options_.num_samples) * options_.height * options_.width;
  std::vector<float> mean(c), stddev(c);
  for (int ch = 0; ch < c; ++ch) {
    const double m = static_cast<double>(sum_[ch]) / count / 255.0;
    const double m2 = static_cast<double>(sum_sq_[ch]) / count / (255.0 * 255.0);
    mean[ch] = static_cast<float>(m);
    // A constant channel has std 0; floor it at one grey level so normalization stays finite.
    stddev[ch] = static_cast<float>(std::max(std::sqrt(std::max(0.0, m2 - m * m)), 1.0 / 255.0));
  }
  const h5::File& f = file_;
  RETURN_IF_ERROR(in_dataset(f.write_strings_attribute("/", "class_names", options_.class_names)));
  RETURN_IF_ERROR(in_dataset(f.write_floats_attribute("/", "mean", mean)));
  RETURN_IF_ERROR(in_dataset(f.write_floats_attribute("/", "std", stddev)));
  RETURN_IF_ERROR(in_dataset(f.write_string_attribute("/", "source", options_.source)));
  RETURN_IF_ERROR(in_dataset(f.write_int_attribute("/", "format_version", kDatasetFormatVersion)));
  RETURN_IF_ERROR(in_dataset(f.write_string_attribute("/", "format", kDatasetFormatName)));
  images_ = h5::Dataset();
  labels_ = h5::Dataset();
  RETURN_IF_ERROR(in_dataset(file_.close()));

  // Durable before visible: fsync the data, rename, fsync the directory.
  const int fd = ::open(temp_path_.c_str(), O_RDONLY);
  if (fd < 0 || ::fsync(fd) != 0) {
    if (fd >= 0) ::close(fd);
    return absl::InternalError(absl::StrCat("dataset ", temp_path_, ": cannot fsync"));
  }
  ::close(fd);
  if (std::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    return absl::PermissionDeniedError(absl::StrCat("dataset ", path_, ": cannot rename ",
                                                    temp_path_, " to it: ", std::strerror(errno)));
  }
  const size_t slash = path_.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : path_.substr(0, slash + 1);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  finished_ = true;
  return absl::OkStatus();
}

Status write_dataset(const std::string& path, const DatasetWriteOptions& options,
                     const uint8_t* images, const int32_t* labels) {
  ASSIGN_OR_RETURN(std::unique_ptr<DatasetWriter> w, DatasetWriter::create(path, options));
  const int64_t image_bytes = int64_t{options.height} * options.width * options.channels;
  const int64_t step = std::max<int64_t>(1, (int64_t{64} << 20) / image_bytes);
  for (int64_t i = 0; i < options.num_samples; i += step) {
    const int64_t n = std::min(step, options.num_samples - i);
    RETURN_IF_ERROR(w->append(images + i * image_bytes, labels + i, n));
  }
  return w->finish();
}

}  // namespace resdist
