// HDF5 RAII wrappers: every failing call becomes a Status naming the file, the object and the
// innermost reason HDF5 recorded on its (per-thread, silenced) error stack.
#include "common/hdf5.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace resdist::h5 {
namespace {

herr_t collect_error(unsigned /*n*/, const H5E_error2_t* err, void* data) {
  auto* lines = static_cast<std::vector<std::string>*>(data);
  if (err->desc != nullptr && err->desc[0] != '\0') {
    std::string d = err->desc;
    if (lines->empty() || lines->back() != d) lines->push_back(std::move(d));
  }
  return 0;
}

Status with_stack(absl::StatusCode code, std::string message) {
  const std::string stack = take_error_stack();
  if (!stack.empty()) absl::StrAppend(&message, " (HDF5: ", stack, ")");
  return Status(code, message);
}

// Scalar or single-element dataspace check for string attributes.
hssize_t num_points(hid_t attr) {
  Handle space(H5Aget_space(attr), H5Sclose);
  if (!space.valid()) return -1;
  return H5Sget_simple_extent_npoints(space.get());
}

}  // namespace

void quiet_errors() {
  thread_local bool quiet = false;
  if (!quiet) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    quiet = true;
  }
}

std::string take_error_stack() {
  std::vector<std::string> lines;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error, &lines);
  H5Eclear2(H5E_DEFAULT);
  // The outermost line says what was attempted, the innermost why; the middle is HDF5 plumbing.
  if (lines.size() > 3) lines.erase(lines.begin() + 1, lines.end() - 2);
  return absl::StrJoin(lines, ": ");
}

Handle& Handle::operator=(Handle&& other) noexcept {
  if (this != &other) {
    reset();
    id_ = other.id_;
    closer_ = other.closer_;
    other.id_ = -1;
  }
  return *this;
}

void Handle::reset() {
  if (id_ >= 0 && closer_ != nullptr) closer_(id_);
  id_ = -1;
}

ElementType TypeInfo::element() const {
  if (type_class == H5T_INTEGER) {
    if (size == 1 && !is_signed) return ElementType::kUInt8;
    if (size == 4 && is_signed) return ElementType::kInt32;
    if (size == 8 && is_signed) return ElementType::kInt64;
  } else if (type_class == H5T_FLOAT) {
    if (size == 4) return ElementType::kFloat32;
    if (size == 8) return ElementType::kFloat64;
  }
  return ElementType::kOther;
}

std::string TypeInfo::name() const {
  switch (type_class) {
    case H5T_INTEGER:
      return absl::StrCat(is_signed ? "int" : "uint", size * 8);
    case H5T_FLOAT:
      return absl::StrCat("float", size * 8);
    case H5T_STRING:
      return "string";
    case H5T_COMPOUND:
      return "compound";
    case H5T_ENUM:
      return "enum";
    case H5T_ARRAY:
      return "array";
    default:
      return absl::StrCat("HDF5 type class ", static_cast<int>(type_class));
  }
}

// ---------------------------------------------------------------------------------------------
// Dataset

Status Dataset::error(absl::string_view what) const {
  return with_stack(absl::StatusCode::kInternal, absl::StrCat(file_path_, ": ", name_, ": ", what));
}

StatusOr<std::vector<hsize_t>> Dataset::dims() const {
  quiet_errors();
  Handle space(H5Dget_space(id()), H5Sclose);
  if (!space.valid()) return error("cannot get dataspace");
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0) return error("cannot get number of dimensions");
  std::vector<hsize_t> d(static_cast<size_t>(rank));
  if (rank > 0 && H5Sget_simple_extent_dims(space.get(), d.data(), nullptr) < 0) {
    return error("cannot get dimensions");
  }
  return d;
}

StatusOr<TypeInfo> Dataset::type() const {
  quiet_errors();
  Handle t(H5Dget_type(id()), H5Tclose);
  if (!t.valid()) return error("cannot get element type");
  TypeInfo info;
  info.type_class = H5Tget_class(t.get());
  info.size = H5Tget_size(t.get());
  if (info.type_class == H5T_INTEGER) info.is_signed = H5Tget_sign(t.get()) == H5T_SGN_2;
  if (info.type_class == H5T_FLOAT) info.is_signed = true;
  return info;
}

StatusOr<std::vector<hsize_t>> Dataset::chunk_dims() const {
  quiet_errors();
  Handle plist(H5Dget_create_plist(id()), H5Pclose);
  if (!plist.valid()) return error("cannot get creation properties");
  if (H5Pget_layout(plist.get()) != H5D_CHUNKED) return std::vector<hsize_t>{};
  const int rank = H5Pget_chunk(plist.get(), 0, nullptr);
  if (rank < 0) return error("cannot get chunk rank");
  std::vector<hsize_t> c(static_cast<size_t>(rank));
  if (H5Pget_chunk(plist.get(), rank, c.data()) < 0) return error("cannot get chunk dimensions");
  return c;
}

StatusOr<int> Dataset::gzip_level(std::vector<std::string>* other_filters) const {
  quiet_errors();
  Handle plist(H5Dget_create_plist(id()), H5Pclose);
  if (!plist.valid()) return error("cannot get creation properties");
  const int n = H5Pget_nfilters(plist.get());
  if (n < 0) return error("cannot get filters");
  int level = -1;
  for (int i = 0; i < n; ++i) {
    unsigned flags = 0, config = 0;
    unsigned cd[8] = {0};
    size_t cd_n = 8;
    char name[64] = {0};
    const H5Z_filter_t f = H5Pget_filter2(plist.get(), static_cast<unsigned>(i), &flags, &cd_n, cd,
                                          sizeof(name), name, &config);
    if (f == H5Z_FILTER_DEFLATE) {
      level = cd_n > 0 ? static_cast<int>(cd[0]) : 6;
    } else if (other_filters != nullptr) {
      other_filters->push_back(name[0] ? std::string(name) : absl::StrCat("filter ", f));
    }
  }
  return level;
}

namespace {

// File and memory dataspaces selecting rows [first, first + count) of a dataset.
Status select_rows(const Dataset& ds, int64_t first, int64_t count, Handle* file_space,
                   Handle* mem_space) {
  ASSIGN_OR_RETURN(std::vector<hsize_t> dims, ds.dims());
  if (dims.empty() || first < 0 || count < 0 || static_cast<hsize_t>(first + count) > dims[0]) {
    return absl::OutOfRangeError(absl::StrFormat("%s: %s: rows [%d, %d) requested, dataset has %d",
                                                 ds.file_path(), ds.name(), first, first + count,
                                                 dims.empty() ? 0 : static_cast<int64_t>(dims[0])));
  }
  *file_space = Handle(H5Dget_space(ds.id()), H5Sclose);
  std::vector<hsize_t> start(dims.size(), 0), counts = dims;
  start[0] = static_cast<hsize_t>(first);
  counts[0] = static_cast<hsize_t>(count);
  if (!file_space->valid() || H5Sselect_hyperslab(file_space->get(), H5S_SELECT_SET, start.data(),
                                                  nullptr, counts.data(), nullptr) < 0) {
    return with_stack(absl::StatusCode::kInternal,
                      absl::StrCat(ds.file_path(), ": ", ds.name(), ": cannot select rows"));
  }
  *mem_space =
      Handle(H5Screate_simple(static_cast<int>(counts.size()), counts.data(), nullptr), H5Sclose);
  if (!mem_space->valid()) {
    return with_stack(absl::StatusCode::kInternal,
                      absl::StrCat(ds.file_path(), ": ", ds.name(), ": cannot make dataspace"));
  }
  return absl::OkStatus();
}

}  // namespace

Status Dataset::read_rows(hid_t mem_type, int64_t first, int64_t count, void* out) const {
  quiet_errors();
  if (count == 0) return absl::OkStatus();
  Handle file_space, mem_space;
  RETURN_IF_ERROR(select_rows(*this, first, count, &file_space, &mem_space));
  if (H5Dread(id(), mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT, out) < 0) {
    return error(absl::StrFormat("cannot read rows [%d, %d)", first, first + count));
  }
  return absl::OkStatus();
}

Status Dataset::write_rows(hid_t mem_type, int64_t first, int64_t count, const void* in) const {
  quiet_errors();
  if (count == 0) return absl::OkStatus();
  Handle file_space, mem_space;
  RETURN_IF_ERROR(select_rows(*this, first, count, &file_space, &mem_space));
  if (H5Dwrite(id(), mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT, in) < 0) {
    return error(absl::StrFormat("cannot write rows [%d, %d)", first, first + count));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// File

Status File::error(absl::string_view object, absl::string_view what) const {
  return with_stack(absl::StatusCode::kInternal,
                    object.empty() ? absl::StrCat(path_, ": ", what)
                                   : absl::StrCat(path_, ": ", object, ": ", what));
}

StatusOr<File> File::open(const std::string& path, bool writable) {
  quiet_errors();
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::PermissionDeniedError(absl::StrCat(path, ": ", std::strerror(err)));
  }
  if (S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": is a directory, expected a file"));
  }
  const htri_t is = H5Fis_hdf5(path.c_str());
  if (is == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not an HDF5 file (no HDF5 signature found)"));
  }
  if (is < 0)
    return with_stack(absl::StatusCode::kInvalidArgument,
                      absl::StrCat(path, ": cannot be read as HDF5"));
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  // Close everything the file owns when the file closes, so a File never leaks open objects.
  H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG);
  Handle f(H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, fapl.get()), H5Fclose);
  if (!f.valid()) {
    return with_stack(absl::StatusCode::kInvalidArgument,
                      absl::StrCat(path, ": cannot open HDF5 file (damaged or truncated?)"));
  }
  return File(std::move(f), path);
}

StatusOr<File> File::create(const std::string& path) {
  quiet_errors();
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG);
  Handle f(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose);
  if (!f.valid()) {
    return with_stack(absl::StatusCode::kPermissionDenied,
                      absl::StrCat(path, ": cannot create HDF5 file"));
  }
  return File(std::move(f), path);
}

Status File::close() {
  quiet_errors();
  if (!handle_.valid()) return absl::OkStatus();
  if (H5Fflush(handle_.get(), H5F_SCOPE_LOCAL) < 0) return error("", "cannot flush");
  // Release ownership first so a failing close is not retried by the destructor.
  const hid_t raw = handle_.release();
  if (H5Fclose(raw) < 0) return error("", "cannot close");
  return absl::OkStatus();
}

bool File::has_link(const std::string& name) const {
  quiet_errors();
  const htri_t e = H5Lexists(id(), name.c_str(), H5P_DEFAULT);
  if (e < 0) H5Eclear2(H5E_DEFAULT);
  return e > 0;
}

StatusOr<Dataset> File::open_dataset(const std::string& name) const {
  quiet_errors();
  if (!has_link(name)) return absl::NotFoundError(absl::StrCat(path_, ": ", name, " is missing"));
  Handle d(H5Dopen2(id(), name.c_str(), H5P_DEFAULT), H5Dclose);
  if (!d.valid()) return error(name, "cannot open as a dataset");
  return Dataset(std::move(d), path_, name);
}

StatusOr<Dataset> File::create_dataset(const std::string& name, hid_t file_type,
                                       const std::vector<hsize_t>& dims,
                                       const std::vector<hsize_t>& chunk, int gzip_level) const {
  quiet_errors();
  Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
  if (!space.valid()) return error(name, "cannot create dataspace");
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  if (!chunk.empty()) {
    if (H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()) < 0) {
      return error(name, "cannot set chunking");
    }
    if (gzip_level > 0 && H5Pset_deflate(dcpl.get(), static_cast<unsigned>(gzip_level)) < 0) {
      return error(name, "cannot set gzip compression");
    }
  }
  Handle d(
      H5Dcreate2(id(), name.c_str(), file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
      H5Dclose);
  if (!d.valid()) return error(name, "cannot create dataset");
  return Dataset(std::move(d), path_, name);
}

bool File::has_attribute(const std::string& object, const std::string& attr) const {
  quiet_errors();
  const htri_t e = H5Aexists_by_name(id(), object.c_str(), attr.c_str(), H5P_DEFAULT);
  if (e < 0) H5Eclear2(H5E_DEFAULT);
  return e > 0;
}

StatusOr<Handle> File::open_attribute(const std::string& object, const std::string& attr) const {
  quiet_errors();
  if (!has_attribute(object, attr)) {
    return absl::NotFoundError(
        absl::StrCat(path_, ": attribute ", attr, " of ", object, " is missing"));
  }
  Handle a(H5Aopen_by_name(id(), object.c_str(), attr.c_str(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!a.valid()) return error(object, absl::StrCat("cannot open attribute ", attr));
  return a;
}

StatusOr<std::vector<std::string>> File::read_strings_attribute(const std::string& object,
                                                                const std::string& attr) const {
  ASSIGN_OR_RETURN(Handle a, open_attribute(object, attr));
  Handle type(H5Aget_type(a.get()), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_STRING) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": attribute ", attr, " of ", object,
                                                   " is not a string (or string array)"));
  }
  const hssize_t n = num_points(a.get());
  if (n < 0) return error(object, absl::StrCat("cannot size attribute ", attr));
  std::vector<std::string> out;
  out.reserve(static_cast<size_t>(n));
  Handle mem(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_cset(mem.get(), H5Tget_cset(type.get()));
  if (H5Tis_variable_str(type.get()) > 0) {
    H5Tset_size(mem.get(), H5T_VARIABLE);
    std::vector<char*> ptrs(static_cast<size_t>(n), nullptr);
    if (n > 0 && H5Aread(a.get(), mem.get(), ptrs.data()) < 0) {
      return error(object, absl::StrCat("cannot read attribute ", attr));
    }
    for (char* p : ptrs) out.emplace_back(p != nullptr ? p : "");
    Handle space(H5Aget_space(a.get()), H5Sclose);
    if (n > 0) H5Dvlen_reclaim(mem.get(), space.get(), H5P_DEFAULT, ptrs.data());
  } else {
    const size_t size = H5Tget_size(type.get());
    H5Tset_size(mem.get(), size);
    H5Tset_strpad(mem.get(), H5T_STR_NULLPAD);
    std::vector<char> buf(static_cast<size_t>(n) * size + 1, '\0');
    if (n > 0 && H5Aread(a.get(), mem.get(), buf.data()) < 0) {
      return error(object, absl::StrCat("cannot read attribute ", attr));
    }
    for (hssize_t i = 0; i < n; ++i) {
      const char* s = buf.data() + i * size;
      size_t len = strnlen(s, size);
      while (len > 0 && s[len - 1] == ' ') --len;  // H5T_STR_SPACEPAD writers
      out.emplace_back(s, len);
    }
  }
  return out;
}

StatusOr<std::string> File::read_string_attribute(const std::string& object,
                                                  const std::string& attr) const {
  ASSIGN_OR_RETURN(std::vector<std::string> v, read_strings_attribute(object, attr));
  if (v.size() != 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: attribute %s of %s has %d strings, expected 1", path_, attr, object, v.size()));
  }
  return v[0];
}

StatusOr<std::vector<double>> File::read_numbers_attribute(const std::string& object,
                                                           const std::string& attr) const {
  ASSIGN_OR_RETURN(Handle a, open_attribute(object, attr));
  Handle type(H5Aget_type(a.get()), H5Tclose);
  const H5T_class_t cls = H5Tget_class(type.get());
  if (cls != H5T_INTEGER && cls != H5T_FLOAT) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": attribute ", attr, " of ", object, " is not numeric"));
  }
  const hssize_t n = num_points(a.get());
  if (n < 0) return error(object, absl::StrCat("cannot size attribute ", attr));
  std::vector<double> v(static_cast<size_t>(n));
  if (n > 0 && H5Aread(a.get(), H5T_NATIVE_DOUBLE, v.data()) < 0) {
    return error(object, absl::StrCat("cannot read attribute ", attr));
  }
  return v;
}

namespace {

Status write_attribute(const File& f, const std::string& object, const std::string& attr,
                       hid_t type, hid_t space, const void* data) {
  if (f.has_attribute(object, attr)) {
    H5Adelete_by_name(f.id(), object.c_str(), attr.c_str(), H5P_DEFAULT);
  }
  Handle a(H5Acreate_by_name(f.id(), object.c_str(), attr.c_str(), type, space, H5P_DEFAULT,
                             H5P_DEFAULT, H5P_DEFAULT),
           H5Aclose);
  if (!a.valid() || H5Awrite(a.get(), type, data) < 0) {
    return with_stack(absl::StatusCode::kInternal,
                      absl::StrCat(f.path(), ": ", object, ": cannot write attribute ", attr));
  }
  return absl::OkStatus();
}

Handle utf8_vlen_string_type() {
  Handle t(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(t.get(), H5T_VARIABLE);
  H5Tset_cset(t.get(), H5T_CSET_UTF8);
  return t;
}

}  // namespace

Status File::write_string_attribute(const std::string& object, const std::string& attr,
                                    const std::string& value) const {
  quiet_errors();
  Handle t = utf8_vlen_string_type();
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  const char* p = value.c_str();
  return write_attribute(*this, object, attr, t.get(), space.get(), &p);
}

Status File::write_strings_attribute(const std::string& object, const std::string& attr,
                                     const std::vector<std::string>& values) const {
  quiet_errors();
  Handle t = utf8_vlen_string_type();
  const hsize_t n = values.size();
  Handle space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  std::vector<const char*> ptrs;
  ptrs.reserve(values.size());
  for (const std::string& s : values) ptrs.push_back(s.c_str());
  return write_attribute(*this, object, attr, t.get(), space.get(), ptrs.data());
}

Status File::write_floats_attribute(const std::string& object, const std::string& attr,
                                    const std::vector<float>& values) const {
  quiet_errors();
  const hsize_t n = values.size();
  Handle space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  return write_attribute(*this, object, attr, H5T_NATIVE_FLOAT, space.get(), values.data());
}

Status File::write_int_attribute(const std::string& object, const std::string& attr,
                                 int64_t value) const {
  quiet_errors();
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  return write_attribute(*this, object, attr, H5T_NATIVE_INT64, space.get(), &value);
}

}  // namespace resdist::h5
