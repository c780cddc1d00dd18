// RAII wrappers over the HDF5 C API (files, datasets, dataspaces, attributes) whose failures are
// absl::Status values naming the file, the object and HDF5's own reason. Not a general binding:
// only what resdist's dataset and checkpoint files need.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "common/status.h"

namespace resdist::h5 {

// Turns off HDF5's printing of its error stack for the calling thread (HDF5 keeps that setting
// per thread in thread-safe builds). Every wrapper calls it; cheap after the first call.
void quiet_errors();

// Collects and clears the calling thread's HDF5 error stack as one line, innermost cause last,
// e.g. "unable to open file: truncated file: eof = 800, stored_eof = 2144". Empty if no error.
std::string take_error_stack();

// Owns one HDF5 identifier and closes it with the matching H5?close. Move-only.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Handle(Handle&& other) noexcept : id_(other.id_), closer_(other.closer_) { other.id_ = -1; }
  Handle& operator=(Handle&& other) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset();
  // Gives up ownership without closing; returns the identifier.
  hid_t release() {
    const hid_t id = id_;
    id_ = -1;
    return id;
  }

 private:
  hid_t id_ = -1;
  Closer closer_ = nullptr;
};

// Element types used by resdist files.
enum class ElementType { kUInt8, kInt32, kInt64, kFloat32, kFloat64, kOther };

// A description of a stored type, for schema checks and error messages ("int64", "float32").
struct TypeInfo {
  H5T_class_t type_class = H5T_NO_CLASS;
  size_t size = 0;
  bool is_signed = false;
  ElementType element() const;
  std::string name() const;
};

class File;

// An open dataset of a file.
class Dataset {
 public:
  Dataset() = default;
  const std::string& name() const { return name_; }
  const std::string& file_path() const { return file_path_; }
  hid_t id() const { return handle_.get(); }

  StatusOr<std::vector<hsize_t>> dims() const;
  StatusOr<TypeInfo> type() const;
  // Chunk dimensions, or an empty vector when the layout is not chunked.
  StatusOr<std::vector<hsize_t>> chunk_dims() const;
  // gzip (deflate) level of the filter pipeline, or -1 when not compressed; other filters are
  // listed in `other_filters`.
  StatusOr<int> gzip_level(std::vector<std::string>* other_filters = nullptr) const;

  // Reads rows [first, first + count) along dimension 0 (all of the other dimensions) as
  // `mem_type` into `out`, with one hyperslab selection and one H5Dread.
  Status read_rows(hid_t mem_type, int64_t first, int64_t count, void* out) const;
  Status write_rows(hid_t mem_type, int64_t first, int64_t count, const void* in) const;

 private:
  friend class File;
  Dataset(Handle h, std::string file_path, std::string name)
      : handle_(std::move(h)), file_path_(std::move(file_path)), name_(std::move(name)) {}
  Status error(absl::string_view what) const;

  Handle handle_;
  std::string file_path_;
  std::string name_;
};

// An open HDF5 file. Attribute helpers work on the root group ("/") or on a dataset.
class File {
 public:
  // Opens an existing file. Distinguishes "does not exist", "not an HDF5 file" and HDF5's own
  // reasons (e.g. truncation) in the message.
  static StatusOr<File> open(const std::string& path, bool writable = false);
  // Creates (truncating) a file.
  static StatusOr<File> create(const std::string& path);

  File() = default;
  const std::string& path() const { return path_; }
  hid_t id() const { return handle_.get(); }
  Status close();  // flushes and closes; the destructor closes without reporting errors

  bool has_link(const std::string& name) const;
  StatusOr<Dataset> open_dataset(const std::string& name) const;
  // Creates a dataset of `file_type` with `dims`; `chunk` empty = contiguous; gzip_level 0 = none.
  StatusOr<Dataset> create_dataset(const std::string& name, hid_t file_type,
                                   const std::vector<hsize_t>& dims,
                                   const std::vector<hsize_t>& chunk, int gzip_level) const;

  // Attributes of the object at `object` ("/" for the file itself).
  bool has_attribute(const std::string& object, const std::string& attr) const;
  StatusOr<std::string> read_string_attribute(const std::string& object,
                                              const std::string& attr) const;
  StatusOr<std::vector<std::string>> read_strings_attribute(const std::string& object,
                                                            const std::string& attr) const;
  StatusOr<std::vector<double>> read_numbers_attribute(const std::string& object,
                                                       const std::string& attr) const;
  Status write_string_attribute(const std::string& object, const std::string& attr,
                                const std::string& value) const;
  Status write_strings_attribute(const std::string& object, const std::string& attr,
                                 const std::vector<std::string>& values) const;
  Status write_floats_attribute(const std::string& object, const std::string& attr,
                                const std::vector<float>& values) const;
  Status write_int_attribute(const std::string& object, const std::string& attr,
                             int64_t value) const;

 private:
  File(Handle h, std::string path) : handle_(std::move(h)), path_(std::move(path)) {}
  Status error(absl::string_view object, absl::string_view what) const;
  StatusOr<Handle> open_attribute(const std::string& object, const std::string& attr) const;

  Handle handle_;
  std::string path_;
};

}  // namespace resdist::h5
