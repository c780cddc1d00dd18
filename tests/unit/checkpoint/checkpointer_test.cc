// worker/train/checkpointer: snapshot + background write of a real ResNet-20 and its SGD
// state, restore (bit-identical) and its errors, keep_last with a protected resume file, and
// resume selection.
#include "worker/train/checkpointer.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/hdf5.h"
#include "tests/unit/checkpoint/test_util.h"
#include "worker/backend/ops.h"

namespace resdist {
namespace {

using ::resdist::testing::RandomFloats;
using ::resdist::testing::SameBits;
using ::resdist::testing::TempDir;

class CheckpointerTest : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> backend_ = MakeCpuBackend(1);
  Logger logger_{"checkpoint-test"};

  std::unique_ptr<Model> Build(const std::string& arch = "resnet20", int64_t classes = 10) {
    ModelSpec s;
    s.arch = arch;
    s.num_classes = classes;
    StatusOr<std::unique_ptr<Model>> m = Model::Build(s, backend_.get(), 1);
    EXPECT_TRUE(m.ok()) << m.status();
    return std::move(m).value();
  }

  // Gives every parameter, buffer and momentum value distinct random bits.
  static void Randomize(Model* m, Sgd* sgd, uint64_t seed) {
    for (Parameter* p : m->parameters()) {
      std::vector<float> v = RandomFloats(p->value.numel(), seed++);
      std::copy(v.begin(), v.end(), p->value.data());
    }
    for (Buffer* b : m->buffers()) {
      if (absl::EndsWith(b->name, "num_batches_tracked")) {
        b->value.data()[0] = static_cast<float>(seed++ % 1000);
        continue;
      }
      std::vector<float> v = RandomFloats(b->value.numel(), seed++);
      std::copy(v.begin(), v.end(), b->value.data());
    }
    if (sgd != nullptr) {
      for (Tensor& t : sgd->momentum_buffers()) {
        std::vector<float> v = RandomFloats(t.numel(), seed++);
        std::copy(v.begin(), v.end(), t.data());
      }
      sgd->set_has_momentum_state(true);
    }
  }

  static void ExpectSameState(Model& a, Sgd& sa, Model& b, Sgd& sb) {
    ASSERT_EQ(a.parameters().size(), b.parameters().size());
    for (size_t i = 0; i < a.parameters().size(); ++i) {
      const Parameter* p = a.parameters()[i];
      EXPECT_TRUE(SameBits(p->value.data(), b.parameters()[i]->value.data(), p->value.numel()))
          << p->name;
      EXPECT_TRUE(SameBits(sa.momentum_buffers()[i].data(), sb.momentum_buffers()[i].data(),
                           p->value.numel()))
          << "momentum of " << p->name;
    }
    for (size_t i = 0; i < a.buffers().size(); ++i) {
      const Buffer* x = a.buffers()[i];
      EXPECT_TRUE(SameBits(x->value.data(), b.buffers()[i]->value.data(), x->value.numel()))
          << x->name;
    }
    EXPECT_EQ(sa.has_momentum_state(), sb.has_momentum_state());
  }

  static CheckpointerOptions Opts(const std::string& dir) {
    CheckpointerOptions o;
    o.dir = dir;
    return o;
  }

  static CheckpointMeta Meta(int64_t epoch, int64_t step) {
    CheckpointMeta m;
    m.epoch = epoch;
    m.global_step = step;
    m.samples_consumed = step * 256;
    m.seed = 42;
    m.rng_state = "rng";
    m.world_size = 2;
    m.job_spec = "model: {arch: resnet20}\n";
    return m;
  }
};

TEST_F(CheckpointerTest, SaveAndRestoreResNet20IsBitIdentical) {
  TempDir dir;
  std::unique_ptr<Model> model = Build();
  Sgd sgd(model->parameters(), SgdOptions{});
  Randomize(model.get(), &sgd, 1);
  {
    StatusOr<std::unique_ptr<Checkpointer>> ck =
        Checkpointer::Create(Opts(dir.path()), model.get(), &sgd, logger_);
    ASSERT_TRUE(ck.ok()) << ck.status();
    EXPECT_GT((*ck)->snapshot_bytes(), 2 * 270000 * sizeof(float));
    StatusOr<std::string> path = (*ck)->save_async(Meta(2, 780));
    ASSERT_TRUE(path.ok()) << path.status();
    EXPECT_EQ(*path, dir.file("ckpt-e0002-s000000780.h5"));
    ASSERT_TRUE((*ck)->wait().ok());
    EXPECT_EQ((*ck)->last_written(), *path);
  }
  std::unique_ptr<Model> fresh = Build();
  Sgd fresh_sgd(fresh->parameters(), SgdOptions{});
  CheckpointMeta meta;
  const Status s =
      RestoreCheckpoint(dir.file("ckpt-e0002-s000000780.h5"), fresh.get(), &fresh_sgd, &meta);
  ASSERT_TRUE(s.ok()) << s;
  ExpectSameState(*model, sgd, *fresh, fresh_sgd);
  EXPECT_EQ(meta.arch, "resnet20");
  EXPECT_EQ(meta.epoch, 2);
  EXPECT_EQ(meta.global_step, 780);
  EXPECT_EQ(meta.samples_consumed, 780 * 256);
  EXPECT_EQ(meta.world_size, 2);
  EXPECT_EQ(meta.rng_state, "rng");

  // num_batches_tracked is an int64 scalar in the file, like PyTorch's.
  StatusOr<h5::File> f = h5::File::open(dir.file("ckpt-e0002-s000000780.h5"));
  StatusOr<h5::Dataset> nbt = f->open_dataset("/buffers/bn1.num_batches_tracked");
  ASSERT_TRUE(nbt.ok()) << nbt.status();
  EXPECT_EQ(nbt->type()->name(), "int64");
  EXPECT_TRUE(nbt->dims()->empty());
}

TEST_F(CheckpointerTest, NoMomentumStateIsRestoredAsNone) {
  TempDir dir;
  std::unique_ptr<Model> model = Build();
  Sgd sgd(model->parameters(), SgdOptions{});  // no step taken: no momentum state
  Randomize(model.get(), nullptr, 3);
  auto ck = Checkpointer::Create(Opts(dir.path()), model.get(), &sgd, logger_);
  ASSERT_TRUE(ck.ok());
  ASSERT_TRUE((*ck)->save(Meta(0, 0)).ok());
  StatusOr<CheckpointContents> c = ReadCheckpoint(dir.file("ckpt-e0000-s000000000.h5"));
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->momentum.empty());
  std::unique_ptr<Model> fresh = Build();
  Sgd fresh_sgd(fresh->parameters(), SgdOptions{});
  Randomize(fresh.get(), &fresh_sgd, 9);  // has momentum state now
  ASSERT_TRUE(
      RestoreCheckpoint(dir.file("ckpt-e0000-s000000000.h5"), fresh.get(), &fresh_sgd).ok());
  EXPECT_FALSE(fresh_sgd.has_momentum_state());
  EXPECT_EQ(fresh_sgd.momentum_buffers()[0].data()[0], 0.f);
}

// The caller is held up only by the snapshot copy: with the writer thread parked right after it
// created the temporary file, save_async has already returned, the caller changes the model,
// and the file that is finally written still holds the values of the snapshot.
TEST_F(CheckpointerTest, SaveAsyncReturnsAfterTheSnapshotAndTheFileKeepsSnapshotValues) {
  TempDir dir;
  std::unique_ptr<Model> model = Build();
  Sgd sgd(model->parameters(), SgdOptions{});
  Randomize(model.get(), &sgd, 5);
  std::vector<float> before(
      model->parameters()[0]->value.data(),
      model->parameters()[0]->value.data() + model->parameters()[0]->value.numel());

  std::mutex mu;
  std::condition_variable cv;
  bool writer_parked = false, release = false;
  CheckpointerOptions o;
  o.dir = dir.path();
  o.write.TEST_on_stage = [&](CheckpointWriteStage s, const std::string&) {
    if (s != CheckpointWriteStage::kTempCreated) return;
    std::unique_lock<std::mutex> lock(mu);
    writer_parked = true;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });
  };
  auto ck = Checkpointer::Create(o, model.get(), &sgd, logger_);
  ASSERT_TRUE(ck.ok());
  StatusOr<std::string> path = (*ck)->save_async(Meta(0, 10));
  ASSERT_TRUE(path.ok());
  // save_async returned although the write cannot finish until we release it.
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return writer_parked; });
  }
  EXPECT_TRUE((*ck)->busy());
  EXPECT_FALSE(std::filesystem::exists(*path));
  // Training goes on: the model changes while the write is in flight.
  Randomize(model.get(), &sgd, 500);
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  ASSERT_TRUE((*ck)->wait().ok());
  EXPECT_FALSE((*ck)->busy());
  StatusOr<CheckpointContents> c = ReadCheckpoint(*path);
  ASSERT_TRUE(c.ok()) << c.status();
  const CheckpointTensor* t = c->find_param(model->parameters()[0]->name);
  ASSERT_NE(t, nullptr);
  EXPECT_TRUE(SameBits(t->values.data(), before.data(), before.size()));
  EXPECT_FALSE(SameBits(t->values.data(), model->parameters()[0]->value.data(), before.size()));
}

TEST_F(CheckpointerTest, RestoreErrorsNameTheMismatchAndLeaveTheModelUntouched) {
  TempDir dir;
  std::unique_ptr<Model> model = Build();
  Sgd sgd(model->parameters(), SgdOptions{});
  Randomize(model.get(), &sgd, 7);
  auto ck = Checkpointer::Create(Opts(dir.path()), model.get(), &sgd, logger_);
  ASSERT_TRUE(ck.ok());
  ASSERT_TRUE((*ck)->save(Meta(1, 50)).ok());
  const std::string path = dir.file("ckpt-e0001-s000000050.h5");

  // Wrong architecture.
  std::unique_ptr<Model> r32 = Build("resnet32");
  Status s = RestoreCheckpoint(path, r32.get(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), path)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "holds a resnet20 model, expected resnet32")) << s;

  // Wrong shape (100 classes): names the tensor and both shapes; nothing was changed.
  std::unique_ptr<Model> c100 = Build("resnet20", 100);
  Sgd c100_sgd(c100->parameters(), SgdOptions{});
  const float first = c100->parameters()[0]->value.data()[0];
  s = RestoreCheckpoint(path, c100.get(), &c100_sgd);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "/params/fc.weight has shape (10,64)")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "expects (100,64)")) << s;
  EXPECT_EQ(c100->parameters()[0]->value.data()[0], first);

  // Missing dataset: a file written without one parameter.
  std::vector<CheckpointTensorView> params, buffers;
  for (const Parameter* p : model->parameters()) {
    if (p->name == "layer2.1.conv2.weight") continue;
    params.push_back({p->name, p->value.dims(), StoredType::kFloat32, p->value.data()});
  }
  for (const Buffer* b : model->buffers()) {
    buffers.push_back({b->name, b->value.dims(), StoredType::kFloat32, b->value.data()});
  }
  CheckpointMeta meta = Meta(1, 60);
  meta.arch = "resnet20";
  const std::string partial = dir.file("ckpt-e0001-s000000060.h5");
  ASSERT_TRUE(WriteCheckpoint(partial, meta, params, buffers, {}).ok());
  std::unique_ptr<Model> fresh = Build();
  s = RestoreCheckpoint(partial, fresh.get(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), partial)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "/params/layer2.1.conv2.weight is missing")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "(32,32,3,3)")) << s;

  // An extra tensor the model does not have.
  params.push_back({"layer2.1.conv2.weight",
                    {32, 32, 3, 3},
                    StoredType::kFloat32,
                    model->find_parameter("layer2.1.conv2.weight")->value.data()});
  params.push_back({"extra.weight", {3}, StoredType::kFloat32, params[0].data});
  ASSERT_TRUE(WriteCheckpoint(partial, meta, params, buffers, {}).ok());
  s = RestoreCheckpoint(partial, fresh.get(), nullptr);
  EXPECT_TRUE(absl::StrContains(s.message(), "/params/extra.weight is not a parameter")) << s;

  // A missing file is NOT_FOUND (corrupt files: checkpoint_format_test and the resume tests).
  s = RestoreCheckpoint(dir.file("nonexistent.h5"), fresh.get(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
}

TEST_F(CheckpointerTest, KeepLastPrunesButNeverTheResumeFile) {
  TempDir dir;
  std::unique_ptr<Model> model = Build();
  Sgd sgd(model->parameters(), SgdOptions{});
  Randomize(model.get(), &sgd, 11);
  std::string resume;
  {
    auto ck = Checkpointer::Create(Opts(dir.path()), model.get(), &sgd, logger_);
    ASSERT_TRUE((*ck)->save(Meta(0, 10)).ok());
    resume = (*ck)->last_written();
  }
  // A resumed run with keep_last 2.
  CheckpointerOptions o;
  o.dir = dir.path();
  o.keep_last = 2;
  o.protect = {resume};
  std::vector<std::string> reported;
  o.on_written = [&](const std::string& p, const CheckpointMeta&) { reported.push_back(p); };
  auto ck = Checkpointer::Create(o, model.get(), &sgd, logger_);
  ASSERT_TRUE(ck.ok());
  for (int64_t step = 20; step <= 60; step += 10) {
    ASSERT_TRUE((*ck)->save_async(Meta(0, step)).ok());  // each waits for the previous write
  }
  ASSERT_TRUE((*ck)->wait().ok());
  EXPECT_EQ(reported.size(), 5u);
  EXPECT_EQ(dir.entries(),
            (std::vector<std::string>{CheckpointFileName(0, 10), CheckpointFileName(0, 50),
                                      CheckpointFileName(0, 60)}));
}

TEST_F(CheckpointerTest, SelectResumeCheckpoint) {
  TempDir dir;
  std::unique_ptr<Model> model = Build();
  Sgd sgd(model->parameters(), SgdOptions{});
  Randomize(model.get(), &sgd, 13);
  StatusOr<std::optional<LatestCheckpoint>> none =
      SelectResumeCheckpoint("latest", dir.path(), logger_);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());
  EXPECT_FALSE(SelectResumeCheckpoint("none", dir.path(), logger_)->has_value());

  auto ck = Checkpointer::Create(Opts(dir.path()), model.get(), &sgd, logger_);
  ASSERT_TRUE((*ck)->save(Meta(0, 10)).ok());
  ASSERT_TRUE((*ck)->save(Meta(0, 20)).ok());
  // Damage the newest: resume falls back to step 10.
  const std::string newest = dir.file(CheckpointFileName(0, 20));
  std::string bytes = testing::ReadBytes(newest);
  testing::WriteBytes(newest, bytes.substr(0, bytes.size() / 2));
  StatusOr<std::optional<LatestCheckpoint>> r =
      SelectResumeCheckpoint("latest", dir.path(), logger_);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->has_value());
  EXPECT_EQ((*r)->meta.global_step, 10);
  EXPECT_EQ((*r)->skipped.size(), 1u);
  // A named file that is damaged is an error, not a fallback.
  StatusOr<std::optional<LatestCheckpoint>> named =
      SelectResumeCheckpoint(newest, dir.path(), logger_);
  EXPECT_EQ(named.status().code(), absl::StatusCode::kDataLoss) << named.status();
  // Only damaged files: an error, never a silent fresh start.
  std::filesystem::remove(dir.file(CheckpointFileName(0, 10)));
  r = SelectResumeCheckpoint("latest", dir.path(), logger_);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
}

}  // namespace
}  // namespace resdist
