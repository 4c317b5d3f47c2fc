// Generated weights of `random:` models (random_model.h).
#include "model/random_model.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "base/error.h"
#include "base/parallel.h"
#include "quant/blockwise.h"

namespace qlora {

namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

// splitmix64's output function: a bijective mix of a 64-bit counter.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001B3ull;
  return h;
}

// A sequential splitmix64 stream.
struct SplitMix {
  uint64_t state;
  uint64_t next() { return mix64(state += kGolden); }
  // Uniform in (0, 1), 53 bits.
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
};

// Marsaglia & Tsang's ziggurat (J. Stat. Software 5(8), 2000) with 128 layers: an exact
// standard normal at ~1 table lookup, one multiply and one compare per sample (Box-Muller's
// log, sqrt and sin/cos made generation of a 65B shape take ~4x longer). Unlike the paper's
// RNOR, the layer index and the value come from different bits of one 64-bit draw.
struct Ziggurat {
  uint32_t kn[128];
  double wn[128], fn[128];
  Ziggurat() {
    const double m1 = 2147483648.0, vn = 9.91256303526217e-3;
    double dn = 3.442619855899, tn = dn;
    const double q = vn / std::exp(-0.5 * dn * dn);
    kn[0] = static_cast<uint32_t>((dn / q) * m1);
    kn[1] = 0;
    wn[0] = q / m1;
    wn[127] = dn / m1;
    fn[0] = 1.0;
    fn[127] = std::exp(-0.5 * dn * dn);
    for (int i = 126; i >= 1; --i) {
      dn = std::sqrt(-2.0 * std::log(vn / dn + std::exp(-0.5 * dn * dn)));
      kn[i + 1] = static_cast<uint32_t>((dn / tn) * m1);
      tn = dn;
      fn[i] = std::exp(-0.5 * dn * dn);
      wn[i] = dn / m1;
    }
  }
  static constexpr double kR = 3.442620;  // where the tail starts

  float sample(SplitMix& g) const {
    while (true) {
      const uint64_t bits = g.next();
      const auto hz = static_cast<int32_t>(static_cast<uint32_t>(bits));
      const auto iz = static_cast<uint32_t>(bits >> 57);  // 7 bits: the layer
      const uint32_t mag = hz < 0 ? static_cast<uint32_t>(-static_cast<int64_t>(hz)) : static_cast<uint32_t>(hz);
      const double x = hz * wn[iz];
      if (mag < kn[iz]) return static_cast<float>(x);  // inside the layer's rectangle (~99%)
      if (iz == 0) {  // the tail beyond kR (Marsaglia's method)
        double tx, ty;
        do {
          tx = -std::log(g.uniform()) / kR;
          ty = -std::log(g.uniform());
        } while (ty + ty < tx * tx);
        return static_cast<float>(hz > 0 ? kR + tx : -kR - tx);
      }
      if (fn[iz] + g.uniform() * (fn[iz - 1] - fn[iz]) < std::exp(-0.5 * x * x)) return static_cast<float>(x);
    }
  }
};

const Ziggurat& ziggurat() {
  static const Ziggurat z;
  return z;
}

// Chunks of kRandomChunk elements per thread at least: each is a few µs of work.
constexpr int64_t kMinChunksPerThread = 4;

// Calls fn(first, len) for every chunk of an n-element tensor, chunks spread over threads.
template <class Fn>
void for_chunks(int64_t n, Fn&& fn) {
  const int64_t chunks = (n + kRandomChunk - 1) / kRandomChunk;
  parallel_for_range(chunks, kMinChunksPerThread, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t first = c * kRandomChunk;
      fn(c, first, std::min(kRandomChunk, n - first));
    }
  });
}

}  // namespace

float random_linear_std(int64_t fan_in) { return 1.0f / std::sqrt(static_cast<float>(std::max<int64_t>(1, fan_in))); }

void random_normal_chunk(uint64_t key, int64_t chunk, int64_t n, float std, float* out) {
  SplitMix g{mix64(key ^ mix64(static_cast<uint64_t>(chunk) + 1))};
  const Ziggurat& z = ziggurat();
  for (int64_t i = 0; i < n; ++i) out[i] = z.sample(g) * std;
}

RandomTensorSource::RandomTensorSource(const ModelSpec& spec, uint64_t seed, std::string describe)
    : seed_(seed), describe_(std::move(describe)) {
  spec.validate(describe_);
  for (const TensorSpec& t : spec.tensors()) {
    Entry e;
    e.shape = t.shape;
    if (t.shape.size() == 2) {
      const bool embedding = t.name == "model.embed_tokens.weight" || t.name == "lm_head.weight";
      e.std = embedding ? kRandomEmbeddingStd : random_linear_std(t.shape[1]);
    } else if (t.name.size() > 5 && t.name.compare(t.name.size() - 5, 5, ".bias") == 0) {
      e.std = kRandomEmbeddingStd;  // (no preset has biases; small if a spec ever does)
    }
    tensors_.emplace(t.name, std::move(e));
  }
}

const RandomTensorSource::Entry& RandomTensorSource::find(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail(describe_, "no tensor named '" + name + "'");
  return it->second;
}

std::vector<std::string> RandomTensorSource::names() const {
  std::vector<std::string> n;
  n.reserve(tensors_.size());
  for (const auto& [name, e] : tensors_) n.push_back(name);
  return n;
}

bool RandomTensorSource::has(const std::string& name) const { return tensors_.count(name) != 0; }

std::vector<int64_t> RandomTensorSource::shape(const std::string& name) const { return find(name).shape; }

uint64_t RandomTensorSource::key(const std::string& name) const { return mix64(fnv1a(name) + mix64(seed_ + kGolden)); }

float RandomTensorSource::std_of(const std::string& name) const { return find(name).std; }

std::vector<float> RandomTensorSource::get(const std::string& name) const {
  const Entry& e = find(name);
  int64_t n = 1;
  for (int64_t d : e.shape) n *= d;
  if (e.std == 0) return std::vector<float>(static_cast<size_t>(n), 1.0f);
  std::vector<float> out(static_cast<size_t>(n));
  const uint64_t k = key(name);
  for_chunks(n, [&](int64_t c, int64_t first, int64_t len) {
    random_normal_chunk(k, c, len, e.std, out.data() + first);
  });
  return out;
}

std::optional<Quantized4bit> RandomTensorSource::generate_4bit(const std::string& name, QuantType type, int blocksize,
                                                               bool double_quant, ComputeDType dtype) const {
  const Entry& e = find(name);
  if (e.shape.size() != 2 || name == "model.embed_tokens.weight" || name == "lm_head.weight") return std::nullopt;
  check_blocksize(blocksize, "generate_4bit");
  const int64_t n = e.shape[0] * e.shape[1];
  std::vector<uint8_t> packed(static_cast<size_t>(packed_4bit_bytes(n)));
  std::vector<float> absmax(static_cast<size_t>(num_blocks(n, blocksize)));
  const uint64_t k = key(name);
  static_assert(kRandomChunk % 4096 == 0, "a chunk must hold whole blocks of every block size");
  for_chunks(n, [&](int64_t c, int64_t first, int64_t len) {
    alignas(64) float buf[kRandomChunk];  // the only float32 copy: one chunk
    random_normal_chunk(k, c, len, e.std, buf);
    // One chunk is too small for quantize_4bit to start threads: it runs on this one.
    quantize_4bit(buf, len, blocksize, type, packed.data() + first / 2, absmax.data() + first / blocksize);
  });
  return make_quantized_4bit(std::move(packed), std::move(absmax), e.shape, type, blocksize, double_quant, dtype);
}

}  // namespace qlora
