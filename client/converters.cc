// Converter sources (IDX, CIFAR binary, image folder, synthetic) and the streaming convert loop.
#include "client/converters.h"

#include <stb/stb_image.h>
#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/synthetic.h"

namespace resdist::client {
namespace {

namespace fs = std::filesystem;

const char* const kFashionMnistNames[] = {"T-shirt/top", "Trouser",   "Pullover", "Dress",
                                          "Coat",        "Sandal",    "Shirt",    "Sneaker",
                                          "Bag",         "Ankle boot"};
const char* const kCifar10Names[] = {"airplane", "automobile", "bird",  "cat",  "deer",
                                     "dog",      "frog",       "horse", "ship", "truck"};
const char* const kCifar100Fine[] = {
    "apple",       "aquarium_fish", "baby",      "bear",       "beaver",       "bed",
    "bee",         "beetle",        "bicycle",   "bottle",     "bowl",         "boy",
    "bridge",      "bus",           "butterfly", "camel",      "can",          "castle",
    "caterpillar", "cattle",        "chair",     "chimpanzee", "clock",        "cloud",
    "cockroach",   "couch",         "crab",      "crocodile",  "cup",          "dinosaur",
    "dolphin",     "elephant",      "flatfish",  "forest",     "fox",          "girl",
    "hamster",     "house",         "kangaroo",  "keyboard",   "lamp",         "lawn_mower",
    "leopard",     "lion",          "lizard",    "lobster",    "man",          "maple_tree",
    "motorcycle",  "mountain",      "mouse",     "mushroom",   "oak_tree",     "orange",
    "orchid",      "otter",         "palm_tree", "pear",       "pickup_truck", "pine_tree",
    "plain",       "plate",         "poppy",     "porcupine",  "possum",       "rabbit",
    "raccoon",     "ray",           "road",      "rocket",     "rose",         "sea",
    "seal",        "shark",         "shrew",     "skunk",      "skyscraper",   "snail",
    "snake",       "spider",        "squirrel",  "streetcar",  "sunflower",    "sweet_pepper",
    "table",       "tank",          "telephone", "television", "tiger",        "tractor",
    "train",       "trout",         "tulip",     "turtle",     "wardrobe",     "whale",
    "willow_tree", "wolf",          "woman",     "worm"};
static_assert(sizeof(kCifar100Fine) / sizeof(kCifar100Fine[0]) == 100);
const char* const kCifar100Coarse[] = {"aquatic_mammals",
                                       "fish",
                                       "flowers",
                                       "food_containers",
                                       "fruit_and_vegetables",
                                       "household_electrical_devices",
                                       "household_furniture",
                                       "insects",
                                       "large_carnivores",
                                       "large_man-made_outdoor_things",
                                       "large_natural_outdoor_scenes",
                                       "large_omnivores_and_herbivores",
                                       "medium_mammals",
                                       "non-insect_invertebrates",
                                       "people",
                                       "reptiles",
                                       "small_mammals",
                                       "trees",
                                       "vehicles_1",
                                       "vehicles_2"};
static_assert(sizeof(kCifar100Coarse) / sizeof(kCifar100Coarse[0]) == 20);

template <size_t N>
std::vector<std::string> names_of(const char* const (&names)[N]) {
  return std::vector<std::string>(names, names + N);
}

std::vector<std::string> numbered_names(int k) {
  std::vector<std::string> v;
  for (int i = 0; i < k; ++i) v.push_back(std::to_string(i));
  return v;
}

// Reads a whole file, transparently gunzipping (zlib passes plain files through unchanged).
StatusOr<std::vector<uint8_t>> read_maybe_gzipped(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat(path, ": ", std::strerror(errno)));
  }
  if (S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": is a directory, expected a file"));
  }
  gzFile gz = gzopen(path.c_str(), "rb");
  if (gz == nullptr) {
    return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  gzbuffer(gz, 1 << 20);
  std::vector<uint8_t> data;
  data.reserve(static_cast<size_t>(st.st_size));
  uint8_t buf[1 << 16];
  for (;;) {
    const int n = gzread(gz, buf, sizeof(buf));
    if (n < 0) {
      int errnum = 0;
      const std::string msg = gzerror(gz, &errnum);
      gzclose(gz);
      return absl::DataLossError(absl::StrCat(path, ": cannot decompress: ", msg));
    }
    if (n == 0) break;
    data.insert(data.end(), buf, buf + n);
  }
  // A gzip stream cut short reads as a clean EOF in some zlib versions; gzclose reports it.
  const int rc = gzclose(gz);
  if (rc == Z_BUF_ERROR) {
    return absl::DataLossError(absl::StrCat(path, ": truncated gzip stream"));
  }
  return data;
}

uint32_t big_endian_u32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

// In-memory source over already decoded data.
class MemorySource : public ImageSource {
 public:
  MemorySource(std::vector<uint8_t> images, std::vector<int32_t> labels, int h, int w, int c,
               std::vector<std::string> names, std::string description)
      : images_(std::move(images)),
        labels_(std::move(labels)),
        h_(h),
        w_(w),
        c_(c),
        names_(std::move(names)),
        description_(std::move(description)) {}
  int64_t num_samples() const override { return static_cast<int64_t>(labels_.size()); }
  int height() const override { return h_; }
  int width() const override { return w_; }
  int channels() const override { return c_; }
  std::vector<std::string> class_names() const override { return names_; }
  std::string description() const override { return description_; }
  Status read(int64_t count, uint8_t* images, int32_t* labels) override {
    const int64_t bytes = int64_t{h_} * w_ * c_;
    if (pos_ + count > num_samples()) return absl::OutOfRangeError("read past the end");
    std::memcpy(images, images_.data() + pos_ * bytes, static_cast<size_t>(count * bytes));
    std::memcpy(labels, labels_.data() + pos_, static_cast<size_t>(count) * sizeof(int32_t));
    pos_ += count;
    return absl::OkStatus();
  }

 private:
  std::vector<uint8_t> images_;  // (N, H, W, C)
  std::vector<int32_t> labels_;  // (N)
  int h_, w_, c_;
  std::vector<std::string> names_;
  std::string description_;
  int64_t pos_ = 0;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// IDX

StatusOr<std::unique_ptr<ImageSource>> open_idx(const std::string& images_path,
                                                const std::string& labels_path,
                                                std::vector<std::string> class_names) {
  ASSIGN_OR_RETURN(std::vector<uint8_t> img, read_maybe_gzipped(images_path));
  ASSIGN_OR_RETURN(std::vector<uint8_t> lab, read_maybe_gzipped(labels_path));
  if (img.size() < 16) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "IDX %s: %d bytes, too short for an image header (16 bytes)", images_path, img.size()));
  }
  const uint32_t imagic = big_endian_u32(img.data());
  if (imagic != 0x803) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "IDX %s: magic number 0x%08x, expected 0x00000803 (uint8 images, 3 dimensions)",
        images_path, imagic));
  }
  const int64_t n = big_endian_u32(img.data() + 4);
  const int64_t h = big_endian_u32(img.data() + 8);
  const int64_t w = big_endian_u32(img.data() + 12);
  if (n == 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("IDX %s: 0 images, expected >= 1", images_path));
  }
  if (h < 1 || w < 1 || h > kMaxImageSide || w > kMaxImageSide) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "IDX %s: image size %dx%d, expected sides in [1, %d]", images_path, h, w, kMaxImageSide));
  }
  const int64_t body = n * h * w;
  if (static_cast<int64_t>(img.size()) - 16 != body) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "IDX %s: %s body: header declares %d images of %dx%d = %d bytes, file has %d", images_path,
        static_cast<int64_t>(img.size()) - 16 < body ? "truncated" : "oversized", n, h, w, body,
        static_cast<int64_t>(img.size()) - 16));
  }
  if (lab.size() < 8) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "IDX %s: %d bytes, too short for a label header (8 bytes)", labels_path, lab.size()));
  }
  const uint32_t lmagic = big_endian_u32(lab.data());
  if (lmagic != 0x801) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "IDX %s: magic number 0x%08x, expected 0x00000801 (uint8 labels, 1 dimension)", labels_path,
        lmagic));
  }
  const int64_t ln = big_endian_u32(lab.data() + 4);
  if (static_cast<int64_t>(lab.size()) - 8 != ln) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "IDX %s: %s body: header declares %d labels, file has %d bytes of labels", labels_path,
        static_cast<int64_t>(lab.size()) - 8 < ln ? "truncated" : "oversized", ln,
        static_cast<int64_t>(lab.size()) - 8));
  }
  if (ln != n) {
    return absl::InvalidArgumentError(
        absl::StrFormat("IDX %s has %d images but %s has %d labels, expected equal", images_path, n,
                        labels_path, ln));
  }
  std::vector<int32_t> labels(static_cast<size_t>(n));
  int max_label = 0;
  for (int64_t i = 0; i < n; ++i) {
    labels[i] = lab[8 + i];
    max_label = std::max(max_label, labels[i]);
  }
  if (class_names.empty()) {
    const bool fashion = absl::StrContains(absl::AsciiStrToLower(images_path), "fashion");
    class_names = fashion && max_label < 10 ? names_of(kFashionMnistNames)
                                            : numbered_names(std::max(10, max_label + 1));
  }
  img.erase(img.begin(), img.begin() + 16);
  return std::unique_ptr<ImageSource>(new MemorySource(
      std::move(img), std::move(labels), static_cast<int>(h), static_cast<int>(w), 1,
      std::move(class_names), absl::StrCat("idx: ", images_path, " + ", labels_path)));
}

// ---------------------------------------------------------------------------------------------
// CIFAR

StatusOr<std::unique_ptr<ImageSource>> open_cifar(const std::vector<std::string>& files,
                                                  CifarKind kind) {
  const bool c100 = kind != CifarKind::kCifar10;
  const int64_t label_bytes = c100 ? 2 : 1;
  const int64_t record = label_bytes + 3072;
  if (files.empty()) return absl::InvalidArgumentError("cifar: no --input files given");
  std::vector<uint8_t> images;
  std::vector<int32_t> labels;
  const int num_classes = kind == CifarKind::kCifar10        ? 10
                          : kind == CifarKind::kCifar100Fine ? 100
                                                             : 20;
  for (const std::string& path : files) {
    ASSIGN_OR_RETURN(std::vector<uint8_t> data, read_maybe_gzipped(path));
    if (data.empty() || static_cast<int64_t>(data.size()) % record != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "cifar %s: %d bytes, expected a non-zero multiple of the %d-byte %s record (truncated "
          "or not a %s binary batch?)",
          path, data.size(), record, c100 ? "CIFAR-100" : "CIFAR-10",
          c100 ? "CIFAR-100" : "CIFAR-10"));
    }
    const int64_t n = static_cast<int64_t>(data.size()) / record;
    const size_t base = images.size();
    images.resize(base + static_cast<size_t>(n) * 3072);
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t* r = data.data() + i * record;
      const int label = kind == CifarKind::kCifar100Fine ? r[1] : r[0];
      if (label >= num_classes) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "cifar %s: record %d has label %d, expected < %d", path, i, label, num_classes));
      }
      labels.push_back(label);
      const uint8_t* px = r + label_bytes;  // (3, 32, 32) planes
      uint8_t* out = images.data() + base + static_cast<size_t>(i) * 3072;
      for (int p = 0; p < 1024; ++p) {
        out[p * 3 + 0] = px[p];
        out[p * 3 + 1] = px[1024 + p];
        out[p * 3 + 2] = px[2048 + p];
      }
    }
  }
  std::vector<std::string> names = kind == CifarKind::kCifar10        ? names_of(kCifar10Names)
                                   : kind == CifarKind::kCifar100Fine ? names_of(kCifar100Fine)
                                                                      : names_of(kCifar100Coarse);
  std::string desc = c100 ? (kind == CifarKind::kCifar100Fine ? "cifar100 (fine labels):"
                                                              : "cifar100 (coarse labels):")
                          : "cifar10:";
  for (const std::string& f : files) absl::StrAppend(&desc, " ", f);
  return std::unique_ptr<ImageSource>(
      new MemorySource(std::move(images), std::move(labels), 32, 32, 3, std::move(names), desc));
}

// ---------------------------------------------------------------------------------------------
// Folder

void resize_bilinear(const uint8_t* src, int src_h, int src_w, int channels, uint8_t* dst,
                     int dst_h, int dst_w) {
  if (src_h == dst_h && src_w == dst_w) {
    std::memcpy(dst, src, static_cast<size_t>(src_h) * src_w * channels);
    return;
  }
  const float sy = static_cast<float>(src_h) / dst_h;
  const float sx = static_cast<float>(src_w) / dst_w;
  for (int y = 0; y < dst_h; ++y) {
    const float fy = std::clamp((y + 0.5f) * sy - 0.5f, 0.0f, static_cast<float>(src_h - 1));
    const int y0 = static_cast<int>(fy);
    const int y1 = std::min(y0 + 1, src_h - 1);
    const float wy = fy - y0;
    for (int x = 0; x < dst_w; ++x) {
      const float fx = std::clamp((x + 0.5f) * sx - 0.5f, 0.0f, static_cast<float>(src_w - 1));
      const int x0 = static_cast<int>(fx);
      const int x1 = std::min(x0 + 1, src_w - 1);
      const float wx = fx - x0;
      for (int c = 0; c < channels; ++c) {
        auto at = [&](int yy, int xx) {
          return static_cast<float>(src[(static_cast<size_t>(yy) * src_w + xx) * channels + c]);
        };
        const float v = (1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1)) +
                        wy * ((1 - wx) * at(y1, x0) + wx * at(y1, x1));
        dst[(static_cast<size_t>(y) * dst_w + x) * channels + c] =
            static_cast<uint8_t>(std::clamp(std::lround(v), 0L, 255L));
      }
    }
  }
}

namespace {

class FolderSource : public ImageSource {
 public:
  FolderSource(std::string dir, std::vector<std::string> classes,
               std::vector<std::pair<std::string, int32_t>> files, int h, int w, int c)
      : dir_(std::move(dir)),
        classes_(std::move(classes)),
        files_(std::move(files)),
        h_(h),
        w_(w),
        c_(c) {}
  int64_t num_samples() const override { return static_cast<int64_t>(files_.size()); }
  int height() const override { return h_; }
  int width() const override { return w_; }
  int channels() const override { return c_; }
  std::vector<std::string> class_names() const override { return classes_; }
  std::string description() const override {
    return absl::StrFormat("folder: %s (resized to %dx%dx%d)", dir_, h_, w_, c_);
  }
  Status read(int64_t count, uint8_t* images, int32_t* labels) override {
    const size_t bytes = static_cast<size_t>(h_) * w_ * c_;
    for (int64_t i = 0; i < count; ++i, ++pos_) {
      const auto& [path, label] = files_[pos_];
      int w = 0, h = 0, n = 0;
      uint8_t* px = stbi_load(path.c_str(), &w, &h, &n, c_);
      if (px == nullptr) {
        return absl::InvalidArgumentError(absl::StrFormat("folder %s: cannot decode image %s: %s",
                                                          dir_, path, stbi_failure_reason()));
      }
      resize_bilinear(px, h, w, c_, images + i * bytes, h_, w_);
      stbi_image_free(px);
      labels[i] = label;
    }
    return absl::OkStatus();
  }

 private:
  std::string dir_;
  std::vector<std::string> classes_;
  std::vector<std::pair<std::string, int32_t>> files_;
  int h_, w_, c_;
  int64_t pos_ = 0;
};

bool is_image_name(const fs::path& p) {
  const std::string ext = absl::AsciiStrToLower(p.extension().string());
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

}  // namespace

StatusOr<std::unique_ptr<ImageSource>> open_folder(const std::string& dir, int height, int width,
                                                   int channels) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrFormat("folder %s: not a directory", dir));
  }
  if (channels != 1 && channels != 3) {
    return absl::InvalidArgumentError(
        absl::StrFormat("folder %s: channels %d, expected 1 or 3", dir, channels));
  }
  if (height < 1 || width < 1 || height > kMaxImageSide || width > kMaxImageSide) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "folder %s: size %dx%d, expected sides in [1, %d]", dir, height, width, kMaxImageSide));
  }
  std::vector<std::string> classes;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && !name.empty() && name[0] != '.') classes.push_back(name);
  }
  if (ec) return absl::PermissionDeniedError(absl::StrCat("folder ", dir, ": ", ec.message()));
  std::sort(classes.begin(), classes.end());
  if (classes.empty()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "folder %s: no class subfolders, expected DIR/<class>/<image>.png|jpg", dir));
  }
  std::vector<std::pair<std::string, int32_t>> files;
  for (size_t k = 0; k < classes.size(); ++k) {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(fs::path(dir) / classes[k], ec)) {
      if (entry.is_regular_file() && is_image_name(entry.path())) {
        names.push_back(entry.path().string());
      }
    }
    std::sort(names.begin(), names.end());
    for (std::string& n : names) files.emplace_back(std::move(n), static_cast<int32_t>(k));
  }
  if (files.empty()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "folder %s: 0 images (.png, .jpg, .jpeg) in %d class folders, expected >= 1", dir,
        classes.size()));
  }
  return std::unique_ptr<ImageSource>(
      new FolderSource(dir, std::move(classes), std::move(files), height, width, channels));
}

// ---------------------------------------------------------------------------------------------
// Synthetic

namespace {

class SyntheticSource : public ImageSource {
 public:
  explicit SyntheticSource(SyntheticGenerator gen) : gen_(std::move(gen)) {}
  int64_t num_samples() const override { return gen_.spec().num_samples; }
  int height() const override { return gen_.spec().height; }
  int width() const override { return gen_.spec().width; }
  int channels() const override { return gen_.spec().channels; }
  std::vector<std::string> class_names() const override {
    std::vector<std::string> v;
    for (int k = 0; k < gen_.spec().num_classes; ++k) v.push_back(absl::StrCat("class", k));
    return v;
  }
  std::string description() const override {
    const SyntheticSpec& s = gen_.spec();
    return absl::StrFormat("synthetic: num=%d shape=%dx%dx%d classes=%d seed=%d", s.num_samples,
                           s.height, s.width, s.channels, s.num_classes, s.seed);
  }
  Status read(int64_t count, uint8_t* images, int32_t* labels) override {
    gen_.fill(pos_, count, images, labels);
    pos_ += count;
    return absl::OkStatus();
  }

 private:
  SyntheticGenerator gen_;
  int64_t pos_ = 0;
};

}  // namespace

StatusOr<std::unique_ptr<ImageSource>> open_synthetic(int64_t num, int height, int width,
                                                      int channels, int classes, uint64_t seed) {
  if (num < 1) {
    return absl::InvalidArgumentError(absl::StrFormat("synthetic: --num %d, expected >= 1", num));
  }
  SyntheticSpec spec{num, height, width, channels, classes, seed};
  ASSIGN_OR_RETURN(SyntheticGenerator gen, SyntheticGenerator::create(spec));
  return std::unique_ptr<ImageSource>(new SyntheticSource(std::move(gen)));
}

// ---------------------------------------------------------------------------------------------

Status convert(ImageSource& source, const ConvertOptions& options) {
  DatasetWriteOptions w;
  w.num_samples = source.num_samples();
  w.height = source.height();
  w.width = source.width();
  w.channels = source.channels();
  w.class_names = options.class_names.empty() ? source.class_names() : options.class_names;
  w.source = source.description();
  w.gzip_level = options.gzip_level;
  ASSIGN_OR_RETURN(std::unique_ptr<DatasetWriter> writer,
                   DatasetWriter::create(options.out_path, w));
  const int64_t image_bytes = int64_t{w.height} * w.width * w.channels;
  // Batches of whole chunks, about 16 MiB, allocated once.
  const int64_t chunk = chunk_samples_for(image_bytes, w.num_samples, kDefaultChunkBytes);
  const int64_t batch = std::max<int64_t>(1, (int64_t{16} << 20) / (chunk * image_bytes)) * chunk;
  std::vector<uint8_t> images(static_cast<size_t>(std::min(batch, w.num_samples) * image_bytes));
  std::vector<int32_t> labels(static_cast<size_t>(std::min(batch, w.num_samples)));
  for (int64_t done = 0; done < w.num_samples;) {
    const int64_t n = std::min(batch, w.num_samples - done);
    RETURN_IF_ERROR(source.read(n, images.data(), labels.data()));
    RETURN_IF_ERROR(writer->append(images.data(), labels.data(), n));
    done += n;
    if (options.progress) options.progress(done, w.num_samples);
  }
  return writer->finish();
}

StatusOr<std::vector<int>> parse_shape(const std::string& text, int parts) {
  std::vector<std::string> pieces = absl::StrSplit(absl::AsciiStrToLower(text), 'x');
  std::vector<int> out;
  const char* expected = parts == 2 ? "HxW, e.g. 32x32" : "HxWxC, e.g. 28x28x1";
  if (static_cast<int>(pieces.size()) != parts) {
    return absl::InvalidArgumentError(absl::StrFormat("shape \"%s\": expected %s", text, expected));
  }
  for (const std::string& p : pieces) {
    int v = 0;
    if (!absl::SimpleAtoi(p, &v) || v < 1) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "shape \"%s\": \"%s\" is not a positive integer, expected %s", text, p, expected));
    }
    out.push_back(v);
  }
  return out;
}

}  // namespace resdist::client
