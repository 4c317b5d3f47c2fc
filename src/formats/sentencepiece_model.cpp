#include "formats/sentencepiece_model.h"

#include <cstring>
#include <fstream>
#include <iterator>
#include <string_view>

#include "base/error.h"

namespace qlora {

namespace {

// A protocol-buffer reader over a byte range: varints, fixed32, length-delimited fields.
class Reader {
 public:
  Reader(std::string_view b, const std::string& where) : b_(b), where_(where) {}
  bool done() const { return pos_ >= b_.size(); }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= b_.size()) bad("truncated varint");
      const auto c = static_cast<uint8_t>(b_[pos_++]);
      v |= static_cast<uint64_t>(c & 0x7F) << shift;
      if (!(c & 0x80)) return v;
    }
    bad("varint longer than 10 bytes");
  }
  float fixed32_float() {
    if (pos_ + 4 > b_.size()) bad("truncated fixed32");
    float f;
    std::memcpy(&f, b_.data() + pos_, 4);  // little endian, as this machine
    pos_ += 4;
    return f;
  }
  std::string_view bytes() {
    const uint64_t n = varint();
    if (n > b_.size() - pos_) bad("length-delimited field past the end");
    const std::string_view s = b_.substr(pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return s;
  }
  void skip(uint32_t wire) {
    switch (wire) {
      case 0: varint(); break;
      case 1:
        if (pos_ + 8 > b_.size()) bad("truncated fixed64");
        pos_ += 8;
        break;
      case 2: bytes(); break;
      case 5:
        if (pos_ + 4 > b_.size()) bad("truncated fixed32");
        pos_ += 4;
        break;
      default: bad("unsupported wire type " + std::to_string(wire));
    }
  }
  [[noreturn]] void bad(const std::string& what) const {
    fail(where_, "not a SentencePiece model (" + what + " at byte " + std::to_string(pos_) + ")");
  }

 private:
  std::string_view b_;
  size_t pos_ = 0;
  const std::string& where_;
};

}  // namespace

SentencePieceModel read_sentencepiece_model(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, "cannot open the SentencePiece model");
  const std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  SentencePieceModel m;
  Reader top(data, path);
  while (!top.done()) {
    const uint64_t key = top.varint();
    const auto field = static_cast<uint32_t>(key >> 3), wire = static_cast<uint32_t>(key & 7);
    if (field == 1 && wire == 2) {  // repeated SentencePiece pieces
      Reader r(top.bytes(), path);
      SentencePieceModel::Piece p;
      while (!r.done()) {
        const uint64_t k = r.varint();
        const auto fl = static_cast<uint32_t>(k >> 3), w = static_cast<uint32_t>(k & 7);
        if (fl == 1 && w == 2) p.piece = std::string(r.bytes());
        else if (fl == 2 && w == 5) p.score = r.fixed32_float();
        else if (fl == 3 && w == 0) p.type = static_cast<int32_t>(r.varint());
        else r.skip(w);
      }
      m.pieces.push_back(std::move(p));
    } else if (field == 2 && wire == 2) {  // TrainerSpec
      Reader r(top.bytes(), path);
      while (!r.done()) {
        const uint64_t k = r.varint();
        const auto fl = static_cast<uint32_t>(k >> 3), w = static_cast<uint32_t>(k & 7);
        if (w == 0 && fl == 40) m.unk_id = static_cast<int32_t>(r.varint());
        else if (w == 0 && fl == 41) m.bos_id = static_cast<int32_t>(r.varint());
        else if (w == 0 && fl == 42) m.eos_id = static_cast<int32_t>(r.varint());
        else if (w == 0 && fl == 43) m.pad_id = static_cast<int32_t>(r.varint());
        else if (w == 0 && fl == 35) m.byte_fallback = r.varint() != 0;
        else r.skip(w);
      }
    } else if (field == 3 && wire == 2) {  // NormalizerSpec
      Reader r(top.bytes(), path);
      while (!r.done()) {
        const uint64_t k = r.varint();
        const auto fl = static_cast<uint32_t>(k >> 3), w = static_cast<uint32_t>(k & 7);
        if (fl == 1 && w == 2) m.normalizer_name = std::string(r.bytes());
        else if (fl == 3 && w == 0) m.add_dummy_prefix = r.varint() != 0;
        else r.skip(w);
      }
    } else {
      top.skip(wire);
    }
  }
  if (m.pieces.empty()) fail(path, "not a SentencePiece model (no pieces)");
  return m;
}

}  // namespace qlora
