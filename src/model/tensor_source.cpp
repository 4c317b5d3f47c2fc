#include "model/tensor_source.h"

#include "model/block_row_kernels.h"

#include <algorithm>

#include "base/error.h"

namespace qlora {

bool gguf_type_kept_as_blocks(GgmlType t, GgufBlockTypes which) {
  if (t == GgmlType::Q2_K || t == GgmlType::Q3_K) return true;
  return which == GgufBlockTypes::All && kernels::block_rows_supported(t);
}

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::vector<float> TensorSource::get_slice(const std::string& name, int64_t i) const {
  const std::vector<int64_t> s = shape(name);
  check(!s.empty() && i >= 0 && i < s[0], describe(),
        "tensor '" + name + "' " + shape_to_string(s) + " has no slice " + std::to_string(i));
  const std::vector<float> all = get(name);
  const size_t n = all.size() / static_cast<size_t>(s[0]);
  return std::vector<float>(all.begin() + static_cast<std::ptrdiff_t>(n * static_cast<size_t>(i)),
                            all.begin() + static_cast<std::ptrdiff_t>(n * static_cast<size_t>(i + 1)));
}

void TensorSource::get_rows(const std::string& name, int64_t r0, int64_t r1, float* out) const {
  const std::vector<int64_t> s = shape(name);
  check(s.size() == 2 && 0 <= r0 && r0 <= r1 && r1 <= s[0], describe(),
        "tensor '" + name + "' " + shape_to_string(s) + " has no rows " + std::to_string(r0) + ".." + std::to_string(r1));
  const std::vector<float> all = get(name);
  std::copy(all.begin() + static_cast<std::ptrdiff_t>(r0 * s[1]), all.begin() + static_cast<std::ptrdiff_t>(r1 * s[1]), out);
}

void MemoryTensorSource::add(std::string name, std::vector<int64_t> shape, std::vector<float> data) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  check(n == static_cast<int64_t>(data.size()), description_,
        "tensor '" + name + "' has " + std::to_string(data.size()) + " elements but shape " + shape_to_string(shape));
  for (auto& [k, e] : entries_)
    if (k == name) {
      e = Entry{std::move(shape), std::move(data)};
      return;
    }
  entries_.emplace_back(std::move(name), Entry{std::move(shape), std::move(data)});
}

const MemoryTensorSource::Entry& MemoryTensorSource::find(const std::string& name) const {
  for (auto& [k, e] : entries_)
    if (k == name) return e;
  fail(description_, "no tensor named '" + name + "'");
}

std::vector<std::string> MemoryTensorSource::names() const {
  std::vector<std::string> n;
  for (auto& [k, e] : entries_) n.push_back(k);
  return n;
}

bool MemoryTensorSource::has(const std::string& name) const {
  for (auto& [k, e] : entries_)
    if (k == name) return true;
  return false;
}

std::vector<int64_t> MemoryTensorSource::shape(const std::string& name) const { return find(name).shape; }
std::vector<float> MemoryTensorSource::get(const std::string& name) const { return find(name).data; }

}  // namespace qlora
