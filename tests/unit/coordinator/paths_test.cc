// Path confinement under --data-root: relative, absolute, `..` and symlink escapes.
#include "coordinator/paths.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

namespace resdist::coordinator {
namespace {
namespace fs = std::filesystem;

class PathsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = fs::temp_directory_path() / ("resdist-paths-" + std::to_string(getpid()));
    fs::remove_all(base_);
    fs::create_directories(base_ / "root" / "data");
    fs::create_directories(base_ / "outside");
    fs::create_symlink(base_ / "outside", base_ / "root" / "escape");
    fs::create_symlink(base_ / "root" / "data", base_ / "root" / "inside");
    root_ = *CanonicalRoot((base_ / "root").string());
  }
  void TearDown() override { fs::remove_all(base_); }
  fs::path base_;
  std::string root_;
};

TEST_F(PathsTest, RelativePathsResolveUnderTheRoot) {
  auto p = ResolveUnderRoot(root_, "data/train.h5", "data.train");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(*p, root_ + "/data/train.h5");
  auto q = ResolveUnderRoot(root_, "data/../data/./x.h5", "data.train");
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(*q, root_ + "/data/x.h5");
  auto r = ResolveUnderRoot(root_, root_ + "/new/dir/out", "output_dir");  // need not exist
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, root_ + "/new/dir/out");
  auto s = ResolveUnderRoot(root_, "inside/x.h5", "data.eval");  // symlink staying inside
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, root_ + "/data/x.h5");
}

TEST_F(PathsTest, EscapesArePermissionDeniedAndNameTheField) {
  for (const std::string& bad :
       {std::string("../outside/x.h5"), std::string("data/../../outside"), std::string("/etc/passwd"),
        std::string("escape/x.h5"), std::string("escape"), std::string("nonexistent/../../x")}) {
    auto p = ResolveUnderRoot(root_, bad, "data.train");
    ASSERT_FALSE(p.ok()) << bad << " -> " << *p;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kPermissionDenied) << bad;
    EXPECT_NE(p.status().message().find("data.train"), std::string::npos);
    EXPECT_NE(p.status().message().find("outside --data-root"), std::string::npos);
  }
  // A sibling whose name starts with the root's name is not inside it.
  fs::create_directories(base_ / "rootx");
  auto p = ResolveUnderRoot(root_, (base_ / "rootx" / "y").string(), "output_dir");
  EXPECT_EQ(p.status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(PathsTest, MalformedPathsAreInvalidArgument) {
  EXPECT_EQ(ResolveUnderRoot(root_, "", "data.train").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveUnderRoot(root_, std::string(5000, 'a'), "data.train").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveUnderRoot(root_, std::string("a\0b", 3), "data.train").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(CanonicalRoot((base_ / "missing").string()).ok());
}

}  // namespace
}  // namespace resdist::coordinator
