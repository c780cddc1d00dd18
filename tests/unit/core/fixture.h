// Reader for the PyTorch golden fixtures written by tests/golden/make_golden.py; header-only,
// for tests. Not a general serialisation format (no dtypes other than f32, no streaming).
//
// File format (little-endian):
//   char[4]  magic "RDGF"
//   uint32   version (1)
//   uint32   count (number of entries)
//   count x entry:
//     uint32       name length L
//     char[L]      name (ASCII, no terminator)
//     uint32       ndims D (0 = scalar, one value)
//     int64[D]     dims
//     float32[..]  data, row-major (product of dims values; 1 value when D = 0)
// Entry names: spec.<field> (float scalars/vectors; spec.arch is the arch name as ASCII codes),
// input (N,C,H,W), labels (N, class indices as float), logits (N,K), loss, param/<name>,
// buffer/<name>, grad/<name>, after3/param/<name>, after3/buffer/<name>; <name> is the
// torchvision parameter or buffer name. See make_golden.py for the full list.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace resdist::golden {

struct FixtureTensor {
  std::vector<int64_t> dims;  // empty for a scalar
  std::vector<float> data;    // row-major
  int64_t numel() const { return static_cast<int64_t>(data.size()); }
};

class GoldenFixture {
 public:
  static constexpr char kMagic[4] = {'R', 'D', 'G', 'F'};
  static constexpr uint32_t kVersion = 1;

  // Reads the whole file; on failure returns null and sets *error to a message naming the
  // file and what was wrong.
  static std::unique_ptr<GoldenFixture> Load(const std::string& path, std::string* error) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      *error = "golden fixture " + path +
               ": cannot open (regenerate with /usr/bin/python3 tests/golden/make_golden.py)";
      return nullptr;
    }
    auto fail = [&](const std::string& what) {
      *error = "golden fixture " + path + ": " + what;
      return nullptr;
    };
    char magic[4];
    uint32_t version = 0, count = 0;
    if (!in.read(magic, 4) || std::memcmp(magic, kMagic, 4) != 0)
      return fail("bad magic; expected \"RDGF\"");
    if (!ReadPod(in, &version) || version != kVersion)
      return fail("version " + std::to_string(version) + "; expected " +
                  std::to_string(kVersion));
    if (!ReadPod(in, &count)) return fail("truncated header");
    auto f = std::unique_ptr<GoldenFixture>(new GoldenFixture(path));
    for (uint32_t i = 0; i < count; ++i) {
      const std::string where = "entry " + std::to_string(i) + " of " + std::to_string(count);
      uint32_t name_len = 0, ndims = 0;
      if (!ReadPod(in, &name_len) || name_len == 0 || name_len > 4096)
        return fail(where + ": bad name length");
      std::string name(name_len, '\0');
      if (!in.read(name.data(), name_len)) return fail(where + ": truncated name");
      if (!ReadPod(in, &ndims) || ndims > 8)
        return fail(where + " '" + name + "': bad ndims " + std::to_string(ndims));
      FixtureTensor t;
      t.dims.resize(ndims);
      int64_t numel = 1;
      for (uint32_t d = 0; d < ndims; ++d) {
        if (!ReadPod(in, &t.dims[d]) || t.dims[d] < 0 || t.dims[d] > (int64_t{1} << 30))
          return fail(where + " '" + name + "': bad dimension");
        numel *= t.dims[d];
      }
      if (numel > (int64_t{1} << 28)) return fail(where + " '" + name + "': too large");
      t.data.resize(static_cast<size_t>(numel));
      if (!in.read(reinterpret_cast<char*>(t.data.data()),
                   static_cast<std::streamsize>(numel * sizeof(float))))
        return fail(where + " '" + name + "': truncated data");
      if (!f->entries_.emplace(name, std::move(t)).second)
        return fail(where + ": duplicate name '" + name + "'");
    }
    return f;
  }

  const std::string& path() const { return path_; }
  const std::map<std::string, FixtureTensor>& entries() const { return entries_; }
  bool has(const std::string& name) const { return entries_.count(name) != 0; }

  // The entry, or null with *error naming the fixture and the missing entry.
  const FixtureTensor* find(const std::string& name, std::string* error) const {
    auto it = entries_.find(name);
    if (it != entries_.end()) return &it->second;
    *error = "golden fixture " + path_ + ": no entry '" + name + "' (it has " +
             std::to_string(entries_.size()) + " entries; regenerate it?)";
    return nullptr;
  }

  // A one-value entry (scalar or shape (1)); false with *error when missing or not a scalar.
  bool scalar(const std::string& name, double* value, std::string* error) const {
    const FixtureTensor* t = find(name, error);
    if (!t) return false;
    if (t->numel() != 1) {
      *error = "golden fixture " + path_ + ": entry '" + name + "' has " +
               std::to_string(t->numel()) + " values; expected a scalar";
      return false;
    }
    *value = t->data[0];
    return true;
  }

  // An entry of ASCII codes (e.g. spec.arch) as a string.
  bool text(const std::string& name, std::string* value, std::string* error) const {
    const FixtureTensor* t = find(name, error);
    if (!t) return false;
    value->clear();
    for (float c : t->data) value->push_back(static_cast<char>(static_cast<int>(c)));
    return true;
  }

 private:
  explicit GoldenFixture(std::string path) : path_(std::move(path)) {}

  template <typename T>
  static bool ReadPod(std::istream& in, T* v) {
    return static_cast<bool>(in.read(reinterpret_cast<char*>(v), sizeof(T)));
  }

  std::string path_;
  std::map<std::string, FixtureTensor> entries_;
};

}  // namespace resdist::golden
