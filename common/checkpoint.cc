// Checkpoint file format: XXH64, the canonical checksum stream, the atomic writer, the
// validating reader and checkpoint-directory housekeeping. The format itself is specified in
// docs/checkpoint-format.md; keep the two in step (and bump kCheckpointFormatVersion when the
// layout or the checksum stream changes).
#include "common/checkpoint.h"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/hdf5.h"

namespace resdist {

static_assert(std::endian::native == std::endian::little,
              "the checksum stream and the HDF5 file types are little-endian");

// ---------------------------------------------------------------------------------------------
// XXH64 (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md)

namespace {

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kP3 = 0x165667B19E3779F9ULL;
constexpr uint64_t kP4 = 0x85EBCA77C2B2AE63ULL;
constexpr uint64_t kP5 = 0x27D4EB2F165667C5ULL;

inline uint64_t read64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline uint32_t read32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t xxh_round(uint64_t acc, uint64_t input) {
  acc += input * kP2;
  acc = std::rotl(acc, 31);
  return acc * kP1;
}
inline uint64_t xxh_merge(uint64_t acc, uint64_t val) {
  acc ^= xxh_round(0, val);
  return acc * kP1 + kP4;
}

}  // namespace

Xxh64::Xxh64(uint64_t seed) : seed_(seed) {
  v_[0] = seed + kP1 + kP2;
  v_[1] = seed + kP2;
  v_[2] = seed;
  v_[3] = seed - kP1;
}

void Xxh64::update(const void* data, size_t len) {
  const auto* p = static_cast<const unsigned char*>(data);
  total_len_ += len;
  if (buf_len_ > 0) {
    const size_t take = std::min(len, 32 - buf_len_);
    std::memcpy(buf_ + buf_len_, p, take);
    buf_len_ += take;
    p += take;
    len -= take;
    if (buf_len_ < 32) return;
    for (int i = 0; i < 4; ++i) v_[i] = xxh_round(v_[i], read64(buf_ + 8 * i));
    buf_len_ = 0;
  }
  uint64_t v0 = v_[0], v1 = v_[1], v2 = v_[2], v3 = v_[3];
  while (len >= 32) {
    v0 = xxh_round(v0, read64(p));
    v1 = xxh_round(v1, read64(p + 8));
    v2 = xxh_round(v2, read64(p + 16));
    v3 = xxh_round(v3, read64(p + 24));
    p += 32;
    len -= 32;
  }
  v_[0] = v0, v_[1] = v1, v_[2] = v2, v_[3] = v3;
  if (len > 0) {
    std::memcpy(buf_, p, len);
    buf_len_ = len;
  }
}

uint64_t Xxh64::digest() const {
  uint64_t h;
  if (total_len_ >= 32) {
    h = std::rotl(v_[0], 1) + std::rotl(v_[1], 7) + std::rotl(v_[2], 12) + std::rotl(v_[3], 18);
    for (int i = 0; i < 4; ++i) h = xxh_merge(h, v_[i]);
  } else {
    h = seed_ + kP5;
  }
  h += total_len_;
  const unsigned char* p = buf_;
  size_t len = buf_len_;
  while (len >= 8) {
    h ^= xxh_round(0, read64(p));
    h = std::rotl(h, 27) * kP1 + kP4;
    p += 8;
    len -= 8;
  }
  if (len >= 4) {
    h ^= static_cast<uint64_t>(read32(p)) * kP1;
    h = std::rotl(h, 23) * kP2 + kP3;
    p += 4;
    len -= 4;
  }
  while (len > 0) {
    h ^= (*p) * kP5;
    h = std::rotl(h, 11) * kP1;
    ++p;
    --len;
  }
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

namespace {

// ---------------------------------------------------------------------------------------------
// The canonical checksum stream (docs/checkpoint-format.md, "Checksum").

enum DtypeCode : uint8_t { kCodeFloat32 = 1, kCodeInt64 = 2, kCodeUInt8 = 3 };

class ChecksumStream {
 public:
  void u64(uint64_t v) { h_.update(&v, 8); }
  void text(std::string_view s) {
    u64(s.size());
    h_.update(s.data(), s.size());
  }
  // Header of one dataset; its data bytes follow through raw().
  void dataset_header(std::string_view path, uint8_t code, const std::vector<int64_t>& dims) {
    text(path);
    h_.update(&code, 1);
    u64(dims.size());
    for (int64_t d : dims) u64(static_cast<uint64_t>(d));
  }
  void raw(const void* p, size_t n) { h_.update(p, n); }
  void attribute(std::string_view name, std::string_view value) {
    text(name);
    text(value);
  }
  std::string hex() const { return absl::StrFormat("xxh64:%016x", h_.digest()); }

 private:
  Xxh64 h_;
};

// Root attribute names, in checksum order.
constexpr char kAttrFormat[] = "format";
constexpr char kAttrVersion[] = "format_version";
constexpr char kAttrArch[] = "arch";
constexpr char kAttrEpoch[] = "epoch";
constexpr char kAttrStep[] = "global_step";
constexpr char kAttrSamples[] = "samples_consumed";
constexpr char kAttrSeed[] = "seed";
constexpr char kAttrWorld[] = "world_size";
constexpr char kAttrJobSpec[] = "job_spec";
constexpr char kAttrCreatedMs[] = "created_unix_ms";
constexpr char kAttrCreated[] = "created";
constexpr char kAttrChecksum[] = "checksum";

constexpr char kParamsGroup[] = "/params";
constexpr char kBuffersGroup[] = "/buffers";
constexpr char kOptimizerGroup[] = "/optimizer";
constexpr char kRngDataset[] = "/rng_state";

void hash_attributes(const CheckpointMeta& m, const std::string& created, ChecksumStream* cs) {
  cs->attribute(kAttrFormat, kCheckpointFormatName);
  cs->attribute(kAttrVersion, absl::StrCat(m.format_version));
  cs->attribute(kAttrArch, m.arch);
  cs->attribute(kAttrEpoch, absl::StrCat(m.epoch));
  cs->attribute(kAttrStep, absl::StrCat(m.global_step));
  cs->attribute(kAttrSamples, absl::StrCat(m.samples_consumed));
  cs->attribute(kAttrSeed, absl::StrCat(m.seed));
  cs->attribute(kAttrWorld, absl::StrCat(m.world_size));
  cs->attribute(kAttrJobSpec, m.job_spec);
  cs->attribute(kAttrCreatedMs, absl::StrCat(m.created_unix_ms));
  cs->attribute(kAttrCreated, created);
}

std::string iso8601_utc(int64_t unix_ms) {
  const time_t secs = static_cast<time_t>(unix_ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  return absl::StrFormat("%s.%03dZ", buf, static_cast<int>(unix_ms % 1000));
}

std::string dims_string(const std::vector<int64_t>& dims) {
  return absl::StrCat("(", absl::StrJoin(dims, ","), ")");
}

int64_t product(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

Status valid_name(const std::string& path, const char* section, const std::string& name) {
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", path, ": ", section,
                                                   " tensor name '", name,
                                                   "' is not allowed; expected a non-empty "
                                                   "name without '/'"));
  }
  return absl::OkStatus();
}

// One dataset to write, in the canonical (sorted full path) order.
struct WriteItem {
  std::string hdf5_path;
  const CheckpointTensorView* view = nullptr;  // null: the rng_state bytes
};

// Removes a file on scope exit unless dismissed.
class RemoveOnExit {
 public:
  explicit RemoveOnExit(std::string path) : path_(std::move(path)) {}
  ~RemoveOnExit() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  void dismiss() { path_.clear(); }

 private:
  std::string path_;
};

Status fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat("checkpoint ", path, ": cannot open to fsync: ", std::strerror(errno)));
  }
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) {
    return absl::InternalError(
        absl::StrCat("checkpoint ", path, ": fsync failed: ", std::strerror(err)));
  }
  return absl::OkStatus();
}

std::string dir_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

h5::Handle create_group(const h5::File& f, const std::string& name) {
  return h5::Handle(H5Gcreate2(f.id(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                    H5Gclose);
}

// Creates a dataset with a scalar dataspace when `dims` is empty.
StatusOr<h5::Handle> create_dataset(const h5::File& f, const std::string& name, hid_t file_type,
                                    const std::vector<int64_t>& dims) {
  std::vector<hsize_t> hd(dims.begin(), dims.end());
  h5::Handle space(dims.empty() ? H5Screate(H5S_SCALAR)
                                : H5Screate_simple(static_cast<int>(hd.size()), hd.data(), nullptr),
                   H5Sclose);
  h5::Handle d(space.valid() ? H5Dcreate2(f.id(), name.c_str(), file_type, space.get(), H5P_DEFAULT,
                                          H5P_DEFAULT, H5P_DEFAULT)
                             : -1,
               H5Dclose);
  if (!d.valid()) {
    return absl::InternalError(absl::StrCat("checkpoint ", f.path(), ": cannot create dataset ",
                                            name, " (HDF5: ", h5::take_error_stack(), ")"));
  }
  return d;
}

Status write_u64_attribute(const h5::File& f, const char* attr, uint64_t value) {
  h5::Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  h5::Handle a(H5Acreate_by_name(f.id(), "/", attr, H5T_STD_U64LE, space.get(), H5P_DEFAULT,
                                 H5P_DEFAULT, H5P_DEFAULT),
               H5Aclose);
  if (!a.valid() || H5Awrite(a.get(), H5T_NATIVE_UINT64, &value) < 0) {
    return absl::InternalError(absl::StrCat("checkpoint ", f.path(), ": cannot write attribute ",
                                            attr, " (HDF5: ", h5::take_error_stack(), ")"));
  }
  return absl::OkStatus();
}

Status prefixed(const Status& s) {
  if (s.ok() || absl::StartsWith(s.message(), "checkpoint ")) return s;
  return Status(s.code(), absl::StrCat("checkpoint ", s.message()));
}

}  // namespace

const char* CheckpointWriteStageName(CheckpointWriteStage stage) {
  switch (stage) {
    case CheckpointWriteStage::kTempCreated:
      return "temp-created";
    case CheckpointWriteStage::kPayloadHalfWritten:
      return "payload-half-written";
    case CheckpointWriteStage::kBeforeRename:
      return "before-rename";
    case CheckpointWriteStage::kAfterRename:
      return "after-rename";
    case CheckpointWriteStage::kDone:
      return "done";
  }
  return "unknown";
}

// ---------------------------------------------------------------------------------------------
// Writer

Status WriteCheckpoint(const std::string& path, const CheckpointMeta& meta_in,
                       const std::vector<CheckpointTensorView>& params,
                       const std::vector<CheckpointTensorView>& buffers,
                       const std::vector<CheckpointTensorView>& momentum,
                       const CheckpointWriteOptions& options) {
  h5::quiet_errors();
  CheckpointMeta meta = meta_in;
  meta.format_version = kCheckpointFormatVersion;
  if (meta.created_unix_ms == 0) {
    meta.created_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
  }
  if (meta.arch.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint ", path, ": arch is empty; expected the model architecture"));
  }
  if (meta.epoch < 0 || meta.global_step < 0 || meta.samples_consumed < 0 || meta.world_size < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "checkpoint %s: epoch %d, global_step %d, samples_consumed %d, world_size %d; expected "
        "epoch, step and samples >= 0 and world_size >= 1",
        path, meta.epoch, meta.global_step, meta.samples_consumed, meta.world_size));
  }

  // Validate every tensor and lay the datasets out in canonical order.
  std::map<std::string, const CheckpointTensorView*> param_by_name;
  std::vector<WriteItem> items;
  auto add_section = [&](const std::vector<CheckpointTensorView>& views, const char* section,
                         bool is_momentum) -> Status {
    std::map<std::string, bool> seen;
    for (const CheckpointTensorView& v : views) {
      RETURN_IF_ERROR(valid_name(path, section, v.name));
      if (!seen.emplace(v.name, true).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("checkpoint ", path, ": ", section, " tensor ", v.name, " appears twice"));
      }
      for (int64_t d : v.dims) {
        if (d < 0) {
          return absl::InvalidArgumentError(absl::StrCat("checkpoint ", path, ": ", section,
                                                         " tensor ", v.name, " has dims ",
                                                         dims_string(v.dims)));
        }
      }
      const int64_t n = product(v.dims);
      if (n > 0 && v.data == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat("checkpoint ", path, ": ", section, " tensor ", v.name, " has no data"));
      }
      if (v.stored == StoredType::kInt64) {
        if (is_momentum || section == std::string_view("params")) {
          return absl::InvalidArgumentError(absl::StrCat("checkpoint ", path, ": ", section,
                                                         " tensor ", v.name,
                                                         " is int64; only buffers may be"));
        }
        for (int64_t i = 0; i < n; ++i) {
          const float x = v.data[i];
          if (!std::isfinite(x) || x != std::trunc(x)) {
            return absl::InvalidArgumentError(absl::StrFormat(
                "checkpoint %s: buffer %s is stored as int64 but element %d is %g, expected an "
                "integer",
                path, v.name, i, x));
          }
        }
      }
      if (is_momentum) {
        auto it = param_by_name.find(v.name);
        if (it == param_by_name.end()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "checkpoint ", path, ": momentum for ", v.name, " but there is no such parameter"));
        }
        if (it->second->dims != v.dims) {
          return absl::InvalidArgumentError(absl::StrCat(
              "checkpoint ", path, ": momentum for ", v.name, " has shape ", dims_string(v.dims),
              ", the parameter has ", dims_string(it->second->dims)));
        }
        items.push_back({absl::StrCat(kOptimizerGroup, "/", v.name, "/momentum"), &v});
      } else {
        if (section == std::string_view("params")) param_by_name[v.name] = &v;
        items.push_back(
            {absl::StrCat(section == std::string_view("params") ? kParamsGroup : kBuffersGroup, "/",
                          v.name),
             &v});
      }
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(add_section(params, "params", false));
  RETURN_IF_ERROR(add_section(buffers, "buffers", false));
  RETURN_IF_ERROR(add_section(momentum, "momentum", true));
  items.push_back({kRngDataset, nullptr});
  std::sort(items.begin(), items.end(),
            [](const WriteItem& a, const WriteItem& b) { return a.hdf5_path < b.hdf5_path; });

  const std::string temp = TempPathFor(path, ::getpid());
  ::unlink(temp.c_str());
  RemoveOnExit cleanup(temp);
  auto stage = [&](CheckpointWriteStage s) {
    if (options.TEST_on_stage) options.TEST_on_stage(s, temp);
  };
  {
    StatusOr<h5::File> made = h5::File::create(temp);
    if (!made.ok()) return prefixed(made.status());
    h5::File f = std::move(made).value();
    stage(CheckpointWriteStage::kTempCreated);

    for (const char* g : {kParamsGroup, kBuffersGroup, kOptimizerGroup}) {
      if (!create_group(f, g).valid()) {
        return absl::InternalError(absl::StrCat("checkpoint ", temp, ": cannot create group ", g,
                                                " (HDF5: ", h5::take_error_stack(), ")"));
      }
    }
    for (const CheckpointTensorView& v : momentum) {
      const std::string g = absl::StrCat(kOptimizerGroup, "/", v.name);
      if (!create_group(f, g).valid()) {
        return absl::InternalError(absl::StrCat("checkpoint ", temp, ": cannot create group ", g,
                                                " (HDF5: ", h5::take_error_stack(), ")"));
      }
    }

    ChecksumStream cs;
    std::vector<int64_t> as_int64;
    for (size_t i = 0; i < items.size(); ++i) {
      const WriteItem& it = items[i];
      if (it.view == nullptr) {  // rng_state: uint8 (len)
        const std::vector<int64_t> dims = {static_cast<int64_t>(meta.rng_state.size())};
        ASSIGN_OR_RETURN(h5::Handle d, create_dataset(f, it.hdf5_path, H5T_STD_U8LE, dims));
        cs.dataset_header(it.hdf5_path, kCodeUInt8, dims);
        cs.raw(meta.rng_state.data(), meta.rng_state.size());
        if (!meta.rng_state.empty() && H5Dwrite(d.get(), H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL,
                                                H5P_DEFAULT, meta.rng_state.data()) < 0) {
          return absl::InternalError(absl::StrCat("checkpoint ", temp, ": cannot write ",
                                                  it.hdf5_path, " (HDF5: ", h5::take_error_stack(),
                                                  ")"));
        }
      } else {
        const CheckpointTensorView& v = *it.view;
        const int64_t n = product(v.dims);
        const bool int64 = v.stored == StoredType::kInt64;
        ASSIGN_OR_RETURN(
            h5::Handle d,
            create_dataset(f, it.hdf5_path, int64 ? H5T_STD_I64LE : H5T_IEEE_F32LE, v.dims));
        cs.dataset_header(it.hdf5_path, int64 ? kCodeInt64 : kCodeFloat32, v.dims);
        const void* bytes = v.data;
        hid_t mem_type = H5T_NATIVE_FLOAT;
        if (int64) {
          as_int64.assign(static_cast<size_t>(n), 0);
          for (int64_t j = 0; j < n; ++j) as_int64[j] = static_cast<int64_t>(v.data[j]);
          bytes = as_int64.data();
          mem_type = H5T_NATIVE_INT64;
        }
        cs.raw(bytes, static_cast<size_t>(n) * (int64 ? 8 : 4));
        if (n > 0 && H5Dwrite(d.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes) < 0) {
          return absl::InternalError(absl::StrCat("checkpoint ", temp, ": cannot write ",
                                                  it.hdf5_path, " (HDF5: ", h5::take_error_stack(),
                                                  ")"));
        }
      }
      if (i == items.size() / 2 && options.TEST_on_stage) {
        H5Fflush(f.id(), H5F_SCOPE_LOCAL);  // make the partial file real for the crash test
        stage(CheckpointWriteStage::kPayloadHalfWritten);
      }
    }

    const std::string created = iso8601_utc(meta.created_unix_ms);
    hash_attributes(meta, created, &cs);
    RETURN_IF_ERROR(prefixed(f.write_string_attribute("/", kAttrFormat, kCheckpointFormatName)));
    RETURN_IF_ERROR(prefixed(f.write_int_attribute("/", kAttrVersion, meta.format_version)));
    RETURN_IF_ERROR(prefixed(f.write_string_attribute("/", kAttrArch, meta.arch)));
    RETURN_IF_ERROR(prefixed(f.write_int_attribute("/", kAttrEpoch, meta.epoch)));
    RETURN_IF_ERROR(prefixed(f.write_int_attribute("/", kAttrStep, meta.global_step)));
    RETURN_IF_ERROR(prefixed(f.write_int_attribute("/", kAttrSamples, meta.samples_consumed)));
    RETURN_IF_ERROR(write_u64_attribute(f, kAttrSeed, meta.seed));
    RETURN_IF_ERROR(prefixed(f.write_int_attribute("/", kAttrWorld, meta.world_size)));
    RETURN_IF_ERROR(prefixed(f.write_string_attribute("/", kAttrJobSpec, meta.job_spec)));
    RETURN_IF_ERROR(prefixed(f.write_int_attribute("/", kAttrCreatedMs, meta.created_unix_ms)));
    RETURN_IF_ERROR(prefixed(f.write_string_attribute("/", kAttrCreated, created)));
    RETURN_IF_ERROR(prefixed(f.write_string_attribute("/", kAttrChecksum, cs.hex())));
    RETURN_IF_ERROR(prefixed(f.close()));
  }
  RETURN_IF_ERROR(fsync_path(temp, false));
  stage(CheckpointWriteStage::kBeforeRename);
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    return absl::PermissionDeniedError(absl::StrCat("checkpoint ", path, ": cannot rename ", temp,
                                                    " onto it: ", std::strerror(errno)));
  }
  cleanup.dismiss();
  stage(CheckpointWriteStage::kAfterRename);
  RETURN_IF_ERROR(fsync_path(dir_of(path), true));
  stage(CheckpointWriteStage::kDone);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Reader

namespace {

Status schema_error(const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("checkpoint ", path, ": ", what));
}

// Names of the links of group `group`, in HDF5's name order.
StatusOr<std::vector<std::string>> group_members(const h5::File& f, const std::string& group) {
  if (!f.has_link(group)) return schema_error(f.path(), absl::StrCat(group, " is missing"));
  H5O_info_t info;
  if (H5Oget_info_by_name(f.id(), group.c_str(), &info, H5P_DEFAULT) < 0 ||
      info.type != H5O_TYPE_GROUP) {
    h5::take_error_stack();
    return schema_error(f.path(), absl::StrCat(group, " is not a group"));
  }
  h5::Handle g(H5Gopen2(f.id(), group.c_str(), H5P_DEFAULT), H5Gclose);
  std::vector<std::string> names;
  hsize_t idx = 0;
  auto cb = [](hid_t, const char* name, const H5L_info_t*, void* data) -> herr_t {
    static_cast<std::vector<std::string>*>(data)->emplace_back(name);
    return 0;
  };
  if (!g.valid() || H5Literate(g.get(), H5_INDEX_NAME, H5_ITER_INC, &idx, cb, &names) < 0) {
    return absl::DataLossError(absl::StrCat("checkpoint ", f.path(), ": cannot list ", group,
                                            " (HDF5: ", h5::take_error_stack(), ")"));
  }
  return names;
}

H5O_type_t object_type(const h5::File& f, const std::string& name) {
  H5O_info_t info;
  if (H5Oget_info_by_name(f.id(), name.c_str(), &info, H5P_DEFAULT) < 0) {
    h5::take_error_stack();
    return H5O_TYPE_UNKNOWN;
  }
  return info.type;
}

StatusOr<h5::Handle> open_root_attribute(const h5::File& f, const char* attr) {
  if (!f.has_attribute("/", attr)) {
    return schema_error(f.path(), absl::StrCat("attribute ", attr, " is missing"));
  }
  h5::Handle a(H5Aopen_by_name(f.id(), "/", attr, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!a.valid()) {
    return absl::DataLossError(absl::StrCat("checkpoint ", f.path(), ": cannot open attribute ",
                                            attr, " (HDF5: ", h5::take_error_stack(), ")"));
  }
  return a;
}

// Reads a scalar integer attribute exactly (no detour through double).
template <typename T>
StatusOr<T> read_integer_attribute(const h5::File& f, const char* attr) {
  ASSIGN_OR_RETURN(h5::Handle a, open_root_attribute(f, attr));
  h5::Handle type(H5Aget_type(a.get()), H5Tclose);
  h5::Handle space(H5Aget_space(a.get()), H5Sclose);
  if (H5Tget_class(type.get()) != H5T_INTEGER || H5Sget_simple_extent_npoints(space.get()) != 1) {
    return schema_error(f.path(), absl::StrCat("attribute ", attr, " is not a scalar integer"));
  }
  T value{};
  const hid_t mem = std::is_signed_v<T> ? H5T_NATIVE_INT64 : H5T_NATIVE_UINT64;
  if (H5Aread(a.get(), mem, &value) < 0) {
    return absl::DataLossError(absl::StrCat("checkpoint ", f.path(), ": cannot read attribute ",
                                            attr, " (HDF5: ", h5::take_error_stack(), ")"));
  }
  return value;
}

StatusOr<std::string> read_string(const h5::File& f, const char* attr) {
  if (!f.has_attribute("/", attr)) {
    return schema_error(f.path(), absl::StrCat("attribute ", attr, " is missing"));
  }
  StatusOr<std::string> s = f.read_string_attribute("/", attr);
  if (!s.ok()) return prefixed(s.status());
  return s;
}

// Reads one dataset (float32 -> float, int64 -> float, uint8 -> bytes), feeding the checksum.
struct DatasetRead {
  std::vector<int64_t> dims;
  StoredType stored = StoredType::kFloat32;
  std::vector<float> values;
  std::string bytes;  // uint8 datasets
};

StatusOr<DatasetRead> read_dataset(const h5::File& f, const std::string& name, bool allow_int64,
                                   bool uint8, ChecksumStream* cs) {
  if (object_type(f, name) != H5O_TYPE_DATASET) {
    return schema_error(f.path(), absl::StrCat(name, " is not a dataset"));
  }
  StatusOr<h5::Dataset> ds = f.open_dataset(name);
  if (!ds.ok()) return absl::DataLossError(prefixed(ds.status()).message());
  StatusOr<std::vector<hsize_t>> dims = ds->dims();
  StatusOr<h5::TypeInfo> type = ds->type();
  if (!dims.ok() || !type.ok()) {
    return absl::DataLossError(prefixed(dims.ok() ? type.status() : dims.status()).message());
  }
  DatasetRead out;
  out.dims.assign(dims->begin(), dims->end());
  const int64_t n = product(out.dims);
  const h5::ElementType et = type->element();
  uint8_t code;
  hid_t mem_type;
  void* dest;
  size_t nbytes;
  std::vector<int64_t> ints;
  if (uint8) {
    if (et != h5::ElementType::kUInt8 || out.dims.size() != 1) {
      return schema_error(f.path(),
                          absl::StrCat(name, " is ", type->name(), " ", dims_string(out.dims),
                                       ", expected a 1-d uint8 array"));
    }
    code = kCodeUInt8;
    out.bytes.resize(static_cast<size_t>(n));
    mem_type = H5T_NATIVE_UINT8;
    dest = out.bytes.data();
    nbytes = static_cast<size_t>(n);
  } else if (et == h5::ElementType::kFloat32) {
    code = kCodeFloat32;
    out.values.resize(static_cast<size_t>(n));
    mem_type = H5T_NATIVE_FLOAT;
    dest = out.values.data();
    nbytes = static_cast<size_t>(n) * 4;
  } else if (et == h5::ElementType::kInt64 && allow_int64) {
    code = kCodeInt64;
    out.stored = StoredType::kInt64;
    ints.resize(static_cast<size_t>(n));
    mem_type = H5T_NATIVE_INT64;
    dest = ints.data();
    nbytes = static_cast<size_t>(n) * 8;
  } else {
    return schema_error(f.path(), absl::StrCat(name, " is ", type->name(), ", expected float32",
                                               allow_int64 ? " or int64" : ""));
  }
  if (n > 0 && H5Dread(ds->id(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, dest) < 0) {
    return absl::DataLossError(absl::StrCat("checkpoint ", f.path(), ": cannot read ", name,
                                            " (HDF5: ", h5::take_error_stack(), ")"));
  }
  cs->dataset_header(name, code, out.dims);
  cs->raw(dest, nbytes);
  if (!ints.empty()) {
    out.values.resize(ints.size());
    for (size_t i = 0; i < ints.size(); ++i) out.values[i] = static_cast<float>(ints[i]);
  }
  return out;
}

// Reads, validates and (if `keep`) returns the tensors of a checkpoint.
StatusOr<CheckpointContents> read_checkpoint(const std::string& path, bool keep) {
  h5::quiet_errors();
  StatusOr<h5::File> opened = h5::File::open(path);
  if (!opened.ok()) {
    const Status& s = opened.status();
    if (s.code() == absl::StatusCode::kNotFound) return prefixed(s);
    if (absl::StrContains(s.message(), "not an HDF5 file") ||
        absl::StrContains(s.message(), "is a directory")) {
      return absl::InvalidArgumentError(
          absl::StrCat("checkpoint ", s.message(), "; expected a resdist checkpoint"));
    }
    return absl::DataLossError(
        absl::StrCat("checkpoint ", s.message(), " — the file is damaged or truncated"));
  }
  const h5::File f = std::move(opened).value();

  ASSIGN_OR_RETURN(std::string format, read_string(f, kAttrFormat));
  if (format != kCheckpointFormatName) {
    return schema_error(path, absl::StrCat("attribute format is '", format, "', expected '",
                                           kCheckpointFormatName, "'"));
  }
  CheckpointContents c;
  CheckpointMeta& m = c.meta;
  ASSIGN_OR_RETURN(m.format_version, read_integer_attribute<int64_t>(f, kAttrVersion));
  if (m.format_version != kCheckpointFormatVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", path, ": format_version is ", m.format_version,
                     ", this build reads version ", kCheckpointFormatVersion));
  }
  ASSIGN_OR_RETURN(m.arch, read_string(f, kAttrArch));
  ASSIGN_OR_RETURN(m.epoch, read_integer_attribute<int64_t>(f, kAttrEpoch));
  ASSIGN_OR_RETURN(m.global_step, read_integer_attribute<int64_t>(f, kAttrStep));
  ASSIGN_OR_RETURN(m.samples_consumed, read_integer_attribute<int64_t>(f, kAttrSamples));
  ASSIGN_OR_RETURN(m.seed, read_integer_attribute<uint64_t>(f, kAttrSeed));
  ASSIGN_OR_RETURN(m.world_size, read_integer_attribute<int64_t>(f, kAttrWorld));
  ASSIGN_OR_RETURN(m.job_spec, read_string(f, kAttrJobSpec));
  ASSIGN_OR_RETURN(m.created_unix_ms, read_integer_attribute<int64_t>(f, kAttrCreatedMs));
  ASSIGN_OR_RETURN(std::string created, read_string(f, kAttrCreated));
  ASSIGN_OR_RETURN(m.checksum, read_string(f, kAttrChecksum));

  // Root: exactly the three groups and rng_state.
  ASSIGN_OR_RETURN(std::vector<std::string> root, group_members(f, "/"));
  for (const std::string& name : root) {
    if (name != "params" && name != "buffers" && name != "optimizer" && name != "rng_state") {
      return schema_error(path, absl::StrCat("unexpected object /", name,
                                             "; expected only /params, /buffers, /optimizer, "
                                             "/rng_state"));
    }
  }

  // Every dataset's full path, in canonical (sorted) order, with its section.
  enum Section { kParam, kBuffer, kMomentum, kRng };
  std::vector<std::pair<std::string, Section>> datasets;
  ASSIGN_OR_RETURN(std::vector<std::string> pnames, group_members(f, kParamsGroup));
  for (const std::string& n : pnames)
    datasets.push_back({absl::StrCat(kParamsGroup, "/", n), kParam});
  ASSIGN_OR_RETURN(std::vector<std::string> bnames, group_members(f, kBuffersGroup));
  for (const std::string& n : bnames)
    datasets.push_back({absl::StrCat(kBuffersGroup, "/", n), kBuffer});
  ASSIGN_OR_RETURN(std::vector<std::string> onames, group_members(f, kOptimizerGroup));
  for (const std::string& n : onames) {
    const std::string g = absl::StrCat(kOptimizerGroup, "/", n);
    ASSIGN_OR_RETURN(std::vector<std::string> inner, group_members(f, g));
    if (inner != std::vector<std::string>{"momentum"}) {
      return schema_error(path, absl::StrCat(g, " holds [", absl::StrJoin(inner, ", "),
                                             "], expected exactly [momentum]"));
    }
    datasets.push_back({absl::StrCat(g, "/momentum"), kMomentum});
  }
  if (!f.has_link(kRngDataset)) return schema_error(path, "/rng_state is missing");
  datasets.push_back({kRngDataset, kRng});
  std::sort(datasets.begin(), datasets.end());

  ChecksumStream cs;
  for (const auto& [name, section] : datasets) {
    ASSIGN_OR_RETURN(DatasetRead r,
                     read_dataset(f, name, section == kBuffer, section == kRng, &cs));
    if (section == kRng) {
      m.rng_state = std::move(r.bytes);
      continue;
    }
    if (!keep) continue;
    CheckpointTensor t;
    t.dims = std::move(r.dims);
    t.stored = r.stored;
    t.values = std::move(r.values);
    if (section == kParam) {
      t.name = name.substr(sizeof(kParamsGroup));
      c.params.push_back(std::move(t));
    } else if (section == kBuffer) {
      t.name = name.substr(sizeof(kBuffersGroup));
      c.buffers.push_back(std::move(t));
    } else {
      t.name = name.substr(sizeof(kOptimizerGroup),
                           name.size() - sizeof(kOptimizerGroup) - std::strlen("/momentum"));
      c.momentum.push_back(std::move(t));
    }
  }
  hash_attributes(m, created, &cs);
  const std::string actual = cs.hex();
  if (actual != m.checksum) {
    return absl::DataLossError(absl::StrCat("checkpoint ", path, ": checksum mismatch: stored ",
                                            m.checksum, ", computed ", actual,
                                            " — the file is corrupt"));
  }
  // Momentum must match a parameter of the same shape.
  for (const CheckpointTensor& mt : c.momentum) {
    const CheckpointTensor* p = c.find_param(mt.name);
    if (p == nullptr || p->dims != mt.dims) {
      return schema_error(
          path, absl::StrCat("/optimizer/", mt.name, "/momentum has shape ", dims_string(mt.dims),
                             " but /params/", mt.name,
                             p == nullptr ? " is missing"
                                          : absl::StrCat(" has shape ", dims_string(p->dims))));
    }
  }
  return c;
}

const CheckpointTensor* find_in(const std::vector<CheckpointTensor>& v, std::string_view name) {
  auto it =
      std::lower_bound(v.begin(), v.end(), name,
                       [](const CheckpointTensor& t, std::string_view n) { return t.name < n; });
  return it != v.end() && it->name == name ? &*it : nullptr;
}

}  // namespace

const CheckpointTensor* CheckpointContents::find_param(std::string_view name) const {
  return find_in(params, name);
}
const CheckpointTensor* CheckpointContents::find_buffer(std::string_view name) const {
  return find_in(buffers, name);
}
const CheckpointTensor* CheckpointContents::find_momentum(std::string_view name) const {
  return find_in(momentum, name);
}

StatusOr<CheckpointContents> ReadCheckpoint(const std::string& path) {
  return read_checkpoint(path, /*keep=*/true);
}

StatusOr<CheckpointMeta> ValidateCheckpoint(const std::string& path) {
  ASSIGN_OR_RETURN(CheckpointContents c, read_checkpoint(path, /*keep=*/false));
  return std::move(c.meta);
}

// ---------------------------------------------------------------------------------------------
// Directories

std::string CheckpointFileName(int64_t epoch, int64_t global_step) {
  return absl::StrFormat("ckpt-e%04d-s%09d.h5", epoch, global_step);
}

std::string CheckpointPath(const std::string& dir, int64_t epoch, int64_t global_step) {
  if (dir.empty()) return CheckpointFileName(epoch, global_step);
  return absl::StrCat(dir, absl::EndsWith(dir, "/") ? "" : "/",
                      CheckpointFileName(epoch, global_step));
}

bool ParseCheckpointFileName(std::string_view file_name, int64_t* epoch, int64_t* global_step) {
  absl::string_view name(file_name.data(), file_name.size());
  if (!absl::ConsumePrefix(&name, "ckpt-e") || !absl::ConsumeSuffix(&name, ".h5")) return false;
  const size_t sep = name.find("-s");
  if (sep == absl::string_view::npos) return false;
  const absl::string_view e = name.substr(0, sep), s = name.substr(sep + 2);
  auto all_digits = [](absl::string_view x) {
    return !x.empty() && x.size() <= 18 &&
           std::all_of(x.begin(), x.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  if (!all_digits(e) || !all_digits(s)) return false;
  return absl::SimpleAtoi(e, epoch) && absl::SimpleAtoi(s, global_step);
}

std::string TempPathFor(const std::string& path, int64_t pid) {
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  return absl::StrCat(dir, ".", base, ".tmp-", pid);
}

StatusOr<std::vector<CheckpointFile>> ListCheckpoints(const std::string& dir) {
  namespace fs = std::filesystem;
  std::vector<CheckpointFile> out;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return out;
  fs::directory_iterator it(dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat("checkpoint directory ", dir, ": cannot list: ", ec.message()));
  }
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) break;
    CheckpointFile c;
    const std::string name = it->path().filename().string();
    if (!ParseCheckpointFileName(name, &c.epoch, &c.global_step)) continue;
    std::error_code fec;
    if (!it->is_regular_file(fec)) continue;
    c.path = (fs::path(dir) / name).string();
    out.push_back(std::move(c));
  }
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat("checkpoint directory ", dir, ": cannot list: ", ec.message()));
  }
  std::sort(out.begin(), out.end(), [](const CheckpointFile& a, const CheckpointFile& b) {
    if (a.global_step != b.global_step) return a.global_step > b.global_step;
    if (a.epoch != b.epoch) return a.epoch > b.epoch;
    return a.path > b.path;
  });
  return out;
}

StatusOr<LatestCheckpoint> FindLatestValidCheckpoint(
    const std::string& dir, const std::function<void(const std::string&)>& on_skip) {
  ASSIGN_OR_RETURN(std::vector<CheckpointFile> files, ListCheckpoints(dir));
  LatestCheckpoint latest;
  for (const CheckpointFile& file : files) {
    StatusOr<CheckpointMeta> meta = ValidateCheckpoint(file.path);
    if (meta.ok()) {
      latest.path = file.path;
      latest.meta = std::move(meta).value();
      return latest;
    }
    std::string line = absl::StrCat("skipping ", file.path, ": ", meta.status().message());
    if (on_skip) on_skip(line);
    latest.skipped.push_back(std::move(line));
  }
  return absl::NotFoundError(
      absl::StrCat("checkpoint directory ", dir, ": no valid checkpoint",
                   files.empty() ? " (no ckpt-e*-s*.h5 files)"
                                 : absl::StrCat(" among ", files.size(),
                                                " files: ", absl::StrJoin(latest.skipped, "; "))));
}

StatusOr<std::vector<std::string>> PruneCheckpoints(const std::string& dir, int64_t keep_last,
                                                    const std::vector<std::string>& protect,
                                                    const std::string& just_written) {
  namespace fs = std::filesystem;
  std::vector<std::string> deleted;
  if (keep_last <= 0) return deleted;
  ASSIGN_OR_RETURN(std::vector<CheckpointFile> files, ListCheckpoints(dir));
  auto canonical = [](const std::string& p) {
    std::error_code ec;
    fs::path c = fs::weakly_canonical(p, ec);
    return ec ? fs::path(p).lexically_normal().string() : c.string();
  };
  std::vector<std::string> keep_set;
  for (const std::string& p : protect) {
    if (!p.empty()) keep_set.push_back(canonical(p));
  }
  const std::string newest = just_written.empty() ? "" : canonical(just_written);
  int64_t kept = 0;
  bool newest_listed = false;
  for (const CheckpointFile& file : files) {
    if (!newest.empty() && canonical(file.path) == newest) newest_listed = true;
  }
  if (newest_listed) kept = 1;
  for (const CheckpointFile& file : files) {
    const std::string c = canonical(file.path);
    if (c == newest) continue;
    const bool is_protected = std::find(keep_set.begin(), keep_set.end(), c) != keep_set.end();
    if (is_protected) continue;
    if (kept < keep_last) {
      ++kept;
      continue;
    }
    if (::unlink(file.path.c_str()) != 0 && errno != ENOENT) {
      return absl::PermissionDeniedError(
          absl::StrCat("checkpoint ", file.path, ": cannot delete: ", std::strerror(errno)));
    }
    deleted.push_back(file.path);
  }
  return deleted;
}

StatusOr<std::vector<std::string>> RemoveStaleTempFiles(const std::string& dir) {
  namespace fs = std::filesystem;
  std::vector<std::string> deleted;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return deleted;
  fs::directory_iterator it(dir, ec);
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const size_t tmp = name.rfind(".tmp-");
    if (!absl::StartsWith(name, ".ckpt-") || tmp == std::string::npos) continue;
    int64_t e, s;
    if (!ParseCheckpointFileName(std::string_view(name).substr(1, tmp - 1), &e, &s)) continue;
    if (::unlink(it->path().c_str()) == 0) deleted.push_back(it->path().string());
  }
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat("checkpoint directory ", dir, ": cannot list: ", ec.message()));
  }
  return deleted;
}

}  // namespace resdist
