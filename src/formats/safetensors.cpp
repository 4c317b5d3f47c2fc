#include "formats/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>

#include <nlohmann/json.hpp>

#include "base/atomic_file.h"
#include "base/error.h"
#include "base/json_error.h"
#include "base/text_excerpt.h"
#include "base/float_formats.h"

namespace qlora {
namespace {

// The reference implementation caps headers at 100 MB; a bigger one is corrupt or hostile.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string where_tensor(std::string_view where, const std::string& name) {
  std::string s(where);
  s += ": tensor '";
  s += name;
  s += "'";
  return s;
}

SafeTensorInfo parse_entry(std::string_view where, const std::string& name, const nlohmann::json& v,
                           uint64_t data_size) {
  const std::string w = where_tensor(where, name);
  check(v.is_object(), w, "header entry is not a JSON object");
  SafeTensorInfo t;
  t.name = name;

  auto dt = v.find("dtype");
  check(dt != v.end() && dt->is_string(), w, "missing string field 'dtype'");
  auto parsed = dtype_from_name(dt->get<std::string>());
  check(parsed.has_value(), w, "unknown dtype " + excerpt(dt->get<std::string>()));
  t.dtype = *parsed;

  auto sh = v.find("shape");
  check(sh != v.end() && sh->is_array(), w, "missing array field 'shape'");
  check(sh->size() <= 16, w, "shape has more than 16 dimensions");
  uint64_t numel = 1;
  for (const auto& d : *sh) {
    check(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0), w,
          "shape entries must be non-negative integers");
    uint64_t dim = d.get<uint64_t>();
    check(dim == 0 || numel <= std::numeric_limits<uint64_t>::max() / dim, w, "shape product overflows");
    numel *= dim;
    t.shape.push_back(static_cast<int64_t>(dim));
  }
  uint64_t esize = dtype_size(t.dtype);
  check(numel <= std::numeric_limits<uint64_t>::max() / esize, w, "byte size overflows");

  auto off = v.find("data_offsets");
  check(off != v.end() && off->is_array() && off->size() == 2, w, "missing field 'data_offsets' [begin, end]");
  for (const auto& o : *off)
    check(o.is_number_unsigned() || (o.is_number_integer() && o.get<int64_t>() >= 0), w,
          "data_offsets must be non-negative integers");
  t.begin = (*off)[0].get<uint64_t>();
  t.end = (*off)[1].get<uint64_t>();
  check(t.begin <= t.end, w, "data_offsets begin > end");
  check(t.end <= data_size, w,
        "data_offsets end " + std::to_string(t.end) + " is past the end of the data section (" +
            std::to_string(data_size) + " bytes): file truncated?");
  check(t.end - t.begin == numel * esize, w,
        "byte range of " + std::to_string(t.end - t.begin) + " does not match shape x dtype (" +
            std::to_string(numel * esize) + " bytes)");
  return t;
}

}  // namespace

int64_t SafeTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafeTensorsHeader parse_safetensors_header(std::span<const uint8_t> file, std::string_view where) {
  check(file.size() >= 8, where, "not a safetensors file: shorter than the 8-byte header length");
  const uint64_t n = read_u64_le(file.data());
  // (another format's magic reads as an absurd header length: name the format instead)
  check(std::memcmp(file.data(), "GGUF", 4) != 0, where,
        "is a GGUF file, not safetensors (this command takes safetensors checkpoints; generate, train, eval and "
        "merge load GGUF files directly)");
  check(std::memcmp(file.data(), "PK\x03\x04", 4) != 0, where,
        "is a zip archive (a PyTorch .bin / .pt checkpoint?), not safetensors: convert it to safetensors first");
  check(n <= kMaxHeaderBytes, where,
        "header length " + std::to_string(n) + " is implausibly large: not a safetensors file, or a damaged one");
  check(n <= file.size() - 8, where,
        "header length " + std::to_string(n) + " exceeds the file size " + std::to_string(file.size()) +
            ": file truncated or not safetensors");
  check(n >= 2, where, "header too short to be JSON");
  std::string_view text(reinterpret_cast<const char*>(file.data() + 8), n);

  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(where, "header is not valid JSON" + json_error_at(e, text));
  }
  check(j.is_object(), where, "header JSON is not an object");

  SafeTensorsHeader h;
  h.data_start = 8 + n;
  const uint64_t data_size = file.size() - h.data_start;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      check(it.value().is_object(), where, "__metadata__ is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        check(m.value().is_string(), where, "__metadata__ value for '" + m.key() + "' is not a string");
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    h.tensors.push_back(parse_entry(where, it.key(), it.value(), data_size));
  }
  // Tensors may be listed in any order; their byte ranges must not overlap.
  std::sort(h.tensors.begin(), h.tensors.end(),
            [](const SafeTensorInfo& a, const SafeTensorInfo& b) { return a.begin < b.begin || (a.begin == b.begin && a.end < b.end); });
  for (size_t i = 1; i < h.tensors.size(); ++i) {
    const auto& a = h.tensors[i - 1];
    const auto& b = h.tensors[i];
    check(b.begin >= a.end, where, "tensors '" + a.name + "' and '" + b.name + "' overlap in the data section");
  }
  return h;
}

SafeTensorsFile::SafeTensorsFile(const std::string& path) : file_(path) {
  header_ = parse_safetensors_header(file_.bytes(), path);
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_.emplace(header_.tensors[i].name, i);
}

const SafeTensorInfo* SafeTensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

const SafeTensorInfo& SafeTensorsFile::at(std::string_view name) const {
  const SafeTensorInfo* t = find(name);
  if (!t) fail(path(), "no tensor named '" + std::string(name) + "'");
  return *t;
}

std::span<const uint8_t> SafeTensorsFile::data(const SafeTensorInfo& t) const {
  return file_.bytes().subspan(header_.data_start + t.begin, t.end - t.begin);
}

std::vector<float> SafeTensorsFile::to_float(const SafeTensorInfo& t) const {
  check(dtype_is_float(t.dtype), where_tensor(path(), t.name),
        "has dtype " + std::string(dtype_name(t.dtype)) + ", expected a floating-point tensor");
  std::vector<float> out(static_cast<size_t>(t.numel()));
  auto bytes = data(t);
  convert_to_f32(t.dtype, bytes.data(), out.data(), out.size());
  return out;
}

void SafeTensorsWriter::add(std::string name, DType dtype, std::vector<int64_t> shape,
                            std::span<const uint8_t> data) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  check(static_cast<uint64_t>(numel) * dtype_size(dtype) == data.size(), name,
        "data size does not match shape x dtype");
  for (const auto& e : entries_) check(e.name != name, name, "tensor added twice");
  entries_.push_back(Entry{std::move(name), dtype, std::move(shape), data, nullptr});
}

void SafeTensorsWriter::add_owned(std::string name, DType dtype, std::vector<int64_t> shape,
                                  std::vector<uint8_t> data) {
  auto owned = std::make_shared<std::vector<uint8_t>>(std::move(data));
  add(std::move(name), dtype, std::move(shape), std::span<const uint8_t>(*owned));
  entries_.back().owned = std::move(owned);
}

void SafeTensorsWriter::write(const std::string& path) const {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata_) m[k] = v;
    h["__metadata__"] = m;
  }
  uint64_t offset = 0;
  for (const auto& e : entries_) {
    nlohmann::ordered_json t;
    t["dtype"] = std::string(dtype_name(e.dtype));
    t["shape"] = e.shape;
    t["data_offsets"] = {offset, offset + e.data.size()};
    h[e.name] = t;
    offset += e.data.size();
  }
  std::string header = h.dump();
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  while ((header.size() % 8) != 0) header.push_back(' ');
  uint8_t len[8];
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));

  AtomicFileWriter w(path);
  w.write(len, 8);
  w.write(header);
  for (const auto& e : entries_) w.write(e.data);
  w.commit();
}

std::optional<std::string> model_file_in_dir(const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return std::nullopt;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n == "config.json" || n.ends_with(".safetensors") || n == "model.safetensors.index.json") return n;
  }
  return std::nullopt;
}

}  // namespace qlora
