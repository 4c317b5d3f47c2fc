// QuantState and the bitsandbytes serialization of 4-bit weights: reading a state dict
// bitsandbytes itself saved (tools/make_quant_fixtures.py), writing it back byte for byte,
// round trips, and one malformed file per validation rule — each a clean Error naming the
// file and the tensor.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <limits>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/float_formats.h"
#include "formats/safetensors.h"
#include "quant/blockwise.h"
#include "quant/quant_fixtures.h"
#include "quant/quant_state.h"

using namespace qlora;
using namespace qlora::testing;
namespace fs = std::filesystem;

namespace {

std::string tmp_path(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("qlora_quant_state_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}

struct Layer {
  std::string name;
  QuantType type;
  bool nested;
  int blocksize;
  ComputeDType dtype;
  std::vector<int64_t> shape;
};

std::vector<Layer> layers() {
  SafeTensorsFile src(quant_fixture("linear4bit_source.safetensors"));
  std::vector<Layer> out;
  for (const auto& l : nlohmann::json::parse(src.metadata().at("layers")))
    out.push_back({l["name"], quant_type_from_string(l["quant_type"].get<std::string>()), l["nested"], l["blocksize"],
                   compute_dtype_from_string(l["dtype"].get<std::string>()), l["shape"].get<std::vector<int64_t>>()});
  return out;
}

// A safetensors file as an editable map of tensors.
struct Entry {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;
};
using Tensors = std::map<std::string, Entry>;

Tensors load_all(const SafeTensorsFile& f) {
  Tensors t;
  for (const auto& info : f.tensors()) {
    auto d = f.data(info);
    t[info.name] = Entry{info.dtype, info.shape, std::vector<uint8_t>(d.begin(), d.end())};
  }
  return t;
}

std::string save(const Tensors& t, const std::string& name) {
  SafeTensorsWriter w;
  for (const auto& [k, e] : t) w.add_owned(k, e.dtype, e.shape, e.data);
  const std::string p = tmp_path(name);
  w.write(p);
  return p;
}

Entry json_entry(const std::string& s) {
  return Entry{DType::U8, {static_cast<int64_t>(s.size())}, std::vector<uint8_t>(s.begin(), s.end())};
}
std::string json_of(const Entry& e) { return std::string(e.data.begin(), e.data.end()); }

std::vector<float> weights(const std::vector<int64_t>& shape, uint32_t seed) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  std::vector<float> x(static_cast<size_t>(n));
  uint32_t s = seed;
  for (auto& v : x) {
    s = s * 1664525u + 1013904223u;
    v = (static_cast<float>(s >> 8) / 16777216.0f - 0.5f) * 0.1f;
  }
  return x;
}

void expect_same_state(const Quantized4bit& a, const Quantized4bit& b) {
  EXPECT_EQ(a.packed, b.packed);
  EXPECT_EQ(a.state.type, b.state.type);
  EXPECT_EQ(a.state.blocksize, b.state.blocksize);
  EXPECT_EQ(a.state.dtype, b.state.dtype);
  EXPECT_EQ(a.state.shape, b.state.shape);
  EXPECT_EQ(a.state.nested, b.state.nested);
  EXPECT_EQ(std::memcmp(a.state.code.data(), b.state.code.data(), sizeof(a.state.code)), 0);
  EXPECT_EQ(a.state.absmax.size(), b.state.absmax.size());
  EXPECT_EQ(a.state.block_absmax().size(), b.state.block_absmax().size());
  const auto x = a.state.block_absmax(), y = b.state.block_absmax();
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) EXPECT_EQ(bits(x[i]), bits(y[i])) << i;
  if (a.state.nested && b.state.nested) {
    EXPECT_EQ(a.state.absmax_q, b.state.absmax_q);
    EXPECT_EQ(a.state.nested_absmax, b.state.nested_absmax);
    EXPECT_EQ(bits(a.state.offset), bits(b.state.offset));
    EXPECT_EQ(a.state.nested_blocksize, b.state.nested_blocksize);
    EXPECT_EQ(std::memcmp(a.state.nested_code.data(), b.state.nested_code.data(), sizeof(a.state.nested_code)), 0);
  }
}

// Runs read_4bit_from_safetensors on `t` and returns the Error message ("" if none).
std::string read_error(const Tensors& t, const std::string& weight) {
  const std::string p = save(t, "bad.safetensors");
  try {
    SafeTensorsFile f(p);
    read_4bit_from_safetensors(f, weight);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

const std::string kW = "model.layers.0.mlp.up_proj.weight";

// A valid 4-bit weight as our writer produces it.
Tensors valid_tensors(bool nested) {
  const std::vector<int64_t> shape = {10, 64};
  const auto x = weights(shape, 7);
  const auto q = quantize_tensor_4bit(x.data(), shape, QuantType::NF4, 64, nested, ComputeDType::BF16);
  SafeTensorsWriter w;
  write_4bit_to_safetensors(w, kW, q);
  const std::string p = tmp_path(nested ? "valid_nested.safetensors" : "valid.safetensors");
  w.write(p);
  SafeTensorsFile f(p);
  return load_all(f);
}

}  // namespace

// ---- files bitsandbytes wrote --------------------------------------------------------

TEST(QuantState, ReadsBitsandbytesLinear4bitStateDict) {
  SafeTensorsFile f(quant_fixture("linear4bit_state.safetensors"));
  SafeTensorsFile src(quant_fixture("linear4bit_source.safetensors"));
  const auto ls = layers();
  ASSERT_GE(ls.size(), 4u);
  for (const auto& l : ls) {
    SCOPED_TRACE(l.name);
    ASSERT_TRUE(is_4bit_in_safetensors(f, l.name));
    const Quantized4bit q = read_4bit_from_safetensors(f, l.name);
    EXPECT_EQ(q.state.type, l.type);
    EXPECT_EQ(q.state.nested, l.nested);
    EXPECT_EQ(q.state.blocksize, l.blocksize);
    EXPECT_EQ(q.state.dtype, l.dtype);
    EXPECT_EQ(q.state.shape, l.shape);
    if (l.nested) {
      EXPECT_EQ(q.state.nested_blocksize, 256);
    }

    // Dequantizes to exactly what bitsandbytes dequantizes, in the layer's dtype.
    const SafeTensorInfo& want = src.at(l.name + ".dequantized");
    const int64_t n = q.state.numel();
    if (l.dtype == ComputeDType::F32) {
      std::vector<float> out(static_cast<size_t>(n));
      dequantize_tensor_4bit(q, out.data());
      EXPECT_EQ(first_bit_mismatch(out, f32s(src, want.name)), -1);
    } else {
      std::vector<uint16_t> out(static_cast<size_t>(n));
      dequantize_tensor_4bit(q, out.data(), to_dtype(l.dtype));
      EXPECT_EQ(out, raw<uint16_t>(src, want.name, to_dtype(l.dtype)));
    }

    // Quantizing the original weights reproduces bitsandbytes' state exactly.
    const std::vector<float> w = src.to_float(src.at(l.name));
    const Quantized4bit mine = quantize_tensor_4bit(w.data(), l.shape, l.type, l.blocksize, l.nested, l.dtype);
    expect_same_state(mine, q);
  }
  EXPECT_FALSE(is_4bit_in_safetensors(f, "model.norm.weight"));
  EXPECT_FALSE(is_4bit_in_safetensors(f, "model.layers.0.o_proj.bias"));
}

TEST(QuantState, WritesWhatBitsandbytesWritesByteForByte) {
  SafeTensorsFile f(quant_fixture("linear4bit_state.safetensors"));
  const Tensors theirs = load_all(f);
  for (const auto& l : layers()) {
    SCOPED_TRACE(l.name);
    SafeTensorsWriter w;
    write_4bit_to_safetensors(w, l.name, read_4bit_from_safetensors(f, l.name));
    const std::string p = tmp_path("rewrite.safetensors");
    w.write(p);
    SafeTensorsFile g(p);
    const Tensors ours = load_all(g);
    size_t count = 0;
    for (const auto& [name, e] : theirs) {
      if (name.rfind(l.name, 0) != 0) continue;
      ++count;
      ASSERT_TRUE(ours.count(name)) << "we do not write " << name;
      const Entry& o = ours.at(name);
      EXPECT_EQ(o.dtype, e.dtype) << name;
      EXPECT_EQ(o.shape, e.shape) << name;
      EXPECT_EQ(o.data, e.data) << name << (o.dtype == DType::U8 && name.find("quant_state") != std::string::npos
                                                ? "\n ours:   " + json_of(o) + "\n theirs: " + json_of(e)
                                                : std::string());
    }
    EXPECT_EQ(count, ours.size()) << "we write tensors bitsandbytes does not";
  }
}

// ---- round trips ----------------------------------------------------------------------

TEST(QuantState, RoundTripsThroughSafetensors) {
  struct Spec {
    std::vector<int64_t> shape;
    QuantType type;
    int blocksize;
    bool nested;
    ComputeDType dtype;
  };
  const Spec specs[] = {
      {{48, 64}, QuantType::NF4, 64, true, ComputeDType::BF16},
      {{48, 64}, QuantType::NF4, 64, false, ComputeDType::F32},
      {{7, 33}, QuantType::FP4, 32, true, ComputeDType::F16},
      {{7, 33}, QuantType::FP4, 128, false, ComputeDType::BF16},
      {{300, 300}, QuantType::NF4, 64, true, ComputeDType::BF16},  // 1407 blocks -> 6 nested blocks
      {{5}, QuantType::NF4, 4096, true, ComputeDType::F32},
  };
  int k = 0;
  for (const auto& s : specs) {
    SCOPED_TRACE(k);
    const auto x = weights(s.shape, static_cast<uint32_t>(100 + k));
    const Quantized4bit q = quantize_tensor_4bit(x.data(), s.shape, s.type, s.blocksize, s.nested, s.dtype);
    SafeTensorsWriter w;
    const std::string name = "layer" + std::to_string(k) + ".weight";
    write_4bit_to_safetensors(w, name, q);
    const std::string p = tmp_path("roundtrip.safetensors");
    w.write(p);
    SafeTensorsFile f(p);
    ASSERT_TRUE(is_4bit_in_safetensors(f, name));
    const Quantized4bit back = read_4bit_from_safetensors(f, name);
    expect_same_state(q, back);
    EXPECT_EQ(f.at(name).shape, (std::vector<int64_t>{packed_4bit_bytes(q.state.numel()), 1}));

    std::vector<float> a(x.size()), b(x.size());
    dequantize_tensor_4bit(q, a.data());
    dequantize_tensor_4bit(back, b.data());
    EXPECT_EQ(first_bit_mismatch(a, b), -1);
    // And dequantization is close to the input: within half the widest code gap of absmax.
    const auto am = q.state.block_absmax();
    for (size_t i = 0; i < x.size(); ++i)
      ASSERT_LE(std::fabs(a[i] - x[i]), 0.21f * am[i / static_cast<size_t>(s.blocksize)] + 1e-6f) << i;
    ++k;
  }
}

TEST(QuantState, BlockAbsmaxUndoesDoubleQuantization) {
  const std::vector<int64_t> shape = {64, 512};
  const auto x = weights(shape, 3);
  const auto plain = quantize_tensor_4bit(x.data(), shape, QuantType::NF4, 64, false, ComputeDType::F32);
  const auto dq = quantize_tensor_4bit(x.data(), shape, QuantType::NF4, 64, true, ComputeDType::F32);
  ASSERT_EQ(dq.state.absmax_q.size(), 512u);
  ASSERT_EQ(dq.state.nested_absmax.size(), 2u);
  EXPECT_TRUE(dq.state.absmax.empty());
  const auto a = plain.state.block_absmax(), b = dq.state.block_absmax();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 0.02f * a[i]) << i;
  EXPECT_EQ(dq.state.constant_bytes(), 512 + 2 * 4 + 4);
  EXPECT_EQ(plain.state.constant_bytes(), 512 * 4);
}

TEST(QuantState, RejectsBadArguments) {
  const std::vector<float> x(100, 1.0f);
  EXPECT_THROW(quantize_tensor_4bit(x.data(), {10, 10}, QuantType::NF4, 100, false, ComputeDType::F32), Error);
  EXPECT_THROW(quantize_tensor_4bit(x.data(), {0, 10}, QuantType::NF4, 64, false, ComputeDType::F32), Error);
  EXPECT_THROW(quantize_tensor_4bit(x.data(), {-1, 10}, QuantType::NF4, 64, false, ComputeDType::F32), Error);
  auto q = quantize_tensor_4bit(x.data(), {10, 10}, QuantType::NF4, 64, false, ComputeDType::F32);
  std::vector<uint16_t> h(100);
  EXPECT_THROW(dequantize_tensor_4bit(q, h.data(), DType::F32), Error);
  q.state.absmax.pop_back();
  std::vector<float> out(100);
  EXPECT_THROW(dequantize_tensor_4bit(q, out.data()), Error);
}

TEST(QuantState, AcceptsPackedCodesStoredInAnotherDtype) {
  // bitsandbytes' quant_storage (e.g. bfloat16 for FSDP) only reinterprets the packed bytes.
  Tensors t = valid_tensors(true);
  auto& w = t.at(kW);
  ASSERT_EQ(w.data.size() % 2, 0u);
  w.dtype = DType::BF16;
  w.shape = {static_cast<int64_t>(w.data.size() / 2), 1};
  const std::string p = save(t, "bf16_storage.safetensors");
  SafeTensorsFile f(p);
  const Quantized4bit q = read_4bit_from_safetensors(f, kW);
  EXPECT_EQ(q.packed, valid_tensors(true).at(kW).data);
}

// ---- malformed files: each error names the file and the offending tensor -------------

struct Malformed {
  const char* what;
  bool nested;
  std::function<void(Tensors&)> edit;
  std::string must_name;  // a tensor name (suffix of kW) the message must contain
};

TEST(QuantState, MalformedInputsGiveErrorsNamingTheTensor) {
  const std::string qs = kW + ".quant_state.bitsandbytes__nf4";
  auto edit_json = [qs](std::function<void(nlohmann::ordered_json&)> fn) {
    return [qs, fn](Tensors& t) {
      auto j = nlohmann::ordered_json::parse(json_of(t.at(qs)));
      fn(j);
      t[qs] = json_entry(j.dump());
    };
  };
  const std::vector<Malformed> cases = {
      {"absmax one short", false,
       [](Tensors& t) {
         auto& e = t.at(kW + ".absmax");
         e.data.resize(e.data.size() - 4);
         e.shape[0] -= 1;
       },
       kW + ".absmax"},
      {"absmax as F16", false,
       [](Tensors& t) {
         auto& e = t.at(kW + ".absmax");
         e.dtype = DType::F16;
         e.shape[0] *= 2;
       },
       kW + ".absmax"},
      {"nested absmax as F32", true,
       [](Tensors& t) {
         auto& e = t.at(kW + ".absmax");
         e.dtype = DType::F32;
         e.data.resize(e.data.size() * 4);
       },
       kW + ".absmax"},
      {"missing quant_map", false, [](Tensors& t) { t.erase(kW + ".quant_map"); }, kW + ".quant_map"},
      {"quant_map of the other type", false,
       [](Tensors& t) {
         const auto& c = codebook_4bit(QuantType::FP4);
         std::memcpy(t.at(kW + ".quant_map").data.data(), c.data(), 64);
       },
       kW + ".quant_map"},
      {"quant_map too short", false,
       [](Tensors& t) {
         auto& e = t.at(kW + ".quant_map");
         e.data.resize(60);
         e.shape = {15};
       },
       kW + ".quant_map"},
      {"packed codes too short", false,
       [](Tensors& t) {
         auto& e = t.at(kW);
         e.data.resize(e.data.size() - 1);
         e.shape[0] -= 1;
       },
       kW},
      {"missing packed codes", false, [](Tensors& t) { t.erase(kW); }, kW},
      {"quant-state not JSON", false, [qs](Tensors& t) { t[qs] = json_entry("{\"quant_type\": \"nf4\", "); }, qs},
      {"quant-state JSON not an object", false, [qs](Tensors& t) { t[qs] = json_entry("[1, 2]"); }, qs},
      {"quant-state as I8", false, [qs](Tensors& t) { t[qs].dtype = DType::I8; }, qs},
      {"no blocksize", false, edit_json([](auto& j) { j.erase("blocksize"); }), qs},
      {"blocksize 100", false, edit_json([](auto& j) { j["blocksize"] = 100; }), qs},
      {"blocksize a string", false, edit_json([](auto& j) { j["blocksize"] = "64"; }), qs},
      {"quant_type fp4 under an nf4 key", false, edit_json([](auto& j) { j["quant_type"] = "fp4"; }), qs},
      {"quant_type int4", false, edit_json([](auto& j) { j["quant_type"] = "int4"; }), qs},
      {"dtype int8", false, edit_json([](auto& j) { j["dtype"] = "int8"; }), qs},
      {"shape not a list", false, edit_json([](auto& j) { j["shape"] = 640; }), qs},
      {"negative dimension", false, edit_json([](auto& j) { j["shape"] = {-10, -64}; }), qs},
      {"shape disagrees with the data", false, edit_json([](auto& j) { j["shape"] = {20, 64}; }), kW},
      {"unknown field", false, edit_json([](auto& j) { j["zero_point"] = 3; }), qs},
      {"nested without nested_absmax", true, [](Tensors& t) { t.erase(kW + ".nested_absmax"); },
       kW + ".nested_absmax"},
      {"nested without nested_quant_map", true, [](Tensors& t) { t.erase(kW + ".nested_quant_map"); },
       kW + ".nested_quant_map"},
      {"nested without nested_offset", true, edit_json([](auto& j) { j.erase("nested_offset"); }), qs},
      {"nested_offset a string", true, edit_json([](auto& j) { j["nested_offset"] = "0.1"; }), qs},
      {"nested_offset beyond float32", true, edit_json([](auto& j) { j["nested_offset"] = 1e300; }), qs},
      {"nested_dtype bfloat16", true, edit_json([](auto& j) { j["nested_dtype"] = "bfloat16"; }), qs},
      {"nested_blocksize 0", true, edit_json([](auto& j) { j["nested_blocksize"] = 0; }), qs},
      {"nested_absmax one too many", true,
       [](Tensors& t) {
         auto& e = t.at(kW + ".nested_absmax");
         e.data.resize(e.data.size() + 4);
         e.shape[0] += 1;
       },
       kW + ".nested_absmax"},
      {"absmax NaN", false,
       [](Tensors& t) {
         const float nan = std::numeric_limits<float>::quiet_NaN();
         std::memcpy(t.at(kW + ".absmax").data.data() + 4, &nan, 4);
       },
       kW + ".absmax"},
      {"nested_absmax infinite", true,
       [](Tensors& t) {
         const float inf = std::numeric_limits<float>::infinity();
         std::memcpy(t.at(kW + ".nested_absmax").data.data(), &inf, 4);
       },
       kW + ".nested_absmax"},
      {"nested_quant_map NaN", true,
       [](Tensors& t) {
         const float nan = std::numeric_limits<float>::quiet_NaN();
         std::memcpy(t.at(kW + ".nested_quant_map").data.data() + 40, &nan, 4);
       },
       kW + ".nested_quant_map"},
      {"nested_quant_map of 255", true,
       [](Tensors& t) {
         auto& e = t.at(kW + ".nested_quant_map");
         e.data.resize(255 * 4);
         e.shape = {255};
       },
       kW + ".nested_quant_map"},
      {"nested fields on a plain weight", false,
       edit_json([](auto& j) {
         j["nested_blocksize"] = 256;
         j["nested_dtype"] = "float32";
         j["nested_offset"] = 0.5;
       }),
       kW + ".nested_absmax"},
      {"both nf4 and fp4 quant states", false,
       [qs](Tensors& t) { t[kW + ".quant_state.bitsandbytes__fp4"] = t.at(qs); }, kW},
      {"no quant state at all", false, [qs](Tensors& t) { t.erase(qs); }, kW},
  };
  const Tensors plain = valid_tensors(false), nested = valid_tensors(true);
  EXPECT_EQ(read_error(plain, kW), "");
  EXPECT_EQ(read_error(nested, kW), "");
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    Tensors t = c.nested ? nested : plain;
    c.edit(t);
    const std::string msg = read_error(t, kW);
    ASSERT_NE(msg, "") << "accepted: " << c.what;
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'" + c.must_name + "'"), std::string::npos) << msg;
  }
}
