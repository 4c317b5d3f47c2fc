// --device: parsing, and the clean refusals a user sees where the device cannot be used
// (a build without the CUDA backend, or no GPU), before any model is loaded.
#include <gtest/gtest.h>

#include "base/error.h"
#include "model/device_runner.h"
#include "model/model_test_util.h"

using namespace qlora;
using namespace qlora::test;

TEST(DeviceFlag, Parses) {
  EXPECT_FALSE(parse_device("cpu").cuda);
  EXPECT_TRUE(parse_device("cuda").cuda);
  EXPECT_EQ(parse_device("cuda").index, 0);
  EXPECT_EQ(parse_device("cuda:3").index, 3);
  EXPECT_EQ(parse_device("cuda:3").name(), "cuda:3");
  for (const char* bad : {"gpu", "cuda:", "cuda:-1", "cuda:1x", "CUDA", "", "cuda:99999999999"}) {
    try {
      parse_device(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--device"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("cpu, cuda or cuda:N"), std::string::npos) << e.what();
    }
  }
}

TEST(DeviceFlag, UnusableDeviceIsRefusedBeforeLoading) {
  if (cuda_backend_built()) {
    // A CUDA build: only an index no machine has is sure to be refused.
    const CliResult r = run_cli({"generate", "--model", "/nonexistent/model.gguf", "--prompt", "x", "--device", "cuda:4096"});
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_NE(r.err.find("cuda:4096 does not exist"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("/nonexistent"), std::string::npos) << "checked before the model: " << r.err;
    return;
  }
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"generate", "--prompt", "x"}, std::vector<std::string>{"chat"},
        std::vector<std::string>{"serve", "--port", "0"}}) {
    std::vector<std::string> a = args;
    a.insert(a.end(), {"--model", "/nonexistent/model.gguf", "--device", "cuda"});
    const CliResult r = run_cli(a);
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_NE(r.err.find("built without the CUDA backend"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("-DQLORA_CUDA=ON"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("/nonexistent"), std::string::npos) << "checked before the model: " << r.err;
  }
}

TEST(DeviceFlag, CpuIsTheDefaultAndAccepted) {
  const CliResult r = run_cli({"generate", "--model", stories_bin(), "--prompt", "Once upon a time", "-n", "8",
                               "--temperature", "0", "--quant", "none", "--device", "cpu", "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("Once upon a time", 0), 0u) << r.out;
}

// serve switches LoRA adapters per request. Which CUDA engine serves them is decided from
// the model's shape (the llama runner holds one fixed adapter and refuses; the backend engine
// serves them: tests/cuda/test_cuda_runner.cpp on a GPU); a build or machine without the GPU
// refuses --device first, before reading the model.
TEST(DeviceFlag, ServeWithNamedAdaptersChecksTheDeviceFirst) {
  const CliResult r = run_cli({"serve", "--model", "/nonexistent/model.gguf", "--port", "0", "--device", "cuda",
                               "--adapter", "tuned=/nonexistent/adapter"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  if (!cuda_backend_built()) {
    EXPECT_NE(r.err.find("built without the CUDA backend"), std::string::npos) << r.err;
  }
  EXPECT_EQ(r.err.find("/nonexistent/model.gguf"), std::string::npos) << "checked before the model: " << r.err;
}
