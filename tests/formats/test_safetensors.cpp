// The safetensors reader/writer: a file written by the real `safetensors` library,
// round trips, and one malformed input per validation rule (each must be a clean Error).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "base/error.h"
#include "base/float_formats.h"
#include "formats/safetensors.h"

using namespace qlora;
namespace fs = std::filesystem;

namespace {

std::string tmp_path(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("qlora_st_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}

std::vector<uint8_t> make_file(const std::string& header, size_t data_bytes) {
  std::vector<uint8_t> f(8 + header.size() + data_bytes, 0);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) f[i] = static_cast<uint8_t>(n >> (8 * i));
  std::memcpy(f.data() + 8, header.data(), header.size());
  return f;
}

std::string parse_error(const std::vector<uint8_t>& f) {
  try {
    parse_safetensors_header(f, "bad.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(SafeTensors, ReadsFileWrittenByReferenceLibrary) {
  SafeTensorsFile f(std::string(QLORA_FIXTURE_DIR) + "/safetensors/reference.safetensors");
  EXPECT_EQ(f.tensors().size(), 7u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "qlora.cpp fixture");

  const auto& f32 = f.at("f32");
  EXPECT_EQ(f32.dtype, DType::F32);
  EXPECT_EQ(f32.shape, (std::vector<int64_t>{3, 4}));
  auto v = f.to_float(f32);
  for (int i = 0; i < 12; ++i) EXPECT_EQ(v[i], i / 8.0f);

  auto bf = f.to_float(f.at("bf16"));
  ASSERT_EQ(bf.size(), 6u);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(bf[i], i - 2.5f);
  auto h = f.to_float(f.at("f16"));
  for (int i = 0; i < 5; ++i) EXPECT_EQ(h[i], i * 0.25f);

  const auto& i64 = f.at("i64");
  EXPECT_EQ(i64.dtype, DType::I64);
  int64_t iv[3];
  std::memcpy(iv, f.data(i64).data(), sizeof iv);
  EXPECT_EQ(iv[1], -2);
  EXPECT_THROW(f.to_float(i64), Error);

  EXPECT_TRUE(f.at("scalar").shape.empty());
  EXPECT_EQ(f.to_float(f.at("scalar"))[0], 3.5f);
  EXPECT_EQ(f.at("empty").numel(), 0);
  EXPECT_EQ(f.find("nope"), nullptr);
  try {
    f.at("nope");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("reference.safetensors"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("nope"), std::string::npos);
  }
}

TEST(SafeTensors, WriterRoundTripIsAlignedAndAtomic) {
  std::string path = tmp_path("rt.safetensors");
  {
    SafeTensorsWriter w;
    std::vector<float> a{1.f, 2.f, 3.f};
    w.add_vector("a.weight", DType::F32, {3}, a);
    std::vector<uint16_t> b{f32_to_bf16(1.5f), f32_to_bf16(-2.f)};
    w.add_vector("b", DType::BF16, {1, 2}, b);
    w.add_vector("c", DType::U8, {0}, std::vector<uint8_t>{});
    w.set_metadata("format", "pt");
    w.write(path);
  }
  EXPECT_FALSE(fs::exists(path + ".tmp-" + std::to_string(::getpid())));
  SafeTensorsFile f(path);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.to_float(f.at("a.weight")), (std::vector<float>{1.f, 2.f, 3.f}));
  EXPECT_EQ(f.to_float(f.at("b")), (std::vector<float>{1.5f, -2.f}));
  // Data section 8-byte aligned.
  std::ifstream in(path, std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
}

TEST(SafeTensors, WriterRejectsSizeMismatchAndDuplicates) {
  SafeTensorsWriter w;
  std::vector<uint8_t> four(4);
  EXPECT_THROW(w.add("x", DType::F32, {2}, four), Error);
  w.add("y", DType::F32, {1}, four);
  EXPECT_THROW(w.add("y", DType::F32, {1}, four), Error);
}

TEST(SafeTensors, MissingFileNamesThePath) {
  try {
    SafeTensorsFile f("/nonexistent/dir/model.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/model.safetensors"), std::string::npos);
  }
}

struct BadCase {
  const char* what;
  std::vector<uint8_t> bytes;
  const char* expect;  // substring of the message
};

TEST(SafeTensors, MalformedHeadersAreCleanErrors) {
  std::vector<BadCase> cases = {
      {"too short", {1, 2, 3}, "shorter than"},
      {"huge length", make_file("{}", 0), ""},
      {"length past end", {}, "exceeds the file size"},
      {"bad json", make_file("{\"a\": ", 0), "not valid JSON"},
      {"not object", make_file("[1,2,3]", 0), "not an object"},
      {"unknown dtype", make_file(R"({"a":{"dtype":"F7","shape":[1],"data_offsets":[0,4]}})", 4), "unknown dtype"},
      {"missing dtype", make_file(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4), "dtype"},
      {"negative dim", make_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4), "non-negative"},
      {"float dim", make_file(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4), "non-negative"},
      {"past end", make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4), "past the end"},
      {"size mismatch", make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "does not match"},
      {"begin>end", make_file(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 8), "begin > end"},
      {"overlap", make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12), "overlap"},
      {"overflow", make_file(R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8), "overflow"},
      {"bad metadata", make_file(R"({"__metadata__":{"k":1}})", 0), "__metadata__"},
      {"offsets missing", make_file(R"({"a":{"dtype":"F32","shape":[1]}})", 4), "data_offsets"},
  };
  // "huge length": claim a 1 TB header.
  cases[1].bytes[5] = 1;
  // "length past end": header length 100 in a 20-byte file.
  cases[2].bytes = std::vector<uint8_t>(20, ' ');
  cases[2].bytes[0] = 100;
  for (int i = 1; i < 8; ++i) cases[2].bytes[i] = 0;
  for (const auto& c : cases) {
    std::string msg = parse_error(c.bytes);
    EXPECT_FALSE(msg.empty()) << c.what << ": accepted";
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << c.what << ": " << msg;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.what << ": " << msg;
  }
}

// Inputs the fuzzer once found interesting are kept here; each must parse or fail cleanly.
TEST(SafeTensors, FuzzRegressionsFailCleanly) {
  auto dir = fs::path(QLORA_FIXTURE_DIR) / "safetensors" / "fuzz_regressions";
  if (!fs::exists(dir)) GTEST_SKIP() << "no regression inputs";
  for (const auto& e : fs::directory_iterator(dir)) {
    std::ifstream in(e.path(), std::ios::binary);
    std::vector<uint8_t> b((std::istreambuf_iterator<char>(in)), {});
    try {
      parse_safetensors_header(b, e.path().string());
    } catch (const Error&) {
    }
  }
}

TEST(SafeTensors, EveryTruncationOfARealFileFailsCleanly) {
  std::ifstream in(std::string(QLORA_FIXTURE_DIR) + "/safetensors/reference.safetensors", std::ios::binary);
  std::vector<uint8_t> b((std::istreambuf_iterator<char>(in)), {});
  ASSERT_GT(b.size(), 100u);
  for (size_t cut = 0; cut < b.size(); ++cut) {
    std::vector<uint8_t> t(b.begin(), b.begin() + cut);
    EXPECT_FALSE(parse_error(t).empty()) << "truncated at " << cut << " accepted";
  }
  // Flipping any header byte must never crash (it may still parse).
  for (size_t i = 0; i < 8 + 200 && i < b.size(); ++i) {
    auto t = b;
    t[i] ^= 0x5a;
    parse_error(t);
  }
}
