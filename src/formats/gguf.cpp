#include "formats/gguf.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <utility>

#include "base/error.h"
#include "formats/model_family.h"

namespace qlora {

std::string gguf_quote(std::string_view s) {
  // Names from a corrupt file may hold anything: keep messages printable and short.
  std::string out = "'";
  size_t n = 0;
  for (unsigned char c : s) {
    if (++n > 80) {
      out += "...";
      break;
    }
    if (c >= 0x20 && c < 0x7f) out += static_cast<char>(c);
    else {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  out += "'";
  return out;
}

size_t gguf_fixed_value_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::U8: case GgufValueType::I8: case GgufValueType::BOOL: return 1;
    case GgufValueType::U16: case GgufValueType::I16: return 2;
    case GgufValueType::U32: case GgufValueType::I32: case GgufValueType::F32: return 4;
    case GgufValueType::U64: case GgufValueType::I64: case GgufValueType::F64: return 8;
    default: return 0;
  }
}


namespace {

constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxDims = 4;            // GGML_MAX_DIMS
constexpr int kMaxArrayNesting = 16;   // deeper nesting is surely garbage (and a stack risk)
// Arrays of arrays cost ~10x their file bytes in memory (one GgufValue each) and no real
// model uses big ones: cap their total element count so a crafted file cannot make us
// allocate gigabytes.
constexpr uint64_t kMaxNestedArrayElements = uint64_t{1} << 20;


// The fewest bytes one element of type t can take in the file (for count checks).
uint64_t min_size(GgufValueType t) {
  if (t == GgufValueType::STRING) return 8;              // u64 length
  if (t == GgufValueType::ARRAY) return 4 + 8;           // u32 type + u64 count
  return gguf_fixed_value_size(t);
}

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::F64); }


template <class T>
T load_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

class Cursor {
 public:
  uint64_t nested_elements = 0;  // arrays-of-arrays elements read so far

  Cursor(std::span<const uint8_t> b, std::string_view where) : b_(b), where_(where) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return b_.size() - pos_; }

  [[noreturn]] void error(const std::string& what) const { fail(where_, what); }

  void need(uint64_t n, const char* what) const {
    if (n > left())
      error(std::string("truncated: ") + what + " at offset " + std::to_string(pos_) + " needs " +
            std::to_string(n) + " bytes, only " + std::to_string(left()) + " left");
  }
  template <class T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v = load_le<T>(b_.data() + pos_);
    pos_ += sizeof(T);
    return v;
  }
  std::span<const uint8_t> take(uint64_t n, const char* what) {
    need(n, what);
    auto s = b_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  std::string_view read_string(const char* what) {
    const uint64_t n = read<uint64_t>(what);
    if (n > left())
      error(std::string(what) + " at offset " + std::to_string(pos_ - 8) + " has length " + std::to_string(n) +
            ", more than the " + std::to_string(left()) + " bytes left in the file");
    auto s = take(n, what);
    return {reinterpret_cast<const char*>(s.data()), s.size()};
  }

 private:
  std::span<const uint8_t> b_;
  std::string_view where_;
  uint64_t pos_ = 0;
};

GgufValue read_value(Cursor& c, GgufValueType type, const std::string& ctx, int depth);

GgufValue read_array(Cursor& c, const std::string& ctx, int depth) {
  GgufValue v;
  v.type = GgufValueType::ARRAY;
  const uint32_t et = c.read<uint32_t>("array element type");
  if (!valid_value_type(et)) c.error(ctx + ": array has unknown element type " + std::to_string(et));
  v.elem_type = static_cast<GgufValueType>(et);
  if (v.elem_type == GgufValueType::ARRAY && depth + 1 >= kMaxArrayNesting)
    c.error(ctx + ": arrays nested more than " + std::to_string(kMaxArrayNesting) + " deep");
  v.count = c.read<uint64_t>("array length");
  const uint64_t ms = min_size(v.elem_type);
  if (v.count > c.left() / ms)
    c.error(ctx + ": array of " + std::to_string(v.count) + " " +
            std::string(gguf_value_type_name(v.elem_type)) + " elements does not fit in the " +
            std::to_string(c.left()) + " bytes left in the file");
  if (const size_t fs = gguf_fixed_value_size(v.elem_type)) {
    v.raw = c.take(v.count * fs, "array elements");
    if (v.elem_type == GgufValueType::BOOL)
      for (uint8_t b : v.raw)
        if (b > 1) c.error(ctx + ": bool array element has value " + std::to_string(b) + ", expected 0 or 1");
  } else if (v.elem_type == GgufValueType::STRING) {
    v.strings.reserve(v.count);
    for (uint64_t i = 0; i < v.count; ++i) v.strings.push_back(c.read_string("array string"));
  } else {
    c.nested_elements += v.count;
    if (c.nested_elements > kMaxNestedArrayElements)
      c.error(ctx + ": more than " + std::to_string(kMaxNestedArrayElements) + " nested array elements in the file");
    v.arrays.reserve(v.count);
    for (uint64_t i = 0; i < v.count; ++i) v.arrays.push_back(read_array(c, ctx, depth + 1));
  }
  return v;
}

GgufValue read_value(Cursor& c, GgufValueType type, const std::string& ctx, int depth) {
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufValueType::U8: v.u = c.read<uint8_t>("value"); break;
    case GgufValueType::U16: v.u = c.read<uint16_t>("value"); break;
    case GgufValueType::U32: v.u = c.read<uint32_t>("value"); break;
    case GgufValueType::U64: v.u = c.read<uint64_t>("value"); break;
    case GgufValueType::I8: v.i = c.read<int8_t>("value"); break;
    case GgufValueType::I16: v.i = c.read<int16_t>("value"); break;
    case GgufValueType::I32: v.i = c.read<int32_t>("value"); break;
    case GgufValueType::I64: v.i = c.read<int64_t>("value"); break;
    case GgufValueType::F32: v.f = c.read<float>("value"); break;
    case GgufValueType::F64: v.f = c.read<double>("value"); break;
    case GgufValueType::BOOL: {
      const uint8_t b = c.read<uint8_t>("value");
      if (b > 1) c.error(ctx + ": bool has value " + std::to_string(b) + ", expected 0 or 1");
      v.u = b;
      break;
    }
    case GgufValueType::STRING: v.str = c.read_string("string value"); break;
    case GgufValueType::ARRAY: return read_array(c, ctx, depth);
  }
  return v;
}

uint64_t align_up(uint64_t x, uint64_t a, bool* overflow) {
  const uint64_t r = x % a;
  if (r == 0) return x;
  if (x > std::numeric_limits<uint64_t>::max() - (a - r)) {
    *overflow = true;
    return 0;
  }
  return x + (a - r);
}

}  // namespace

// ---- values ------------------------------------------------------------------------------

std::string_view gguf_value_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::U8: return "uint8";
    case GgufValueType::I8: return "int8";
    case GgufValueType::U16: return "uint16";
    case GgufValueType::I16: return "int16";
    case GgufValueType::U32: return "uint32";
    case GgufValueType::I32: return "int32";
    case GgufValueType::F32: return "float32";
    case GgufValueType::BOOL: return "bool";
    case GgufValueType::STRING: return "string";
    case GgufValueType::ARRAY: return "array";
    case GgufValueType::U64: return "uint64";
    case GgufValueType::I64: return "int64";
    case GgufValueType::F64: return "float64";
  }
  return "unknown";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufValueType::U8: case GgufValueType::U16: case GgufValueType::U32: case GgufValueType::U64:
    case GgufValueType::I8: case GgufValueType::I16: case GgufValueType::I32: case GgufValueType::I64:
      return true;
    default: return false;
  }
}

bool GgufValue::is_float() const { return type == GgufValueType::F32 || type == GgufValueType::F64; }

std::string GgufValue::type_name() const {
  if (type != GgufValueType::ARRAY) return std::string(gguf_value_type_name(type));
  return "array[" + std::string(gguf_value_type_name(elem_type)) + "]";
}

// ---- tensors -----------------------------------------------------------------------------

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;  // overflow excluded by the parser
  return n;
}

std::vector<int64_t> GgufTensorInfo::shape() const { return {dims.rbegin(), dims.rend()}; }

// ---- parser ------------------------------------------------------------------------------

GgufHeader parse_gguf(std::span<const uint8_t> file, std::string_view where) {
  GgufHeader h;
  Cursor c(file, where);
  if (file.size() < 4 || std::memcmp(file.data(), "GGUF", 4) != 0)
    c.error("not a GGUF file (the first 4 bytes are not \"GGUF\")");
  c.take(4, "magic");
  h.version = c.read<uint32_t>("version");
  if (h.version == 1)
    c.error("GGUF version 1 is not supported (an obsolete format from before October 2023; "
            "convert the model again with a current llama.cpp)");
  if (h.version != 2 && h.version != 3) {
    if ((h.version & 0xFFFF) == 0 && (h.version >> 16) != 0)
      c.error("big-endian GGUF files are not supported (version field " + std::to_string(h.version) + ")");
    c.error("unsupported GGUF version " + std::to_string(h.version) + " (supported: 2 and 3)");
  }
  const uint64_t n_tensors = c.read<uint64_t>("tensor count");
  const uint64_t n_kv = c.read<uint64_t>("metadata count");
  // Each metadata entry takes >= 8 (key length) + 4 (type) + 1 bytes; each tensor info
  // >= 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset). Check before reserving.
  if (n_kv > c.left() / 13)
    c.error("metadata count " + std::to_string(n_kv) + " is impossible for a file of " +
            std::to_string(file.size()) + " bytes");
  if (n_tensors > c.left() / 24)
    c.error("tensor count " + std::to_string(n_tensors) + " is impossible for a file of " +
            std::to_string(file.size()) + " bytes");

  // -- metadata --
  std::map<std::string_view, size_t, std::less<>> keys;
  h.metadata.reserve(n_kv);
  for (uint64_t k = 0; k < n_kv; ++k) {
    const uint64_t at = c.pos();
    std::string_view key = c.read_string("metadata key");
    const std::string ctx = "metadata key " + gguf_quote(key);
    if (key.empty()) c.error("metadata entry " + std::to_string(k) + " at offset " + std::to_string(at) + " has an empty key");
    const uint32_t t = c.read<uint32_t>("metadata value type");
    if (!valid_value_type(t)) c.error(ctx + " has unknown value type " + std::to_string(t));
    GgufValue v = read_value(c, static_cast<GgufValueType>(t), ctx, 0);
    if (!keys.emplace(key, h.metadata.size()).second) c.error(ctx + " appears twice");
    h.metadata.emplace_back(std::string(key), std::move(v));
  }

  if (auto it = keys.find(std::string_view("general.alignment")); it != keys.end()) {
    const GgufValue& v = h.metadata[it->second].second;
    if (v.type != GgufValueType::U32)
      c.error("metadata key 'general.alignment' has type " + v.type_name() + ", expected uint32");
    if (v.u == 0 || (v.u & (v.u - 1)) != 0)
      c.error("general.alignment " + std::to_string(v.u) + " is not a power of two");
    h.alignment = v.u;
  } else {
    h.alignment = kDefaultAlignment;
  }

  // -- tensor infos --
  std::map<std::string_view, size_t, std::less<>> names;
  h.tensors.reserve(n_tensors);
  for (uint64_t ti = 0; ti < n_tensors; ++ti) {
    GgufTensorInfo t;
    std::string_view name = c.read_string("tensor name");
    const std::string ctx = "tensor " + gguf_quote(name);
    const uint32_t n_dims = c.read<uint32_t>("tensor n_dims");
    if (n_dims > kMaxDims)
      c.error(ctx + " has " + std::to_string(n_dims) + " dimensions, at most " + std::to_string(kMaxDims) +
              " are allowed");
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim = c.read<uint64_t>("tensor dimension");
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        c.error(ctx + " has dimension " + std::to_string(dim) + ", too large");
      const auto di = static_cast<int64_t>(dim);
      if (di != 0 && numel > std::numeric_limits<int64_t>::max() / di)
        c.error(ctx + ": the product of its dimensions overflows");
      numel *= di;
      t.dims.push_back(di);
    }
    const uint32_t type_id = c.read<uint32_t>("tensor type");
    auto traits = ggml_type_traits(type_id);
    if (!traits) c.error(ctx + " has unknown GGML type " + std::to_string(type_id));
    t.type = static_cast<GgmlType>(type_id);
    const int64_t ne0 = t.dims.empty() ? 1 : t.dims[0];
    if (ne0 % traits->block_size != 0)
      c.error(ctx + " of type " + std::string(traits->name) + " has a first dimension of " + std::to_string(ne0) +
              ", not a multiple of the block size " + std::to_string(traits->block_size));
    auto nbytes = ggml_nbytes(t.type, numel);
    if (!nbytes) c.error(ctx + ": its byte size overflows");
    t.nbytes = static_cast<uint64_t>(*nbytes);
    t.offset = c.read<uint64_t>("tensor offset");
    if (t.offset % h.alignment != 0)
      c.error(ctx + " has offset " + std::to_string(t.offset) + ", not a multiple of the alignment " +
              std::to_string(h.alignment));
    if (!names.emplace(name, h.tensors.size()).second) c.error(ctx + " appears twice");
    t.name = std::string(name);
    h.tensors.push_back(std::move(t));
  }

  // -- data section --
  bool overflow = false;
  h.data_start = align_up(c.pos(), h.alignment, &overflow);
  if (overflow) c.error("data section offset overflows");
  if (!h.tensors.empty() && h.data_start > file.size())
    c.error("truncated: the data section would start at offset " + std::to_string(h.data_start) +
            ", past the end of the file (" + std::to_string(file.size()) + " bytes)");
  const uint64_t data_size = h.data_start <= file.size() ? file.size() - h.data_start : 0;
  for (const auto& t : h.tensors) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      c.error("truncated: tensor " + gguf_quote(t.name) + " (" + std::to_string(t.nbytes) + " bytes at data offset " +
              std::to_string(t.offset) + ") extends past the end of the file (data section of " +
              std::to_string(data_size) + " bytes)");
  }
  std::vector<size_t> order(h.tensors.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return h.tensors[a].offset < h.tensors[b].offset; });
  const GgufTensorInfo* prev = nullptr;
  for (size_t i : order) {
    const auto& t = h.tensors[i];
    if (t.nbytes == 0) continue;
    if (prev && prev->offset + prev->nbytes > t.offset)
      c.error("tensors " + gguf_quote(prev->name) + " and " + gguf_quote(t.name) + " overlap in the data section");
    prev = &t;
  }
  return h;
}

// ---- GgufFile ------------------------------------------------------------------------------

GgufFile::GgufFile(const std::string& path) : where_(path) {
  file_.emplace(path);
  bytes_ = file_->bytes();
  header_ = parse_gguf(bytes_, where_);
  index();
}

GgufFile GgufFile::from_bytes(std::span<const uint8_t> bytes, std::string where) {
  GgufFile f;
  f.where_ = std::move(where);
  f.bytes_ = bytes;
  f.header_ = parse_gguf(bytes, f.where_);
  f.index();
  return f;
}

void GgufFile::index() {
  for (size_t i = 0; i < header_.metadata.size(); ++i) meta_index_.emplace(header_.metadata[i].first, i);
  for (size_t i = 0; i < header_.tensors.size(); ++i) tensor_index_.emplace(header_.tensors[i].name, i);
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = meta_index_.find(key);
  return it == meta_index_.end() ? nullptr : &header_.metadata[it->second].second;
}

const GgufValue& GgufFile::at(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) fail(where_, "metadata key " + gguf_quote(key) + " missing");
  return *v;
}

void GgufFile::type_error(std::string_view key, const GgufValue& v, std::string_view expected) const {
  fail(where_, "metadata key " + gguf_quote(key) + " has type " + v.type_name() + ", expected " + std::string(expected));
}

const GgufValue& GgufFile::typed(std::string_view key, GgufValueType t) const {
  const GgufValue& v = at(key);
  if (v.type != t) type_error(key, v, gguf_value_type_name(t));
  return v;
}

namespace {

// Integer value of an integer GgufValue as a wide signed/unsigned pair.
bool int_value(const GgufValue& v, bool* negative, uint64_t* mag) {
  switch (v.type) {
    case GgufValueType::U8: case GgufValueType::U16: case GgufValueType::U32: case GgufValueType::U64:
      *negative = false;
      *mag = v.u;
      return true;
    case GgufValueType::I8: case GgufValueType::I16: case GgufValueType::I32: case GgufValueType::I64:
      *negative = v.i < 0;
      *mag = v.i < 0 ? static_cast<uint64_t>(-(v.i + 1)) + 1 : static_cast<uint64_t>(v.i);
      return true;
    default: return false;
  }
}

// Element i of a packed numeric array, widened.
GgufValue array_elem(const GgufValue& a, uint64_t i) {
  GgufValue v;
  v.type = a.elem_type;
  const uint8_t* p = a.raw.data() + i * gguf_fixed_value_size(a.elem_type);
  switch (a.elem_type) {
    case GgufValueType::U8: case GgufValueType::BOOL: v.u = load_le<uint8_t>(p); break;
    case GgufValueType::U16: v.u = load_le<uint16_t>(p); break;
    case GgufValueType::U32: v.u = load_le<uint32_t>(p); break;
    case GgufValueType::U64: v.u = load_le<uint64_t>(p); break;
    case GgufValueType::I8: v.i = load_le<int8_t>(p); break;
    case GgufValueType::I16: v.i = load_le<int16_t>(p); break;
    case GgufValueType::I32: v.i = load_le<int32_t>(p); break;
    case GgufValueType::I64: v.i = load_le<int64_t>(p); break;
    case GgufValueType::F32: v.f = load_le<float>(p); break;
    case GgufValueType::F64: v.f = load_le<double>(p); break;
    default: break;
  }
  return v;
}

std::string int_text(const GgufValue& v) {
  bool neg = false;
  uint64_t mag = 0;
  int_value(v, &neg, &mag);
  std::string text = neg ? "-" : "";
  text += std::to_string(mag);  // (not "-" + ...: GCC 12's -Wrestrict misfires on that form)
  return text;
}

}  // namespace

std::string_view GgufFile::get_string(std::string_view key) const { return typed(key, GgufValueType::STRING).str; }

uint64_t GgufFile::get_u64(std::string_view key) const {
  const GgufValue& v = at(key);
  bool neg = false;
  uint64_t mag = 0;
  if (!int_value(v, &neg, &mag)) type_error(key, v, "uint64");
  if (neg) fail(where_, "metadata key " + gguf_quote(key) + " value " + int_text(v) + " out of range for uint64");
  return mag;
}

uint32_t GgufFile::get_u32(std::string_view key) const {
  const GgufValue& v = at(key);
  bool neg = false;
  uint64_t mag = 0;
  if (!int_value(v, &neg, &mag)) type_error(key, v, "uint32");
  if (neg || mag > std::numeric_limits<uint32_t>::max())
    fail(where_, "metadata key " + gguf_quote(key) + " value " + int_text(v) + " out of range for uint32");
  return static_cast<uint32_t>(mag);
}

int64_t GgufFile::get_i64(std::string_view key) const {
  const GgufValue& v = at(key);
  bool neg = false;
  uint64_t mag = 0;
  if (!int_value(v, &neg, &mag)) type_error(key, v, "int64");
  if (neg) return v.i;
  if (mag > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    fail(where_, "metadata key " + gguf_quote(key) + " value " + int_text(v) + " out of range for int64");
  return static_cast<int64_t>(mag);
}

double GgufFile::get_f64(std::string_view key) const {
  const GgufValue& v = at(key);
  if (!v.is_float()) type_error(key, v, "float32");
  return v.f;
}

float GgufFile::get_f32(std::string_view key) const { return static_cast<float>(get_f64(key)); }

bool GgufFile::get_bool(std::string_view key) const { return typed(key, GgufValueType::BOOL).u != 0; }

std::string_view GgufFile::get_string_or(std::string_view key, std::string_view dflt) const {
  return has(key) ? get_string(key) : dflt;
}
uint32_t GgufFile::get_u32_or(std::string_view key, uint32_t dflt) const { return has(key) ? get_u32(key) : dflt; }
int64_t GgufFile::get_i64_or(std::string_view key, int64_t dflt) const { return has(key) ? get_i64(key) : dflt; }
float GgufFile::get_f32_or(std::string_view key, float dflt) const { return has(key) ? get_f32(key) : dflt; }
bool GgufFile::get_bool_or(std::string_view key, bool dflt) const { return has(key) ? get_bool(key) : dflt; }

uint64_t GgufFile::array_size(std::string_view key) const { return typed(key, GgufValueType::ARRAY).count; }

std::vector<std::string_view> GgufFile::get_string_view_array(std::string_view key) const {
  const GgufValue& v = at(key);
  if (v.type != GgufValueType::ARRAY || v.elem_type != GgufValueType::STRING) type_error(key, v, "array[string]");
  return v.strings;
}

std::vector<std::string> GgufFile::get_string_array(std::string_view key) const {
  auto views = get_string_view_array(key);
  return {views.begin(), views.end()};
}

std::vector<float> GgufFile::get_f32_array(std::string_view key) const {
  const GgufValue& v = at(key);
  if (v.type != GgufValueType::ARRAY || (v.elem_type != GgufValueType::F32 && v.elem_type != GgufValueType::F64))
    type_error(key, v, "array[float32]");
  std::vector<float> out(v.count);
  for (uint64_t i = 0; i < v.count; ++i) out[i] = static_cast<float>(array_elem(v, i).f);
  return out;
}

std::vector<int64_t> GgufFile::get_int_array(std::string_view key) const {
  const GgufValue& v = at(key);
  GgufValue probe;
  probe.type = v.elem_type;
  if (v.type != GgufValueType::ARRAY || !probe.is_integer()) type_error(key, v, "array[int64]");
  std::vector<int64_t> out(v.count);
  for (uint64_t i = 0; i < v.count; ++i) {
    const GgufValue e = array_elem(v, i);
    bool neg = false;
    uint64_t mag = 0;
    int_value(e, &neg, &mag);
    if (!neg && mag > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(where_, "metadata key " + gguf_quote(key) + " element " + std::to_string(i) + " value " + int_text(e) +
                       " out of range for int64");
    out[i] = neg ? e.i : static_cast<int64_t>(mag);
  }
  return out;
}

std::vector<int32_t> GgufFile::get_i32_array(std::string_view key) const {
  const GgufValue& v = at(key);
  GgufValue probe;
  probe.type = v.elem_type;
  if (v.type != GgufValueType::ARRAY || !probe.is_integer()) type_error(key, v, "array[int32]");
  auto wide = get_int_array(key);
  std::vector<int32_t> out(wide.size());
  for (size_t i = 0; i < wide.size(); ++i) {
    if (wide[i] < std::numeric_limits<int32_t>::min() || wide[i] > std::numeric_limits<int32_t>::max())
      fail(where_, "metadata key " + gguf_quote(key) + " element " + std::to_string(i) + " value " +
                       std::to_string(wide[i]) + " out of range for int32");
    out[i] = static_cast<int32_t>(wide[i]);
  }
  return out;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &header_.tensors[it->second];
}

const GgufTensorInfo& GgufFile::tensor(std::string_view name) const {
  const GgufTensorInfo* t = find_tensor(name);
  if (!t) fail(where_, "no tensor named " + gguf_quote(name));
  return *t;
}

std::span<const uint8_t> GgufFile::tensor_data(const GgufTensorInfo& t) const {
  return bytes_.subspan(header_.data_start + t.offset, t.nbytes);
}

void GgufFile::tensor_to_f32(const GgufTensorInfo& t, std::span<float> out) const {
  const std::string w = where_ + ": tensor " + gguf_quote(t.name);
  if (out.size() != static_cast<uint64_t>(t.numel()))
    fail(w, "output holds " + std::to_string(out.size()) + " floats, the tensor has " + std::to_string(t.numel()));
  dequantize(t.type, tensor_data(t), out, w);
}

std::vector<float> GgufFile::tensor_slice_to_f32(const GgufTensorInfo& t, int64_t index) const {
  const std::string w = where_ + ": tensor " + gguf_quote(t.name);
  if (t.dims.size() < 2 || index < 0 || index >= t.dims.back())
    fail(w, "has no slice " + std::to_string(index) + " along its outermost dimension");
  const auto& tr = ggml_traits(t.type);
  if (!tr.can_dequantize)
    fail(w, "dequantization of type " + std::string(tr.name) + " is not supported");
  const uint64_t n = static_cast<uint64_t>(t.numel() / t.dims.back());
  const uint64_t bytes = t.nbytes / static_cast<uint64_t>(t.dims.back());  // (whole rows: whole blocks)
  std::vector<float> out(n);
  dequantize(t.type, tensor_data(t).subspan(static_cast<uint64_t>(index) * bytes, bytes), out, w);
  return out;
}

std::vector<float> GgufFile::tensor_to_f32(const GgufTensorInfo& t) const {
  const auto& tr = ggml_traits(t.type);
  if (!tr.can_dequantize)
    fail(where_, "tensor " + gguf_quote(t.name) + ": dequantization of type " + std::string(tr.name) + " is not supported");
  std::vector<float> out(static_cast<size_t>(t.numel()));
  tensor_to_f32(t, out);
  return out;
}

std::vector<float> GgufFile::tensor_to_f32(std::string_view name) const { return tensor_to_f32(tensor(name)); }

}  // namespace qlora
