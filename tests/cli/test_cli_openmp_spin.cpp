// `qlora generate` sets a bounded OpenMP spin and starts itself again (base/openmp_wait.h,
// cli/main.cpp): the restarted run must be the same run, the same arguments and the same
// tokens as a run where the user's own GOMP_SPINCOUNT stops the restart.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "model/model_test_util.h"

namespace {

TEST(CliOpenmpSpin, GenerateRestartedWithTheSpinGivesTheSameTokens) {
  if (!std::filesystem::exists(qlora::test::stories_bin())) GTEST_SKIP() << "no stories260K";
  const std::vector<std::string> args = {"generate", "--model", qlora::test::stories_bin(), "--tokenizer",
                                         qlora::test::stories_tok(), "-p", "Once upon a time", "-n", "24",
                                         "--temperature", "0", "--threads", "2"};
  const char* before = std::getenv("GOMP_SPINCOUNT");
  const std::string saved = before ? before : "";
  ::unsetenv("GOMP_SPINCOUNT");
  const qlora::test::CliResult restarted = qlora::test::run_cli(args);
  ::setenv("GOMP_SPINCOUNT", "0", 1);  // the user's choice: no restart
  const qlora::test::CliResult direct = qlora::test::run_cli(args);
  if (before)
    ::setenv("GOMP_SPINCOUNT", saved.c_str(), 1);
  else
    ::unsetenv("GOMP_SPINCOUNT");
  ASSERT_EQ(restarted.exit_code, 0) << restarted.err;
  ASSERT_EQ(direct.exit_code, 0) << direct.err;
  EXPECT_GT(restarted.out.size(), std::string("Once upon a time").size());
  EXPECT_EQ(restarted.out, direct.out);
}

}  // namespace
