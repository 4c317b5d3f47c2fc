// The GGUF reader (src/formats/gguf.*):
//  - synthetic_v3.gguf written by gguf-py's GGUFWriter (every metadata value type,
//    nested arrays, general.alignment 64, one tensor per GGML type) read back exactly;
//  - tiny_llama.gguf: hyper-parameters, name mapping, tokenizer metadata, and q/k
//    weights un-permuted back to the Hugging Face weights they were made from with
//    llama.cpp's own `permute`;
//  - one hand-made malformed file per validation rule, each a clean Error with a
//    useful message; every truncation and many byte flips of the synthetic file;
//  - the fuzzer's regression inputs (tests/fixtures/gguf/fuzz_regressions/).
#include <gtest/gtest.h>

#include "gguf_fixture_files.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "base/error.h"
#include "formats/gguf.h"

using namespace qlora;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string fixture(const std::string& name) { return test::gguf_fixture(name); }
using test::read_bytes;
using test::read_f32;


json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Parses bytes; returns the error message, or "" when they parse.
std::string parse_error(const std::vector<uint8_t>& b) {
  try {
    parse_gguf(b, "bad.gguf");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR_HAS(bytes, needle)                                               \
  do {                                                                                \
    const std::string msg_ = parse_error(bytes);                                      \
    EXPECT_NE(msg_.find(needle), std::string::npos) << "message: '" << msg_ << "'"; \
    EXPECT_EQ(msg_.rfind("bad.gguf: ", 0), 0u) << "message: '" << msg_ << "'";      \
  } while (0)

// ---- a tiny GGUF writer for malformed files -----------------------------------------
class Builder {
 public:
  uint32_t version = 3;
  uint64_t n_tensors_override = UINT64_MAX, n_kv_override = UINT64_MAX;

  void u8(std::vector<uint8_t>& o, uint8_t v) { o.push_back(v); }
  void u32(std::vector<uint8_t>& o, uint32_t v) { put(o, &v, 4); }
  void u64(std::vector<uint8_t>& o, uint64_t v) { put(o, &v, 8); }
  void str(std::vector<uint8_t>& o, const std::string& s) {
    u64(o, s.size());
    o.insert(o.end(), s.begin(), s.end());
  }
  static void put(std::vector<uint8_t>& o, const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    o.insert(o.end(), b, b + n);
  }

  // A key with a raw value (type id + payload bytes).
  void kv_raw(const std::string& key, uint32_t type, const std::vector<uint8_t>& payload) {
    str(kv_, key);
    u32(kv_, type);
    kv_.insert(kv_.end(), payload.begin(), payload.end());
    ++n_kv_;
  }
  void kv_u32(const std::string& key, uint32_t v) {
    std::vector<uint8_t> p;
    u32(p, v);
    kv_raw(key, 4, p);
  }
  void kv_str(const std::string& key, const std::string& v) {
    std::vector<uint8_t> p;
    str(p, v);
    kv_raw(key, 8, p);
  }
  void tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type, uint64_t offset) {
    str(ti_, name);
    u32(ti_, static_cast<uint32_t>(dims.size()));
    for (uint64_t d : dims) u64(ti_, d);
    u32(ti_, type);
    u64(ti_, offset);
    ++n_tensors_;
  }
  // Header + kv + tensor infos, padded to `align`, then `data_bytes` zero bytes.
  std::vector<uint8_t> build(size_t data_bytes = 0, uint64_t align = 32) {
    std::vector<uint8_t> o = {'G', 'G', 'U', 'F'};
    u32(o, version);
    u64(o, n_tensors_override != UINT64_MAX ? n_tensors_override : n_tensors_);
    u64(o, n_kv_override != UINT64_MAX ? n_kv_override : n_kv_);
    o.insert(o.end(), kv_.begin(), kv_.end());
    o.insert(o.end(), ti_.begin(), ti_.end());
    while (o.size() % align) o.push_back(0);
    o.resize(o.size() + data_bytes, 0);
    return o;
  }

 private:
  std::vector<uint8_t> kv_, ti_;
  uint64_t n_kv_ = 0, n_tensors_ = 0;
};

// ---- synthetic_v3.gguf ------------------------------------------------------------------

TEST(GgufSynthetic, MetadataOfEveryType) {
  const json m = read_json(fixture("synthetic_v3.json"));
  GgufFile f(fixture("synthetic_v3.gguf"));
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.data_start(), m["data_start"].get<uint64_t>());
  EXPECT_EQ(f.data_start() % 64, 0u);
  EXPECT_EQ(f.architecture(), "testarch");
  EXPECT_EQ(f.metadata().size(), m["n_metadata"].get<size_t>());

  for (const auto& s : m["scalars"]) {
    const std::string key = s["key"], type = s["type"];
    SCOPED_TRACE(key);
    const GgufValue& v = f.at(key);
    if (type == "UINT8" || type == "UINT16" || type == "UINT32" || type == "UINT64") {
      EXPECT_EQ(f.get_u64(key), s["value"].get<uint64_t>());
      EXPECT_TRUE(v.is_integer());
    } else if (type == "INT8" || type == "INT16" || type == "INT32" || type == "INT64") {
      EXPECT_EQ(f.get_i64(key), s["value"].get<int64_t>());
    } else if (type == "FLOAT32") {
      EXPECT_EQ(f.get_f32(key), s["value"].get<float>());
      EXPECT_EQ(v.type, GgufValueType::F32);
    } else if (type == "FLOAT64") {
      EXPECT_EQ(f.get_f64(key), s["value"].get<double>());
      EXPECT_EQ(v.type, GgufValueType::F64);
    } else if (type == "BOOL") {
      EXPECT_EQ(f.get_bool(key), s["value"].get<bool>());
    } else if (type == "STRING") {
      EXPECT_EQ(f.get_string(key), s["value"].get<std::string>());
    } else {
      ADD_FAILURE() << "unexpected type " << type;
    }
  }
  EXPECT_EQ(f.at("test.u8").type, GgufValueType::U8);
  EXPECT_EQ(f.at("test.i16").type, GgufValueType::I16);
  EXPECT_EQ(f.at("test.u64").type, GgufValueType::U64);
  EXPECT_EQ(f.get_u32("test.u32"), 4000000000u);
  EXPECT_EQ(f.get_u32("test.u8"), 200u);  // any integer type that fits

  for (const auto& a : m["arrays"]) {
    const std::string key = a["key"], et = a["elem_type"];
    SCOPED_TRACE(key);
    EXPECT_EQ(f.array_size(key), a["value"].size());
    if (et == "STRING") {
      EXPECT_EQ(f.get_string_array(key), a["value"].get<std::vector<std::string>>());
    } else if (et == "FLOAT32" || et == "FLOAT64") {
      auto want = a["value"].get<std::vector<double>>();
      auto got = f.get_f32_array(key);
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], static_cast<float>(want[i]));
    } else if (et == "BOOL") {
      const GgufValue& v = f.at(key);
      EXPECT_EQ(v.elem_type, GgufValueType::BOOL);
      auto want = a["value"].get<std::vector<bool>>();
      ASSERT_EQ(v.raw.size(), want.size());
      for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(v.raw[i] != 0, want[i]);
    } else {
      auto want = a["value"].get<std::vector<int64_t>>();
      EXPECT_EQ(f.get_int_array(key), want);
    }
  }
  EXPECT_EQ(f.get_i32_array("test.arr_i32"), (std::vector<int32_t>{-1, 0, 7, 2147483647}));

  // Nested arrays: array of arrays.
  const GgufValue& nested = f.at("test.nested");
  EXPECT_EQ(nested.type_name(), "array[array]");
  ASSERT_EQ(nested.arrays.size(), 2u);
  EXPECT_EQ(nested.arrays[0].count, 2u);
  EXPECT_EQ(nested.arrays[1].count, 3u);
  EXPECT_EQ(nested.arrays[1].elem_type, GgufValueType::I32);
  int32_t last;
  std::memcpy(&last, nested.arrays[1].raw.data() + 8, 4);
  EXPECT_EQ(last, 5);
  const GgufValue& ns = f.at("test.nested_str");
  ASSERT_EQ(ns.arrays.size(), 2u);
  EXPECT_EQ(ns.arrays[0].strings, (std::vector<std::string_view>{"x", "yz"}));
  EXPECT_EQ(ns.arrays[1].strings, (std::vector<std::string_view>{"w"}));
}

TEST(GgufSynthetic, TypedGetterErrors) {
  GgufFile f(fixture("synthetic_v3.gguf"));
  auto msg = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  const std::string path = fixture("synthetic_v3.gguf");
  EXPECT_EQ(msg([&] { f.get_string("no.such.key"); }), path + ": metadata key 'no.such.key' missing");
  EXPECT_EQ(msg([&] { f.get_string("test.u32"); }), path + ": metadata key 'test.u32' has type uint32, expected string");
  EXPECT_EQ(msg([&] { f.get_u32("test.string"); }), path + ": metadata key 'test.string' has type string, expected uint32");
  EXPECT_EQ(msg([&] { f.get_f32("test.i8"); }), path + ": metadata key 'test.i8' has type int8, expected float32");
  EXPECT_EQ(msg([&] { f.get_bool("test.u8"); }), path + ": metadata key 'test.u8' has type uint8, expected bool");
  EXPECT_EQ(msg([&] { f.get_string_array("test.arr_i32"); }),
            path + ": metadata key 'test.arr_i32' has type array[int32], expected array[string]");
  EXPECT_EQ(msg([&] { f.get_f32_array("test.arr_str"); }),
            path + ": metadata key 'test.arr_str' has type array[string], expected array[float32]");
  EXPECT_NE(msg([&] { f.get_u32("test.u64"); }).find("out of range for uint32"), std::string::npos);
  EXPECT_NE(msg([&] { f.get_u32("test.i8"); }).find("value -100 out of range for uint32"), std::string::npos);
  EXPECT_NE(msg([&] { f.get_i64("test.u64"); }).find("out of range for int64"), std::string::npos);
  EXPECT_NE(msg([&] { f.get_i32_array("test.arr_u64"); }).find("out of range for int32"), std::string::npos);
  // *_or: default only when absent.
  EXPECT_EQ(f.get_u32_or("absent", 7), 7u);
  EXPECT_EQ(f.get_bool_or("absent", true), true);
  EXPECT_EQ(f.get_string_or("absent", "d"), "d");
  EXPECT_EQ(f.get_f32_or("test.f32", 1.0f), 0.15625f);
  EXPECT_THROW(f.get_u32_or("test.string", 7), Error);
  EXPECT_EQ(f.find("absent"), nullptr);
}

TEST(GgufSynthetic, TensorsOfEveryType) {
  const json m = read_json(fixture("synthetic_v3.json"));
  const auto expected = read_f32(fixture("synthetic_v3.f32"));
  GgufFile f(fixture("synthetic_v3.gguf"));
  ASSERT_EQ(f.tensors().size(), m["tensors"].size());
  size_t pos = 0;
  for (size_t i = 0; i < m["tensors"].size(); ++i) {
    const auto& jt = m["tensors"][i];
    const GgufTensorInfo& t = f.tensors()[i];
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.name, jt["name"].get<std::string>());  // file order kept
    EXPECT_EQ(static_cast<uint32_t>(t.type), jt["type_id"].get<uint32_t>());
    EXPECT_EQ(ggml_type_name(t.type), jt["type"].get<std::string>());
    EXPECT_EQ(t.dims, jt["dims"].get<std::vector<int64_t>>());
    auto shape = jt["dims"].get<std::vector<int64_t>>();
    std::reverse(shape.begin(), shape.end());
    EXPECT_EQ(t.shape(), shape);
    EXPECT_EQ(t.offset, jt["offset"].get<uint64_t>());
    EXPECT_EQ(t.offset % 64, 0u);
    EXPECT_EQ(t.nbytes, jt["nbytes"].get<uint64_t>());
    EXPECT_EQ(f.tensor_data(t).size(), t.nbytes);
    EXPECT_EQ(&f.tensor(t.name), &t);

    const auto got = f.tensor_to_f32(t.name);
    ASSERT_EQ(got.size(), static_cast<size_t>(t.numel()));
    ASSERT_LE(pos + got.size(), expected.size());
    size_t bad = 0;
    for (size_t j = 0; j < got.size(); ++j)
      if (bits(got[j]) != bits(expected[pos + j]) && ++bad < 4)
        ADD_FAILURE() << "element " << j << ": " << got[j] << " vs " << expected[pos + j];
    EXPECT_EQ(bad, 0u);
    pos += got.size();
  }
  EXPECT_EQ(pos, expected.size());
  EXPECT_EQ(f.find_tensor("nope"), nullptr);
  try {
    f.tensor("nope");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), fixture("synthetic_v3.gguf") + ": no tensor named 'nope'");
  }
}

TEST(GgufSynthetic, FromBytesAndVersions) {
  auto b = read_bytes(fixture("synthetic_v3.gguf"));
  GgufFile f = GgufFile::from_bytes(b, "mem.gguf");
  EXPECT_EQ(f.path(), "mem.gguf");
  EXPECT_EQ(f.tensors().size(), 14u);
  GgufFile moved = std::move(f);
  EXPECT_EQ(moved.tensor_to_f32("plain.f32_3d").size(), 60u);

  // Version 2 has the same layout as version 3.
  auto v2 = b;
  v2[4] = 2;
  EXPECT_EQ(parse_error(v2), "");
  EXPECT_EQ(parse_gguf(v2, "v2").version, 2u);
  auto v1 = b;
  v1[4] = 1;
  EXPECT_ERROR_HAS(v1, "GGUF version 1 is not supported");
  auto v4 = b;
  v4[4] = 4;
  EXPECT_ERROR_HAS(v4, "unsupported GGUF version 4");
  auto be = b;
  be[4] = 0;
  be[7] = 3;
  EXPECT_ERROR_HAS(be, "big-endian");
}

TEST(GgufSynthetic, MissingFileIsError) {
  EXPECT_THROW(GgufFile("/nonexistent/model.gguf"), Error);
}

// Every prefix of the file that cuts into its header or tensor data is an Error (never a
// crash). GGUFWriter pads the file after the last tensor: cutting padding is fine.
TEST(GgufSynthetic, EveryTruncationIsAnError) {
  const auto b = read_bytes(fixture("synthetic_v3.gguf"));
  ASSERT_EQ(parse_error(b), "");
  const GgufFile ref = GgufFile::from_bytes(b, "ref");
  uint64_t end = ref.data_start();
  for (const auto& t : ref.tensors()) end = std::max(end, ref.data_start() + t.offset + t.nbytes);
  ASSERT_LE(end, b.size());
  ASSERT_GT(b.size() - end, 0u);
  for (size_t n = end; n <= b.size(); ++n)
    EXPECT_EQ(parse_error(std::vector<uint8_t>(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(n))), "");
  for (size_t n = 0; n < end; ++n) {
    std::vector<uint8_t> cut(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(n));
    const std::string msg = parse_error(cut);
    EXPECT_FALSE(msg.empty()) << "prefix of " << n << " bytes parsed";
    if (msg.empty()) break;
  }
}

// Flipping header bytes either still parses (then every tensor reads in bounds) or is an Error.
TEST(GgufSynthetic, ByteFlipsAreErrorsOrValid) {
  const auto b = read_bytes(fixture("synthetic_v3.gguf"));
  const GgufFile ref = GgufFile::from_bytes(b, "ref");
  std::mt19937 rng(1234);
  size_t errors = 0, ok = 0;
  for (size_t pos = 0; pos < ref.data_start(); ++pos) {
    for (uint8_t mask : {uint8_t{0x01}, uint8_t{0x80}, uint8_t{0xFF}, static_cast<uint8_t>(rng() | 1)}) {
      auto c = b;
      c[pos] ^= mask;
      try {
        GgufFile f = GgufFile::from_bytes(c, "flip");
        for (const auto& t : f.tensors()) {
          auto d = f.tensor_data(t);
          ASSERT_GE(d.data(), c.data());
          ASSERT_LE(d.data() + d.size(), c.data() + c.size());
          if (ggml_traits(t.type).can_dequantize && t.numel() < (1 << 20)) (void)f.tensor_to_f32(t);
        }
        ++ok;
      } catch (const Error&) {
        ++errors;
      }
    }
  }
  EXPECT_GT(errors, 0u);
  EXPECT_GT(ok, 0u);  // e.g. flips inside string values
}

// ---- hand-made malformed files: one per rule ---------------------------------------------

TEST(GgufMalformed, HeaderRules) {
  EXPECT_ERROR_HAS(std::vector<uint8_t>{}, "not a GGUF file");
  EXPECT_ERROR_HAS((std::vector<uint8_t>{'G', 'G', 'U', 'X', 3, 0, 0, 0}), "not a GGUF file");
  EXPECT_ERROR_HAS((std::vector<uint8_t>{'G', 'G', 'U', 'F', 3, 0}), "truncated");
  {
    Builder b;
    b.n_tensors_override = 1ull << 60;
    EXPECT_ERROR_HAS(b.build(), "tensor count 1152921504606846976 is impossible");
  }
  {
    Builder b;
    b.n_kv_override = 1000;
    EXPECT_ERROR_HAS(b.build(), "metadata count 1000 is impossible");
  }
  {
    Builder b;  // an empty file with no tensors and no metadata is valid
    EXPECT_EQ(parse_error(b.build()), "");
  }
}

TEST(GgufMalformed, MetadataRules) {
  {
    Builder b;
    std::vector<uint8_t> p;
    b.u64(p, 1ull << 62);  // string length
    b.kv_raw("k", 8, p);
    EXPECT_ERROR_HAS(b.build(), "has length 4611686018427387904");
  }
  {
    Builder b;
    b.kv_raw("k", 13, {0, 0, 0, 0});
    EXPECT_ERROR_HAS(b.build(), "metadata key 'k' has unknown value type 13");
  }
  {
    Builder b;
    std::vector<uint8_t> p;
    b.u32(p, 4);  // uint32 elements
    b.u64(p, 1ull << 40);
    b.kv_raw("arr", 9, p);
    EXPECT_ERROR_HAS(b.build(), "array of 1099511627776 uint32 elements does not fit");
  }
  {
    Builder b;
    std::vector<uint8_t> p;
    b.u32(p, 8);  // strings: each needs >= 8 bytes
    b.u64(p, 100);
    b.kv_raw("arr", 9, p);
    EXPECT_ERROR_HAS(b.build(), "array of 100 string elements does not fit");
  }
  {
    Builder b;
    std::vector<uint8_t> p;
    b.u32(p, 77);
    b.u64(p, 1);
    b.kv_raw("arr", 9, p);
    EXPECT_ERROR_HAS(b.build(), "array has unknown element type 77");
  }
  {
    Builder b;  // arrays nested 40 deep
    std::vector<uint8_t> p;
    for (int i = 0; i < 40; ++i) {
      b.u32(p, 9);
      b.u64(p, 1);
    }
    b.u32(p, 0);
    b.u64(p, 0);
    b.kv_raw("deep", 9, p);
    EXPECT_ERROR_HAS(b.build(), "nested more than 16 deep");
  }
  {
    Builder b;  // 2^20 + 1 empty arrays inside one array: over the nested-element cap
    std::vector<uint8_t> p;
    const uint64_t n = (uint64_t{1} << 20) + 1;
    b.u32(p, 9);
    b.u64(p, n);
    p.resize(p.size() + n * 12, 0);  // each inner array: type uint8 (0), count 0
    b.kv_raw("wide", 9, p);
    EXPECT_ERROR_HAS(b.build(), "more than 1048576 nested array elements");
  }
  {
    Builder b;
    b.kv_raw("flag", 7, {2});
    EXPECT_ERROR_HAS(b.build(), "metadata key 'flag': bool has value 2, expected 0 or 1");
  }
  {
    Builder b;
    std::vector<uint8_t> p;
    b.u32(p, 7);
    b.u64(p, 2);
    p.push_back(1);
    p.push_back(9);
    b.kv_raw("flags", 9, p);
    EXPECT_ERROR_HAS(b.build(), "bool array element has value 9");
  }
  {
    Builder b;
    b.kv_u32("dup", 1);
    b.kv_u32("dup", 2);
    EXPECT_ERROR_HAS(b.build(), "metadata key 'dup' appears twice");
  }
  {
    Builder b;
    b.kv_u32("", 1);
    EXPECT_ERROR_HAS(b.build(), "empty key");
  }
  {
    Builder b;
    b.kv_u32("general.alignment", 48);
    EXPECT_ERROR_HAS(b.build(), "general.alignment 48 is not a power of two");
  }
  {
    Builder b;
    b.kv_u32("general.alignment", 0);
    EXPECT_ERROR_HAS(b.build(), "general.alignment 0 is not a power of two");
  }
  {
    Builder b;
    b.kv_str("general.alignment", "32");
    EXPECT_ERROR_HAS(b.build(), "metadata key 'general.alignment' has type string, expected uint32");
  }
  {
    Builder b;  // unprintable key bytes are escaped in messages
    b.kv_raw(std::string("k\x01\xff", 3), 13, {0, 0, 0, 0});
    EXPECT_ERROR_HAS(b.build(), "metadata key 'k\\x01\\xff' has unknown value type 13");
  }
}

TEST(GgufMalformed, TensorRules) {
  {
    Builder b;
    b.tensor("t", {1, 1, 1, 1, 1}, 0, 0);
    EXPECT_ERROR_HAS(b.build(64), "tensor 't' has 5 dimensions, at most 4 are allowed");
  }
  {
    Builder b;
    b.tensor("t", {1ull << 32, 1ull << 32}, 0, 0);
    EXPECT_ERROR_HAS(b.build(64), "tensor 't': the product of its dimensions overflows");
  }
  {
    Builder b;
    b.tensor("t", {1ull << 63}, 0, 0);
    EXPECT_ERROR_HAS(b.build(64), "too large");
  }
  {
    Builder b;
    b.tensor("t", {1ull << 62}, 0, 0);  // 2^62 floats: byte size overflows int64
    EXPECT_ERROR_HAS(b.build(64), "byte size overflows");
  }
  {
    Builder b;
    b.tensor("t", {32}, 4, 0);  // removed type Q4_2
    EXPECT_ERROR_HAS(b.build(64), "tensor 't' has unknown GGML type 4");
  }
  {
    Builder b;
    b.tensor("t", {32}, 1000, 0);
    EXPECT_ERROR_HAS(b.build(64), "unknown GGML type 1000");
  }
  {
    Builder b;
    b.tensor("t", {33, 2}, 2, 0);  // Q4_0 rows must be multiples of 32
    EXPECT_ERROR_HAS(b.build(64), "has a first dimension of 33, not a multiple of the block size 32");
  }
  {
    Builder b;
    b.tensor("t", {4}, 0, 16);
    EXPECT_ERROR_HAS(b.build(64), "tensor 't' has offset 16, not a multiple of the alignment 32");
  }
  {
    Builder b;
    b.tensor("t", {4}, 0, 0);
    b.tensor("t", {4}, 0, 32);
    EXPECT_ERROR_HAS(b.build(64), "tensor 't' appears twice");
  }
  {
    Builder b;
    b.tensor("t", {32}, 0, 0);  // 128 bytes, only 64 present
    EXPECT_ERROR_HAS(b.build(64), "truncated: tensor 't' (128 bytes at data offset 0) extends past the end");
  }
  {
    Builder b;
    b.tensor("t", {4}, 0, 1ull << 63);  // offset far outside (and aligned)
    EXPECT_ERROR_HAS(b.build(64), "extends past the end");
  }
  {
    Builder b;
    b.tensor("a", {16}, 0, 0);   // bytes [0, 64)
    b.tensor("b", {16}, 0, 32);  // bytes [32, 96)
    EXPECT_ERROR_HAS(b.build(128), "tensors 'a' and 'b' overlap");
  }
  {
    Builder b;  // data section would start past the end of the file
    b.tensor("t", {0}, 0, 0);
    auto bytes = b.build(0, 1);
    EXPECT_ERROR_HAS(bytes, "the data section would start at offset");
  }
  {
    Builder b;  // valid: touching tensors, zero-size tensor, custom alignment 8
    b.kv_u32("general.alignment", 8);
    b.tensor("a", {2}, 0, 0);
    b.tensor("b", {2}, 0, 8);
    b.tensor("empty", {0, 3}, 0, 16);
    auto bytes = b.build(16, 8);
    EXPECT_EQ(parse_error(bytes), "");
    GgufFile f = GgufFile::from_bytes(bytes, "ok.gguf");
    EXPECT_EQ(f.alignment(), 8u);
    EXPECT_EQ(f.tensor("empty").numel(), 0);
    EXPECT_TRUE(f.tensor_to_f32("empty").empty());
    EXPECT_EQ(f.tensor_to_f32("b").size(), 2u);
  }
  {
    Builder b;  // a type that parses but cannot be dequantized
    b.tensor("q8k", {256}, 15, 0);  // Q8_K: ggml's activation type, never a weight
    auto bytes = b.build(320);
    GgufFile f = GgufFile::from_bytes(bytes, "q8k.gguf");
    try {
      f.tensor_to_f32("q8k");
      FAIL();
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), "q8k.gguf: tensor 'q8k': dequantization of type Q8_K is not supported");
    }
  }
}

// ---- tiny_llama.gguf: hyper-parameters, names, tokenizer, q/k un-permutation ---------

TEST(GgufLlama, HParams) {
  const json m = read_json(fixture("tiny_llama.json"));
  GgufFile f(fixture("tiny_llama.gguf"));
  const GgufLlamaHParams hp = read_gguf_llama_hparams(f);
  EXPECT_EQ(hp.architecture, "llama");
  EXPECT_EQ(hp.hidden_size, m["hidden_size"].get<int64_t>());
  EXPECT_EQ(hp.num_layers, 1);
  EXPECT_EQ(hp.intermediate_size, m["intermediate_size"].get<int64_t>());
  EXPECT_EQ(hp.num_heads, m["num_heads"].get<int64_t>());
  EXPECT_EQ(hp.num_kv_heads, m["num_kv_heads"].get<int64_t>());
  EXPECT_EQ(hp.head_dim, m["head_dim"].get<int64_t>());
  EXPECT_EQ(hp.rope_dim, m["head_dim"].get<int64_t>());
  EXPECT_EQ(hp.context_length, m["context_length"].get<int64_t>());
  EXPECT_EQ(hp.vocab_size, m["vocab_size"].get<int64_t>());
  EXPECT_EQ(hp.rope_theta, m["rope_theta"].get<float>());
  EXPECT_EQ(hp.rms_norm_eps, m["rms_norm_eps"].get<float>());
  EXPECT_TRUE(hp.tie_word_embeddings);
  EXPECT_TRUE(hp.qk_rope_permuted);
}

TEST(GgufLlama, HParamErrorsNameTheKey) {
  Builder b;
  b.kv_str("general.architecture", "llama");
  b.kv_u32("llama.embedding_length", 16);
  auto bytes = b.build();
  GgufFile f = GgufFile::from_bytes(bytes, "h.gguf");
  try {
    read_gguf_llama_hparams(f);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "h.gguf: metadata key 'llama.block_count' missing");
  }
  Builder b2;
  b2.kv_str("general.architecture", "llama");
  b2.kv_u32("llama.embedding_length", 0);
  auto bytes2 = b2.build();
  GgufFile f2 = GgufFile::from_bytes(bytes2, "h.gguf");
  EXPECT_THROW(read_gguf_llama_hparams(f2), Error);
}

TEST(GgufLlama, Tokenizer) {
  const json m = read_json(fixture("tiny_llama.json"));
  GgufFile f(fixture("tiny_llama.gguf"));
  const GgufTokenizerInfo t = read_gguf_tokenizer(f);
  EXPECT_EQ(t.model, "gpt2");
  EXPECT_EQ(t.pre, "smollm");
  EXPECT_EQ(t.tokens, m["tokens"].get<std::vector<std::string>>());
  EXPECT_TRUE(t.scores.empty());
  EXPECT_EQ(t.token_types, (std::vector<int32_t>{3, 3, 3, 1, 1, 1}));
  EXPECT_EQ(t.merges, (std::vector<std::string>{"a b"}));
  EXPECT_EQ(t.bos_id, 1);
  EXPECT_EQ(t.eos_id, 2);
  EXPECT_EQ(t.pad_id, 0);
  EXPECT_FALSE(t.unk_id.has_value());
  EXPECT_EQ(t.add_bos, false);
  EXPECT_FALSE(t.add_eos.has_value());
  EXPECT_EQ(t.chat_template, "{{ messages }}");
}

TEST(GgufLlama, QkUnpermutedToHuggingFaceLayout) {
  const json m = read_json(fixture("tiny_llama.json"));
  const auto hf = read_f32(fixture("tiny_llama_hf.f32"));
  GgufFile f(fixture("tiny_llama.gguf"));
  const GgufLlamaHParams hp = read_gguf_llama_hparams(f);
  const int64_t H = hp.hidden_size, kv_rows = hp.num_kv_heads * hp.head_dim;
  ASSERT_EQ(hf.size(), static_cast<size_t>(H * H + kv_rows * H));
  const std::vector<float> q_hf(hf.begin(), hf.begin() + H * H), k_hf(hf.begin() + H * H, hf.end());

  const auto q = gguf_tensor_to_f32_hf(f, f.tensor("blk.0.attn_q.weight"), hp);
  const auto k = gguf_tensor_to_f32_hf(f, f.tensor("blk.0.attn_k.weight"), hp);
  EXPECT_EQ(q, q_hf);
  EXPECT_EQ(k, k_hf);
  // As stored, they differ (the file really is permuted) ...
  EXPECT_NE(f.tensor_to_f32("blk.0.attn_q.weight"), q_hf);
  // ... and permute_rope_rows gives back exactly the stored rows.
  std::vector<float> back(q.size());
  permute_rope_rows(q, back, H, H, hp.num_heads);
  EXPECT_EQ(back, f.tensor_to_f32("blk.0.attn_q.weight"));
  // Other tensors are untouched.
  EXPECT_EQ(gguf_tensor_to_f32_hf(f, f.tensor("blk.0.attn_v.weight"), hp), f.tensor_to_f32("blk.0.attn_v.weight"));
  GgufLlamaHParams not_permuted = hp;
  not_permuted.qk_rope_permuted = false;
  EXPECT_EQ(gguf_tensor_to_f32_hf(f, f.tensor("blk.0.attn_q.weight"), not_permuted),
            f.tensor_to_f32("blk.0.attn_q.weight"));
  (void)m;
}

TEST(GgufLlama, PermutationFormula) {
  // 2 heads of 4 rows, 1 column: GGUF rows (h*4 + 2i + s) hold HF rows (h*4 + 2s + i).
  const std::vector<float> gguf = {0, 1, 2, 3, 4, 5, 6, 7};
  std::vector<float> hf(8);
  unpermute_rope_rows(gguf, hf, 8, 1, 2);
  EXPECT_EQ(hf, (std::vector<float>{0, 2, 1, 3, 4, 6, 5, 7}));
  std::vector<float> back(8);
  permute_rope_rows(hf, back, 8, 1, 2);
  EXPECT_EQ(back, gguf);
  EXPECT_THROW(unpermute_rope_rows(gguf, hf, 8, 1, 3), Error);  // 8 rows do not split into 3 heads
}

TEST(GgufNames, LlamaCppToHuggingFace) {
  const std::pair<const char*, const char*> table[] = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"},
      {"blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"},
      {"blk.12.attn_k.weight", "model.layers.12.self_attn.k_proj.weight"},
      {"blk.3.attn_v.weight", "model.layers.3.self_attn.v_proj.weight"},
      {"blk.3.attn_output.weight", "model.layers.3.self_attn.o_proj.weight"},
      {"blk.3.attn_q.bias", "model.layers.3.self_attn.q_proj.bias"},
      {"blk.3.attn_k.bias", "model.layers.3.self_attn.k_proj.bias"},
      {"blk.3.attn_v.bias", "model.layers.3.self_attn.v_proj.bias"},
      {"blk.29.ffn_gate.weight", "model.layers.29.mlp.gate_proj.weight"},
      {"blk.29.ffn_up.weight", "model.layers.29.mlp.up_proj.weight"},
      {"blk.29.ffn_down.weight", "model.layers.29.mlp.down_proj.weight"},
      {"blk.7.attn_norm.weight", "model.layers.7.input_layernorm.weight"},
      {"blk.7.ffn_norm.weight", "model.layers.7.post_attention_layernorm.weight"},
      {"blk.7.attn_q_norm.weight", "model.layers.7.self_attn.q_norm.weight"},
  };
  for (auto [g, h] : table) {
    EXPECT_EQ(gguf_to_hf_tensor_name(g), std::optional<std::string>(h)) << g;
    EXPECT_EQ(hf_to_gguf_tensor_name(h), std::optional<std::string>(g)) << h;
  }
  for (const char* bad : {"rope_freqs.weight", "blk..attn_q.weight", "blk.x.attn_q.weight", "blk.01.attn_q.weight",
                          "blk.0.attn_qq.weight", "blk.0.attn_q", "token_embd", "", "blk.0.attn_q.weight2"})
    EXPECT_FALSE(gguf_to_hf_tensor_name(bad).has_value()) << bad;
  EXPECT_FALSE(hf_to_gguf_tensor_name("model.layers.0.mlp.act_fn.weight").has_value());
}

// ---- inputs the fuzzer once found troublesome ----------------------------------------------

TEST(GgufFuzzRegressions, AllParseOrFailCleanly) {
  const fs::path dir = fixture("fuzz_regressions");
  if (!fs::exists(dir)) GTEST_SKIP() << "no fuzz regressions recorded";
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const auto b = read_bytes(e.path().string());
    try {
      GgufFile f = GgufFile::from_bytes(b, e.path().filename().string());
      for (const auto& t : f.tensors())
        if (ggml_traits(t.type).can_dequantize && t.numel() < (1 << 22)) (void)f.tensor_to_f32(t);
    } catch (const Error&) {
    }
    ++n;
  }
  SUCCEED() << n << " inputs";
}

}  // namespace
