// common/checkpoint: XXH64, round trip, corruption and truncation, schema errors, file names,
// latest-valid selection, pruning, and crash safety of the atomic writer (SIGKILL of a child
// process at each stage of a write). Real files in a temporary directory.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/checkpoint.h"
#include "common/hdf5.h"
#include "tests/unit/checkpoint/test_util.h"

namespace resdist {
namespace {

using ::resdist::testing::RandomFloats;
using ::resdist::testing::ReadBytes;
using ::resdist::testing::SameBits;
using ::resdist::testing::TempDir;
using ::resdist::testing::WriteBytes;

uint64_t Xxh(const std::string& s) {
  Xxh64 h;
  h.update(s.data(), s.size());
  return h.digest();
}

TEST(Xxh64Test, MatchesReferenceVectors) {
  // From the reference implementation (libxxhash 0.8.1, XXH64(data, len, 0)).
  EXPECT_EQ(Xxh(""), 0xEF46DB3751D8E999ULL);
  EXPECT_EQ(Xxh("a"), 0xD24EC4F1A98C6E5BULL);
  EXPECT_EQ(Xxh("abc"), 0x44BC2CF5AD770999ULL);
  std::string big;
  for (int r = 0; r < 3; ++r) {
    for (int i = 0; i < 256; ++i) big.push_back(static_cast<char>(i));
  }
  big += "xyz12";
  EXPECT_EQ(Xxh(big), 0x9B7D50C047818B1BULL);
}

TEST(Xxh64Test, StreamingEqualsOneShot) {
  std::string data(5000, '\0');
  Rng rng(3);
  for (char& c : data) c = static_cast<char>(rng.next());
  const uint64_t one = Xxh(data);
  for (uint64_t seed : {1, 2, 3, 4}) {
    Rng cut(seed);
    Xxh64 h;
    size_t pos = 0;
    while (pos < data.size()) {
      const size_t n = std::min<size_t>(data.size() - pos, cut.below(70));
      h.update(data.data() + pos, n);
      pos += n;
    }
    EXPECT_EQ(h.digest(), one) << "seed " << seed;
  }
}

// A small synthetic "model": named tensors of various ranks, a num_batches_tracked int64
// scalar, momentum for every parameter.
struct Payload {
  std::map<std::string, std::vector<float>> values;
  std::vector<CheckpointTensorView> params, buffers, momentum;

  explicit Payload(uint64_t seed, int64_t scale = 1) {
    add(&params, "conv1.weight", {8 * scale, 3, 3, 3}, seed + 1);
    add(&params, "bn1.weight", {8 * scale}, seed + 2);
    add(&params, "bn1.bias", {8 * scale}, seed + 3);
    add(&params, "layer1.0.conv1.weight", {8 * scale, 8 * scale, 3, 3}, seed + 4);
    add(&params, "fc.weight", {10, 8 * scale}, seed + 5);
    add(&params, "fc.bias", {10}, seed + 6);
    add(&buffers, "bn1.running_mean", {8 * scale}, seed + 7);
    add(&buffers, "bn1.running_var", {8 * scale}, seed + 8);
    values["b:bn1.num_batches_tracked"] = {12345.f};
    buffers.push_back({"bn1.num_batches_tracked",
                       {},
                       StoredType::kInt64,
                       values["b:bn1.num_batches_tracked"].data()});
    for (const CheckpointTensorView& p : params) {
      const std::string key = "m:" + p.name;
      int64_t n = 1;
      for (int64_t d : p.dims) n *= d;
      values[key] = RandomFloats(n, seed + 100 + n);
      momentum.push_back({p.name, p.dims, StoredType::kFloat32, values[key].data()});
    }
  }
  void add(std::vector<CheckpointTensorView>* list, const std::string& name,
           std::vector<int64_t> dims, uint64_t seed) {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    const std::string key = (list == &params ? "p:" : "b:") + name;
    values[key] = RandomFloats(n, seed);
    list->push_back({name, std::move(dims), StoredType::kFloat32, values[key].data()});
  }
};

CheckpointMeta TestMeta(int64_t epoch, int64_t step) {
  CheckpointMeta m;
  m.arch = "resnet20";
  m.epoch = epoch;
  m.global_step = step;
  m.samples_consumed = step * 128 % 50000;
  m.seed = 0xFEDCBA9876543210ULL;  // above 2^63: must survive exactly
  m.rng_state = std::string("\0\x01\xff rng \x80 state", 16);
  m.world_size = 4;
  m.job_spec = "name: test\nmodel:\n  arch: resnet20\n# ünïcode\n";
  return m;
}

Status Write(const std::string& path, const CheckpointMeta& meta, const Payload& p,
             const CheckpointWriteOptions& o = {}) {
  return WriteCheckpoint(path, meta, p.params, p.buffers, p.momentum, o);
}

void ExpectSameTensors(const std::vector<CheckpointTensorView>& written,
                       const CheckpointContents& c, const char* section) {
  for (const CheckpointTensorView& w : written) {
    const CheckpointTensor* t = section == std::string("params")    ? c.find_param(w.name)
                                : section == std::string("buffers") ? c.find_buffer(w.name)
                                                                    : c.find_momentum(w.name);
    ASSERT_NE(t, nullptr) << section << " " << w.name;
    EXPECT_EQ(t->dims, w.dims) << w.name;
    EXPECT_EQ(t->stored, w.stored) << w.name;
    ASSERT_EQ(t->values.size(), static_cast<size_t>(std::max<int64_t>(1, [&] {
                int64_t n = 1;
                for (int64_t d : w.dims) n *= d;
                return n;
              }())));
    EXPECT_TRUE(SameBits(t->values.data(), w.data, t->values.size())) << section << " " << w.name;
  }
}

TEST(CheckpointFormatTest, RoundTripIsBitIdentical) {
  TempDir dir;
  Payload p(7);
  const std::string path = CheckpointPath(dir.path(), 3, 1234);
  EXPECT_EQ(path, dir.file("ckpt-e0003-s000001234.h5"));
  const CheckpointMeta meta = TestMeta(3, 1234);
  ASSERT_TRUE(Write(path, meta, p).ok());
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"ckpt-e0003-s000001234.h5"});  // no temp

  StatusOr<CheckpointContents> c = ReadCheckpoint(path);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->params.size(), p.params.size());
  EXPECT_EQ(c->buffers.size(), p.buffers.size());
  EXPECT_EQ(c->momentum.size(), p.momentum.size());
  ExpectSameTensors(p.params, *c, "params");
  ExpectSameTensors(p.buffers, *c, "buffers");
  ExpectSameTensors(p.momentum, *c, "momentum");
  const CheckpointMeta& m = c->meta;
  EXPECT_EQ(m.arch, meta.arch);
  EXPECT_EQ(m.epoch, 3);
  EXPECT_EQ(m.global_step, 1234);
  EXPECT_EQ(m.samples_consumed, meta.samples_consumed);
  EXPECT_EQ(m.seed, meta.seed);
  EXPECT_EQ(m.rng_state, meta.rng_state);
  EXPECT_EQ(m.world_size, 4);
  EXPECT_EQ(m.job_spec, meta.job_spec);
  EXPECT_GT(m.created_unix_ms, 1600000000000);
  EXPECT_EQ(m.format_version, kCheckpointFormatVersion);
  EXPECT_TRUE(absl::StartsWith(m.checksum, "xxh64:")) << m.checksum;
  EXPECT_EQ(m.checksum.size(), 6u + 16u);

  StatusOr<CheckpointMeta> v = ValidateCheckpoint(path);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->checksum, m.checksum);
  EXPECT_EQ(v->rng_state, meta.rng_state);
}

TEST(CheckpointFormatTest, LayoutMatchesTheDocumentedSchema) {
  TempDir dir;
  Payload p(1);
  const std::string path = dir.file("ckpt-e0000-s000000001.h5");
  ASSERT_TRUE(Write(path, TestMeta(0, 1), p).ok());
  StatusOr<h5::File> f = h5::File::open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*f->read_string_attribute("/", "format"), "resdist-checkpoint");
  EXPECT_EQ((*f->read_numbers_attribute("/", "format_version"))[0], 1.0);
  for (const char* name : {"/params/layer1.0.conv1.weight", "/buffers/bn1.running_var",
                           "/optimizer/fc.bias/momentum", "/rng_state"}) {
    EXPECT_TRUE(f->has_link(name)) << name;
  }
  StatusOr<h5::Dataset> nbt = f->open_dataset("/buffers/bn1.num_batches_tracked");
  ASSERT_TRUE(nbt.ok());
  EXPECT_EQ(nbt->type()->name(), "int64");
  EXPECT_TRUE(nbt->dims()->empty());  // 0-d, as PyTorch's num_batches_tracked
  int64_t value = 0;
  ASSERT_GE(H5Dread(nbt->id(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &value), 0);
  EXPECT_EQ(value, 12345);
  EXPECT_EQ(f->open_dataset("/params/conv1.weight")->type()->name(), "float32");
}

// Flips one byte inside the raw data of `dataset`.
void CorruptDataset(const std::string& path, const std::string& dataset, int64_t byte = 5) {
  haddr_t offset;
  {
    StatusOr<h5::File> f = h5::File::open(path);
    ASSERT_TRUE(f.ok());
    StatusOr<h5::Dataset> d = f->open_dataset(dataset);
    ASSERT_TRUE(d.ok());
    offset = H5Dget_offset(d->id());
    ASSERT_NE(offset, HADDR_UNDEF);
  }
  std::string bytes = ReadBytes(path);
  ASSERT_LT(offset + byte, bytes.size());
  bytes[offset + byte] ^= 0x10;
  WriteBytes(path, bytes);
}

TEST(CheckpointFormatTest, CorruptPayloadByteIsAChecksumErrorNamingTheFile) {
  TempDir dir;
  Payload p(2);
  const std::string path = dir.file("ckpt-e0001-s000000010.h5");
  ASSERT_TRUE(Write(path, TestMeta(1, 10), p).ok());
  CorruptDataset(path, "/params/layer1.0.conv1.weight");
  for (const Status& s : {ValidateCheckpoint(path).status(), ReadCheckpoint(path).status()}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), path)) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "checksum mismatch")) << s;
  }
}

TEST(CheckpointFormatTest, ChangedAttributeIsAChecksumError) {
  TempDir dir;
  Payload p(2);
  const std::string path = dir.file("ckpt-e0001-s000000010.h5");
  ASSERT_TRUE(Write(path, TestMeta(1, 10), p).ok());
  {
    StatusOr<h5::File> f = h5::File::open(path, /*writable=*/true);
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE(f->write_int_attribute("/", "global_step", 11).ok());
    ASSERT_TRUE(f->close().ok());
  }
  const Status s = ValidateCheckpoint(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "checksum mismatch")) << s;
}

TEST(CheckpointFormatTest, TruncatedFileIsAClearError) {
  TempDir dir;
  Payload p(3, 4);
  const std::string path = dir.file("ckpt-e0000-s000000005.h5");
  ASSERT_TRUE(Write(path, TestMeta(0, 5), p).ok());
  const std::string bytes = ReadBytes(path);
  for (size_t keep : {bytes.size() / 2, bytes.size() - 1, size_t{100}}) {
    WriteBytes(path, bytes.substr(0, keep));
    const Status s = ValidateCheckpoint(path).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << keep << ": " << s;
    EXPECT_TRUE(absl::StrContains(s.message(), path)) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "truncated")) << s;
  }
  WriteBytes(path, "");
  const Status empty = ValidateCheckpoint(path).status();
  EXPECT_FALSE(empty.ok());
  EXPECT_TRUE(absl::StrContains(empty.message(), path)) << empty;
}

TEST(CheckpointFormatTest, SchemaErrorsNameTheProblem) {
  TempDir dir;
  Payload p(4);
  // Missing dataset (deleted after writing): the checksum no longer matches; either way the
  // file is rejected.
  const std::string path = dir.file("ckpt-e0000-s000000001.h5");
  ASSERT_TRUE(Write(path, TestMeta(0, 1), p).ok());
  {
    StatusOr<h5::File> f = h5::File::open(path, true);
    ASSERT_GE(H5Ldelete(f->id(), "/rng_state", H5P_DEFAULT), 0);
  }
  Status s = ValidateCheckpoint(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "/rng_state is missing")) << s;

  // A different format name.
  ASSERT_TRUE(Write(path, TestMeta(0, 1), p).ok());
  {
    StatusOr<h5::File> f = h5::File::open(path, true);
    ASSERT_TRUE(f->write_string_attribute("/", "format", "something-else").ok());
  }
  s = ValidateCheckpoint(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "'something-else', expected 'resdist-checkpoint'"))
      << s;

  // A newer version.
  ASSERT_TRUE(Write(path, TestMeta(0, 1), p).ok());
  {
    StatusOr<h5::File> f = h5::File::open(path, true);
    ASSERT_TRUE(f->write_int_attribute("/", "format_version", 2).ok());
  }
  s = ValidateCheckpoint(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "format_version is 2")) << s;

  // Not HDF5 at all; missing file.
  WriteBytes(path, "this is not a checkpoint, just some text that is long enough");
  s = ValidateCheckpoint(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "not an HDF5 file")) << s;
  s = ValidateCheckpoint(dir.file("nope.h5")).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
}

TEST(CheckpointFormatTest, WriterRejectsBadInputAndLeavesNothingBehind) {
  TempDir dir;
  const std::string path = dir.file("ckpt-e0000-s000000001.h5");
  Payload p(5);
  Payload dup = p;
  dup.params.push_back(dup.params[0]);
  Status s = Write(path, TestMeta(0, 1), dup);
  EXPECT_TRUE(absl::StrContains(s.message(), "conv1.weight appears twice")) << s;
  Payload slash = p;
  slash.buffers[0].name = "a/b";
  s = Write(path, TestMeta(0, 1), slash);
  EXPECT_TRUE(absl::StrContains(s.message(), "'a/b' is not allowed")) << s;
  Payload orphan = p;
  orphan.momentum[0].name = "ghost.weight";
  s = Write(path, TestMeta(0, 1), orphan);
  EXPECT_TRUE(absl::StrContains(s.message(), "momentum for ghost.weight")) << s;
  Payload frac = p;
  const float half = 2.5f;
  frac.buffers.back().data = &half;
  s = Write(path, TestMeta(0, 1), frac);
  EXPECT_TRUE(absl::StrContains(s.message(), "bn1.num_batches_tracked is stored as int64")) << s;
  CheckpointMeta no_arch = TestMeta(0, 1);
  no_arch.arch.clear();
  EXPECT_FALSE(Write(path, no_arch, p).ok());
  EXPECT_TRUE(dir.entries().empty());
  // An unwritable destination: the error names it and no temporary file stays.
  s = Write(dir.file("missing-subdir/ckpt-e0000-s000000001.h5"), TestMeta(0, 1), p);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "missing-subdir")) << s;
}

TEST(CheckpointFilesTest, NamesParseAndSort) {
  int64_t e = -1, s = -1;
  EXPECT_EQ(CheckpointFileName(3, 1234), "ckpt-e0003-s000001234.h5");
  EXPECT_EQ(CheckpointFileName(12345, 1234567890123), "ckpt-e12345-s1234567890123.h5");
  EXPECT_TRUE(ParseCheckpointFileName("ckpt-e0003-s000001234.h5", &e, &s));
  EXPECT_EQ(e, 3);
  EXPECT_EQ(s, 1234);
  for (const char* bad :
       {"ckpt-e3-s.h5", "ckpt-e0003-s000001234.h5.tmp-77", ".ckpt-e0003-s000001234.h5.tmp-77",
        "ckpt-e-1-s2.h5", "x.h5", "ckpt-e0003-s000001234.hdf5", "ckpt-e00a3-s1.h5"}) {
    EXPECT_FALSE(ParseCheckpointFileName(bad, &e, &s)) << bad;
  }
  EXPECT_EQ(TempPathFor("/d/ckpt-e0001-s000000002.h5", 42), "/d/.ckpt-e0001-s000000002.h5.tmp-42");

  TempDir dir;
  for (const char* name :
       {"ckpt-e0000-s000000100.h5", "ckpt-e0002-s000000900.h5", "ckpt-e0001-s000000500.h5",
        "notes.txt", ".ckpt-e0003-s000001000.h5.tmp-1"}) {
    WriteBytes(dir.file(name), "x");
  }
  StatusOr<std::vector<CheckpointFile>> files = ListCheckpoints(dir.path());
  ASSERT_TRUE(files.ok());
  ASSERT_EQ(files->size(), 3u);
  EXPECT_EQ((*files)[0].global_step, 900);
  EXPECT_EQ((*files)[1].global_step, 500);
  EXPECT_EQ((*files)[2].global_step, 100);
  EXPECT_TRUE(ListCheckpoints(dir.file("absent"))->empty());
  StatusOr<std::vector<std::string>> stale = RemoveStaleTempFiles(dir.path());
  ASSERT_TRUE(stale.ok());
  EXPECT_EQ(stale->size(), 1u);
  EXPECT_EQ(dir.entries().size(), 4u);
}

TEST(CheckpointFilesTest, LatestValidSkipsACorruptNewestFile) {
  TempDir dir;
  Payload p(6);
  for (int64_t step : {100, 200, 300}) {
    ASSERT_TRUE(
        Write(CheckpointPath(dir.path(), step / 100, step), TestMeta(step / 100, step), p).ok());
  }
  CorruptDataset(CheckpointPath(dir.path(), 3, 300), "/optimizer/fc.weight/momentum");
  // A truncated file with a newer name too.
  WriteBytes(CheckpointPath(dir.path(), 4, 400),
             ReadBytes(CheckpointPath(dir.path(), 2, 200)).substr(0, 3000));
  std::vector<std::string> logged;
  StatusOr<LatestCheckpoint> latest = FindLatestValidCheckpoint(
      dir.path(), [&](const std::string& line) { logged.push_back(line); });
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(latest->path, CheckpointPath(dir.path(), 2, 200));
  EXPECT_EQ(latest->meta.global_step, 200);
  ASSERT_EQ(latest->skipped.size(), 2u);
  EXPECT_EQ(logged, latest->skipped);
  EXPECT_TRUE(absl::StrContains(latest->skipped[0], "ckpt-e0004-s000000400.h5")) << logged[0];
  EXPECT_TRUE(absl::StrContains(latest->skipped[0], "truncated")) << logged[0];
  EXPECT_TRUE(absl::StrContains(latest->skipped[1], "ckpt-e0003-s000000300.h5")) << logged[1];
  EXPECT_TRUE(absl::StrContains(latest->skipped[1], "checksum mismatch")) << logged[1];

  TempDir empty;
  EXPECT_EQ(FindLatestValidCheckpoint(empty.path()).status().code(), absl::StatusCode::kNotFound);
}

TEST(CheckpointFilesTest, PruneKeepsTheNewestAndTheProtectedFile) {
  TempDir dir;
  for (int64_t step = 1; step <= 6; ++step) WriteBytes(CheckpointPath(dir.path(), 0, step), "x");
  const std::string resume = CheckpointPath(dir.path(), 0, 2);
  // Protect through a differently spelled path to the same file.
  StatusOr<std::vector<std::string>> deleted =
      PruneCheckpoints(dir.path(), 2, {dir.path() + "/./" + CheckpointFileName(0, 2)});
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(deleted->size(), 3u);
  EXPECT_EQ(dir.entries(),
            (std::vector<std::string>{CheckpointFileName(0, 2), CheckpointFileName(0, 5),
                                      CheckpointFileName(0, 6)}));
  EXPECT_TRUE(PruneCheckpoints(dir.path(), 0, {})->empty());  // 0 keeps all
  EXPECT_EQ(dir.entries().size(), 3u);

  // A run resumed from step 2 (step 5 and 6 being damaged, say) writes step 3: that file is
  // kept although two newer names exist, and counts as one of keep_last.
  WriteBytes(CheckpointPath(dir.path(), 0, 3), "x");
  deleted = PruneCheckpoints(dir.path(), 2, {resume}, CheckpointPath(dir.path(), 0, 3));
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(*deleted, std::vector<std::string>{CheckpointPath(dir.path(), 0, 5)});
  EXPECT_EQ(dir.entries(),
            (std::vector<std::string>{CheckpointFileName(0, 2), CheckpointFileName(0, 3),
                                      CheckpointFileName(0, 6)}));
}

// ---------------------------------------------------------------------------------------------
// Crash safety: a child process writes a large checkpoint over an existing one and is killed
// with SIGKILL at a given stage of the write; the parent then checks what a resume would see.

// Forks a child that writes `payload` as (epoch 1, step 200) into `dir` and stops at `stage`
// (telling the parent through a pipe); the parent SIGKILLs it there. Returns false if the child
// finished or died before reaching the stage.
bool WriteAndKillAt(const std::string& dir, const Payload& payload, CheckpointWriteStage stage) {
  int fds[2];
  if (pipe(fds) != 0) return false;
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    CheckpointWriteOptions o;
    o.TEST_on_stage = [&](CheckpointWriteStage s, const std::string&) {
      if (s != stage) return;
      const char c = 1;
      if (write(fds[1], &c, 1) != 1) _exit(3);
      for (;;) pause();  // wait for SIGKILL
    };
    const Status st = Write(CheckpointPath(dir, 1, 200), TestMeta(1, 200), payload, o);
    _exit(st.ok() ? 0 : 2);
  }
  close(fds[1]);
  char c = 0;
  const bool reached = read(fds[0], &c, 1) == 1;
  close(fds[0]);
  if (reached) kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  return reached && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

class CrashSafetyTest : public ::testing::TestWithParam<CheckpointWriteStage> {};

TEST_P(CrashSafetyTest, PreviousCheckpointSurvivesSigkillDuringWrite) {
  const CheckpointWriteStage stage = GetParam();
  TempDir dir;
  Payload old_payload(10);
  const std::string old_path = CheckpointPath(dir.path(), 0, 100);
  ASSERT_TRUE(Write(old_path, TestMeta(0, 100), old_payload).ok());
  const std::string old_bytes = ReadBytes(old_path);

  Payload big(20, 24);  // ≈ 2 × 1.3 M floats of 3×3 convolutions: ≈ 11 MB per file
  ASSERT_TRUE(WriteAndKillAt(dir.path(), big, stage)) << CheckpointWriteStageName(stage);

  // The previous checkpoint is byte-for-byte intact.
  EXPECT_EQ(ReadBytes(old_path), old_bytes);
  StatusOr<LatestCheckpoint> latest = FindLatestValidCheckpoint(dir.path());
  ASSERT_TRUE(latest.ok()) << latest.status();
  if (stage == CheckpointWriteStage::kAfterRename) {
    // The rename completed: the new file is complete (fsynced before the rename) and valid.
    EXPECT_EQ(latest->meta.global_step, 200);
    StatusOr<CheckpointContents> c = ReadCheckpoint(latest->path);
    ASSERT_TRUE(c.ok()) << c.status();
    ExpectSameTensors(big.params, *c, "params");
  } else {
    EXPECT_EQ(latest->path, old_path) << CheckpointWriteStageName(stage);
    EXPECT_EQ(latest->meta.global_step, 100);
    // The final name of the interrupted write does not exist; only a hidden temporary does.
    EXPECT_FALSE(std::filesystem::exists(CheckpointPath(dir.path(), 1, 200)));
    StatusOr<std::vector<std::string>> stale = RemoveStaleTempFiles(dir.path());
    ASSERT_TRUE(stale.ok());
    EXPECT_EQ(stale->size(), 1u);
  }
  StatusOr<std::vector<CheckpointFile>> files = ListCheckpoints(dir.path());
  ASSERT_TRUE(files.ok());
  EXPECT_EQ(files->size(), stage == CheckpointWriteStage::kAfterRename ? 2u : 1u);
}

INSTANTIATE_TEST_SUITE_P(Stages, CrashSafetyTest,
                         ::testing::Values(CheckpointWriteStage::kTempCreated,
                                           CheckpointWriteStage::kPayloadHalfWritten,
                                           CheckpointWriteStage::kBeforeRename,
                                           CheckpointWriteStage::kAfterRename),
                         [](const auto& info) {
                           std::string n = CheckpointWriteStageName(info.param);
                           for (char& c : n) {
                             if (c == '-') c = '_';
                           }
                           return n;
                         });

// SIGKILL at arbitrary moments (no hook): whatever the moment, a resume finds either the old or
// the new checkpoint, valid.
TEST(CrashSafetyRandomTest, KillAtArbitraryMomentsNeverLeavesAnInvalidLatest) {
  TempDir dir;
  Payload old_payload(30);
  const std::string old_path = CheckpointPath(dir.path(), 0, 100);
  ASSERT_TRUE(Write(old_path, TestMeta(0, 100), old_payload).ok());
  Payload big(40, 32);
  // Kill at evenly spread moments over [0, 3 x the duration of one in-process write] (the
  // child also pays for fork and page faults), so that some kills land before and some after
  // the rename.
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(Write(dir.file("ckpt-e0009-s000009999.h5"), TestMeta(9, 9999), big).ok());
  const int64_t write_us =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  std::filesystem::remove(dir.file("ckpt-e0009-s000009999.h5"));
  Rng rng(5);
  int old_seen = 0, new_seen = 0;
  constexpr int kTrials = 12;
  for (int trial = 0; trial < kTrials; ++trial) {
    std::filesystem::remove(CheckpointPath(dir.path(), 1, 200));
    const pid_t pid = fork();
    if (pid == 0)
      _exit(Write(CheckpointPath(dir.path(), 1, 200), TestMeta(1, 200), big).ok() ? 0 : 2);
    std::this_thread::sleep_for(std::chrono::microseconds(write_us * 3 * trial / (kTrials - 1)));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    StatusOr<LatestCheckpoint> latest = FindLatestValidCheckpoint(dir.path());
    ASSERT_TRUE(latest.ok()) << latest.status();
    ASSERT_TRUE(latest->skipped.empty()) << latest->skipped[0];
    (latest->meta.global_step == 100 ? old_seen : new_seen)++;
    ASSERT_TRUE(RemoveStaleTempFiles(dir.path()).ok());
  }
  // Not asserted (timing-dependent), but reported: how often the kill came after the rename.
  std::printf("write %.1f ms; old checkpoint selected %d times, new %d times\n", write_us / 1e3,
              old_seen, new_seen);
}

}  // namespace
}  // namespace resdist
