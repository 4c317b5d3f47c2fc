#include "train/sft_dataset.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/json_error.h"
#include "base/text_excerpt.h"
#include "formats/tokenizer.h"
#include "train/chat_template.h"

namespace qlora {

namespace {

using ojson = nlohmann::ordered_json;  // keeps the keys of messages in file order for templates

// The prompts of QLoRA's qlora.py (ALPACA_PROMPT_DICT), which are Stanford Alpaca's plus one
// trailing space after "### Response:".
constexpr std::string_view kAlpacaWithInputHead =
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n";
constexpr std::string_view kAlpacaNoInputHead =
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n";
constexpr std::string_view kAlpacaInput = "\n\n### Input:\n";
constexpr std::string_view kAlpacaResponse = "\n\n### Response: ";

// Thrown by the record builders for anything wrong with one record; the loader turns it into
// a DataIssue (skipped) or an Error, as the policy says. Never escapes this file.
struct BadRecord {
  std::string why;
};

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool is_blank(std::string_view s) { return s.find_first_not_of(" \t\r\n") == std::string_view::npos; }

std::string read_file(const std::string& path) {
  std::error_code ec;
  // An ifstream opens a directory without complaint and reads it as empty, which would be
  // reported as "the data file is empty": say what it is instead.
  if (std::filesystem::is_directory(path, ec))
    fail(path, "is a directory, not a data file (give a .json, .jsonl or plain text file)");
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, "cannot open the data file");
  // A regular file whole (the binary checks look at its size: a llama2.c checkpoint given as
  // data is named as one). Anything else (a device, a pipe) a megabyte at a time, stopping after
  // the first one holding a NUL byte: no text or JSON holds one (check_not_binary then says
  // where), and a device such as /dev/zero never ends.
  std::string out;
  if (std::filesystem::is_regular_file(path, ec)) {
    std::stringstream ss;
    ss << f.rdbuf();
    out = ss.str();
  } else {
    std::vector<char> chunk(size_t{1} << 20);
    while (f) {
      f.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
      const size_t n = static_cast<size_t>(f.gcount());
      out.append(chunk.data(), n);
      if (std::memchr(chunk.data(), '\0', n)) break;
    }
  }
  if (f.bad()) fail(path, "cannot read the data file");
  return out;
}

// The little-endian uint32 at b[at..at+4) (the caller checks the bounds).
uint32_t le32(std::string_view b, size_t at) {
  uint32_t v = 0;
  for (size_t i = 4; i-- > 0;) v = v << 8 | static_cast<uint8_t>(b[at + i]);
  return v;
}

// llama2.c checkpoints have no magic number: 7 int32 (dim, hidden_dim, n_layers, n_heads,
// n_kv_heads, vocab_size, seq_len) and then float32 weights. Text never passes this test:
// four printable bytes read as a little-endian int32 are at least 0x20202020, far above
// every bound here. Fills `what` with the sizes the header claims.
bool looks_like_llama2c_checkpoint(std::string_view b, std::string& what) {
  size_t at = 0;
  if (b.size() >= 256 && le32(b, 0) == 0x616b3432u) at = 8;  // export version 1: "ak42", version
  if (b.size() < at + 28 + 4) return false;
  int64_t v[7];
  for (int i = 0; i < 7; ++i) v[i] = static_cast<int32_t>(le32(b, at + 4 * static_cast<size_t>(i)));
  const int64_t dim = v[0], hidden = v[1], layers = v[2], heads = v[3], kv = v[4], vocab = std::abs(v[5]), seq = v[6];
  const bool plausible = dim >= 1 && dim <= (1 << 16) && hidden >= 1 && hidden <= (1 << 20) && layers >= 1 &&
                         layers <= 1024 && heads >= 1 && heads <= dim && dim % heads == 0 && kv >= 1 && kv <= heads &&
                         heads % kv == 0 && vocab >= 1 && vocab <= (1 << 22) && seq >= 1 && seq <= (1 << 24);
  if (!plausible) return false;
  // The embedding alone is vocab x dim floats: a header with room for less is a coincidence.
  if (static_cast<uint64_t>(b.size()) < 28 + 4 * static_cast<uint64_t>(vocab) * static_cast<uint64_t>(dim))
    return false;
  what = "dim " + std::to_string(dim) + ", " + std::to_string(layers) + " layers, vocabulary " + std::to_string(vocab);
  return true;
}

// A llama2.c tokenizer (tokenizer.bin / tok512.bin): int32 max_token_length, then per token
// a float32 score, an int32 length and the bytes. Checks the first few tokens.
bool looks_like_llama2c_tokenizer(std::string_view b) {
  if (b.size() < 4) return false;
  const uint32_t max_len = le32(b, 0);
  if (max_len < 1 || max_len > 1024) return false;
  size_t at = 4;
  for (int i = 0; i < 3; ++i) {
    if (at + 8 > b.size()) return false;
    const uint32_t len = le32(b, at + 4);
    if (len > max_len) return false;
    at += 8 + len;
  }
  return at <= b.size();
}

// What a file that is not text or JSON is, recognised by its leading bytes (or, for
// safetensors and llama2.c files, their structure), with what to do about it; nullopt for
// anything else. Extensions are not trusted: people rename files, and a ".jsonl" that is
// really gzip would otherwise be "trained on" as text.
std::optional<std::string> identify_binary(std::string_view b) {
  auto starts = [&](std::string_view magic) { return b.substr(0, magic.size()) == magic; };
  const std::string model_hint = ", not a dataset (did you swap --model and --data?)";
  if (starts("\x1F\x8B"))
    return "is a gzip-compressed file, not text or JSON: decompress it first (gunzip -k FILE)";
  if (starts("PK\x03\x04") || starts(std::string_view("PK\x05\x06", 4)) || starts("PK\x07\x08"))
    return "is a zip archive (PyTorch .bin/.pt checkpoints are zip archives too), not text or JSON: extract the "
           "dataset from it first";
  if (b.size() >= 4 && starts("BZh") && b[3] >= '1' && b[3] <= '9')
    return "is a bzip2-compressed file, not text or JSON: decompress it first (bunzip2 -k FILE)";
  if (starts(std::string_view("\xFD" "7zXZ\x00", 6)))
    return "is an xz-compressed file, not text or JSON: decompress it first (unxz -k FILE)";
  if (starts("\x28\xB5\x2F\xFD"))
    return "is a zstd-compressed file, not text or JSON: decompress it first (unzstd FILE)";
  if (starts("\x04\x22\x4D\x18"))
    return "is an lz4-compressed file, not text or JSON: decompress it first (unlz4 FILE)";
  if (starts(std::string_view("7z\xBC\xAF\x27\x1C", 6)))
    return "is a 7-Zip archive, not text or JSON: extract the dataset from it first";
  if (b.size() >= 262 && b.substr(257, 5) == "ustar")
    return "is a tar archive, not text or JSON: extract the dataset from it first (tar -xf FILE)";
  if (starts("PAR1"))
    return "is an Apache Parquet file; qlora reads .json, .jsonl or plain text: convert it first, e.g. "
           "pandas.read_parquet(FILE).to_json(\"data.jsonl\", orient=\"records\", lines=True, force_ascii=False)";
  if (starts("ARROW1"))
    return "is an Apache Arrow file; qlora reads .json, .jsonl or plain text: convert it first (e.g. "
           "datasets.Dataset.from_file(FILE).to_json(\"data.jsonl\"))";
  if (starts("\x93NUMPY")) return "is a NumPy array file (.npy), not text or JSON";
  if (b.size() >= 2 && static_cast<uint8_t>(b[0]) == 0x80 && b[1] >= 2 && b[1] <= 5)
    return "is a Python pickle, not text or JSON";
  if (starts("GGUF")) return "is a GGUF model file" + model_hint;
  if (b.size() >= 10) {
    // safetensors: u64 little-endian header length N, then N bytes of JSON starting with '{'.
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = n << 8 | static_cast<uint8_t>(b[static_cast<size_t>(i)]);
    if (n >= 2 && n <= b.size() - 8 && b[8] == '{') return "is a safetensors tensor file" + model_hint;
  }
  if (starts("\xFF\xFE") || starts("\xFE\xFF"))
    return "is UTF-16 text; qlora reads UTF-8: convert it first (iconv -f UTF-16 -t UTF-8 FILE > OUT)";
  std::string sizes;
  if (looks_like_llama2c_checkpoint(b, sizes))
    return "looks like a llama2.c model checkpoint (" + sizes + ")" + model_hint;
  if (looks_like_llama2c_tokenizer(b))
    return "looks like a llama2.c tokenizer file, not a dataset (did you mean --tokenizer?)";
  return std::nullopt;
}

// Refuses, before any parsing, a file that is not text: a known binary format by name, then
// NUL bytes anywhere (JSON cannot hold a raw NUL either). Messages name the file, and the
// line and byte offset of the first NUL.
void check_not_binary(const std::string& path, std::string_view content) {
  if (auto what = identify_binary(content)) fail(path, *what);
  const size_t nul = content.find('\0');
  if (nul != std::string_view::npos) {
    const int64_t line = 1 + std::count(content.begin(), content.begin() + static_cast<std::ptrdiff_t>(nul), '\n');
    fail(path + ":" + std::to_string(line),
         "NUL byte at byte offset " + std::to_string(nul) + ": this is a binary file, not text or JSON (near " +
             excerpt_around(content, nul) + ")");
  }
}

// A plain text dataset must be UTF-8: anything else would be tokenized as byte-fallback
// garbage and trained on. The message names the line, the byte offset and shows the spot.
void check_utf8_text(const std::string& path, std::string_view content) {
  const size_t bad = first_invalid_utf8(content);
  if (bad == std::string_view::npos) return;
  const std::string_view before = content.substr(0, bad);
  const int64_t line = 1 + std::count(before.begin(), before.end(), '\n');
  const size_t nl = before.rfind('\n');
  const size_t col = nl == std::string_view::npos ? bad + 1 : bad - nl;
  fail(path + ":" + std::to_string(line),
       "invalid UTF-8 at byte offset " + std::to_string(bad) + " (column " + std::to_string(col) + "), near " +
           excerpt_around(content, bad) +
           ": qlora reads text as UTF-8; convert the file first (e.g. iconv -f WINDOWS-1252 -t UTF-8 FILE > OUT)");
}

// 1-based line and column of byte `offset` in `text`.
std::pair<int64_t, int64_t> line_col(std::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  const std::string_view before = text.substr(0, offset);
  const int64_t line = 1 + std::count(before.begin(), before.end(), '\n');
  const size_t nl = before.rfind('\n');
  const int64_t col = static_cast<int64_t>(nl == std::string_view::npos ? offset + 1 : offset - nl);
  return {line, col};
}

// "invalid JSON at column C: WHY, near '...'" for a parse error in `text` (one .jsonl line or
// a whole .json file); `column` is counted by the caller, who knows where the line starts.
std::string json_error_message(const nlohmann::json::parse_error& e, std::string_view text, int64_t column) {
  const size_t at = e.byte > 0 ? e.byte - 1 : 0;  // e.byte counts the characters read
  return "invalid JSON at column " + std::to_string(column) + ": " + json_error_reason(e) + ", near " +
         excerpt_around(text, at);
}

// Byte offsets where the elements of the top-level array start. `text` must already have
// parsed as a JSON array (so strings are terminated and brackets balance).
std::vector<size_t> array_element_offsets(std::string_view text) {
  std::vector<size_t> starts;
  int depth = 0;
  bool expect_element = false;  // inside the top-level array, after '[' or ','
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
    if (depth == 1 && expect_element && c != ']') {
      starts.push_back(i);
      expect_element = false;
    }
    if (c == '"') {  // skip the string, escapes included
      for (++i; i < text.size() && text[i] != '"'; ++i)
        if (text[i] == '\\') ++i;
      continue;
    }
    if (c == '[' || c == '{') {
      if (++depth == 1) expect_element = true;
    } else if (c == ']' || c == '}') {
      --depth;
    } else if (c == ',' && depth == 1) {
      expect_element = true;
    }
  }
  return starts;
}

const std::string& string_field(const ojson& rec, const char* key) {
  auto it = rec.find(key);
  if (it == rec.end()) throw BadRecord{std::string("missing \"") + key + "\""};
  if (!it->is_string())
    throw BadRecord{std::string("\"") + key + "\" is " + it->type_name() + ", expected a string"};
  return it->get_ref<const std::string&>();
}

// An optional string field: absent or null reads as "".
std::string optional_string_field(const ojson& rec, const char* key) {
  auto it = rec.find(key);
  if (it == rec.end() || it->is_null()) return "";
  if (!it->is_string())
    throw BadRecord{std::string("\"") + key + "\" is " + it->type_name() + ", expected a string"};
  return it->get<std::string>();
}

DataFormat detect_format(const ojson& rec) {
  if (rec.is_string()) return DataFormat::Text;
  if (!rec.is_object())
    throw BadRecord{std::string("record is ") + rec.type_name() + ", expected a JSON object or a string"};
  if (rec.contains("messages")) return DataFormat::Chat;
  if (rec.contains("instruction") || rec.contains("output")) return DataFormat::Alpaca;
  if (rec.contains("text")) return DataFormat::Text;
  // Keys are input too: each one excerpted, and only the first few listed.
  std::string keys;
  size_t listed = 0;
  for (auto it = rec.begin(); it != rec.end() && listed < 8; ++it, ++listed)
    keys += (keys.empty() ? "" : ", ") + excerpt(it.key(), 40);
  if (rec.size() > listed) keys += ", ... (" + std::to_string(rec.size()) + " keys)";
  throw BadRecord{"record has none of the keys \"text\", \"instruction\"/\"output\" or \"messages\" (its keys: " +
                  (keys.empty() ? std::string("none") : keys) + ")"};
}

// A stretch of the example's text: prompt (context only) or response (trained).
struct Piece {
  std::string text;
  bool response = false;
};

// Turns one JSON record into an Example. Holds what all records of a file share (the parsed
// chat template, built on the first chat record).
class RecordEncoder {
 public:
  RecordEncoder(const std::string& path, const Tokenizer& tok, const DatasetOptions& opt)
      : path_(path), tok_(tok), opt_(opt) {}

  Example encode(const ojson& rec, int64_t line) {
    const DataFormat fmt = opt_.format == DataFormat::Auto ? detect_format(rec) : opt_.format;
    Example ex;
    switch (fmt) {
      case DataFormat::Chat: ex = chat(rec, line); break;
      case DataFormat::Alpaca: ex = alpaca(rec); break;
      default: ex = text(rec); break;
    }
    ex.line = line;
    return ex;
  }

 private:
  Example text(const ojson& rec) const {
    if (rec.is_string()) return assemble({{rec.get<std::string>(), true}}, true, true);
    if (!rec.is_object())
      throw BadRecord{std::string("record is ") + rec.type_name() + ", expected {\"text\": ...} or a string"};
    return assemble({{string_field(rec, "text"), true}}, true, true);
  }

  Example alpaca(const ojson& rec) const {
    if (!rec.is_object())
      throw BadRecord{std::string("record is ") + rec.type_name() +
                      ", expected an object {\"instruction\", \"input\", \"output\"}"};
    const std::string& instruction = string_field(rec, "instruction");
    const std::string input = optional_string_field(rec, "input");
    const std::string& output = string_field(rec, "output");
    std::string prompt(input.empty() ? kAlpacaNoInputHead : kAlpacaWithInputHead);
    prompt += instruction;
    if (!input.empty()) {
      prompt += kAlpacaInput;
      prompt += input;
    }
    prompt += kAlpacaResponse;
    return assemble({{prompt, false}, {output, true}}, true, true);
  }

  Example chat(const ojson& rec, int64_t line) {
    if (!rec.is_object() || !rec.contains("messages"))
      throw BadRecord{"missing \"messages\" (a chat record is {\"messages\": [{\"role\", \"content\"}, ...]})"};
    const ojson& messages = rec["messages"];
    check_messages(messages);
    const train::ChatTemplate& tpl = chat_template(line);
    std::vector<Piece> pieces = chat_pieces(tpl, messages);
    const bool any_response =
        std::any_of(pieces.begin(), pieces.end(), [](const Piece& p) { return p.response; });
    if (!any_response && !opt_.train_on_prompt)
      throw BadRecord{"no assistant message: nothing to train on"};
    // The template renders BOS itself (as text that parse_special turns into the id): no prefix.
    return assemble(pieces, false, false);
  }

  static void check_messages(const ojson& messages) {
    if (!messages.is_array()) throw BadRecord{std::string("\"messages\" is ") + messages.type_name() + ", expected an array"};
    if (messages.empty()) throw BadRecord{"\"messages\" is empty"};
    for (size_t i = 0; i < messages.size(); ++i) {
      const ojson& m = messages[i];
      const std::string which = "message " + std::to_string(i + 1);
      if (!m.is_object()) throw BadRecord{which + " is " + m.type_name() + ", expected {\"role\", \"content\"}"};
      try {
        string_field(m, "role");
        string_field(m, "content");
      } catch (const BadRecord& b) {
        throw BadRecord{which + ": " + b.why};
      }
    }
  }

  std::string render(const train::ChatTemplate& tpl, const ojson& messages, size_t n, bool gen_prompt) const {
    ojson head = ojson::array();
    for (size_t i = 0; i < n; ++i) head.push_back(messages[i]);
    try {
      return tpl.render(head, gen_prompt, bos_, eos_);
    } catch (const Error& e) {
      throw BadRecord{std::string("chat template: ") + e.what()};
    }
  }

  // The rendering cut into prompt and response pieces that concatenate to the full text. The
  // response of assistant message i is what rendering messages[0..i] adds to rendering
  // messages[0..i) with the generation prompt, which is how the model sees a reply begin at
  // inference; everything else (system, user turns, role headers) is prompt.
  std::vector<Piece> chat_pieces(const train::ChatTemplate& tpl, const ojson& messages) const {
    std::vector<Piece> pieces;
    std::string done;  // rendering of the messages consumed so far
    for (size_t i = 0; i < messages.size(); ++i) {
      if (messages[i]["role"].get_ref<const std::string&>() != "assistant") continue;
      const std::string which = "message " + std::to_string(i + 1) + " (assistant)";
      std::string before = render(tpl, messages, i, true);
      std::string with = render(tpl, messages, i + 1, false);
      if (!before.starts_with(done))
        throw BadRecord{"cannot separate prompt from response at " + which +
                        ": the chat template's rendering of the messages before it (with the generation "
                        "prompt) does not extend the rendering up to the previous assistant message"};
      if (!with.starts_with(before))
        throw BadRecord{"cannot separate prompt from response at " + which +
                        ": the chat template's rendering including it does not start with the rendering "
                        "of the messages before it plus the generation prompt"};
      pieces.push_back({before.substr(done.size()), false});
      pieces.push_back({with.substr(before.size()), true});
      done = std::move(with);
    }
    std::string full = render(tpl, messages, messages.size(), false);
    if (!full.starts_with(done))
      throw BadRecord{"cannot separate prompt from response: the chat template's rendering of the whole "
                      "conversation does not start with its rendering up to the last assistant message"};
    pieces.push_back({full.substr(done.size()), false});
    return pieces;
  }

  const train::ChatTemplate& chat_template(int64_t line) {
    if (chat_) return *chat_;
    std::string source = !opt_.chat_template.empty() ? opt_.chat_template : tok_.chat_template();
    // Every chat record needs it, so this is an error for the whole file, whatever the policy.
    if (source.empty())
      fail(path_ + ":" + std::to_string(line),
           "chat records need a chat template and the model's tokenizer (" + tok_.spec().source +
               ") has none; give one with --chat-template FILE");
    if (tok_.bos_id() >= 0) bos_ = tok_.token_text(tok_.bos_id());
    if (tok_.eos_id() >= 0) eos_ = tok_.token_text(tok_.eos_id());
    // Named by where it came from, so that a syntax error says which file (or GGUF key) to fix.
    std::string name;
    if (!opt_.chat_template.empty())
      name = opt_.chat_template_name.empty() ? std::string("--chat-template") : opt_.chat_template_name;
    else
      name = tok_.spec().chat_template_source.empty() ? tok_.spec().source + " chat template"
                                                      : tok_.spec().chat_template_source;
    chat_ = std::make_unique<train::ChatTemplate>(source, name);
    return *chat_;
  }

  // Tokens of the pieces, each tokenized on its own (as QLoRA's and Alpaca's scripts tokenize
  // source and target separately, so a response never shares a token with its prompt). Note:
  // a SentencePiece-style tokenizer (llama2.c, Llama 2) puts its dummy-prefix space in front
  // of every piece, so the response starts with "▁"-prefixed tokens — exactly what those
  // scripts train on with such tokenizers. Byte-level BPE (SmolLM2, Llama 3) adds nothing.
  Example assemble(const std::vector<Piece>& pieces, bool add_prefix, bool add_eos) const {
    Example ex;
    auto push = [&](int32_t id, bool trained) {
      ex.tokens.push_back(id);
      ex.train_mask.push_back(trained || opt_.train_on_prompt ? 1 : 0);
    };
    if (add_prefix)
      for (int32_t id : tok_.spec().prefix_ids) push(id, false);
    const EncodeOptions enc{.add_special_tokens = false, .parse_special = true};
    for (const Piece& p : pieces) {
      if (p.text.empty()) continue;
      for (int32_t id : tok_.encode(p.text, enc)) push(id, p.response);
    }
    if (add_eos && tok_.eos_id() >= 0 && (ex.tokens.empty() || ex.tokens.back() != tok_.eos_id()))
      push(tok_.eos_id(), true);
    if (!ex.train_mask.empty()) ex.train_mask[0] = 0;  // nothing precedes token 0: never a target
    return ex;
  }

  const std::string& path_;
  const Tokenizer& tok_;
  const DatasetOptions& opt_;
  std::unique_ptr<train::ChatTemplate> chat_;
  std::optional<std::string> bos_, eos_;
};

bool has_target(const Example& ex) {
  for (size_t i = 1; i < ex.train_mask.size(); ++i)
    if (ex.train_mask[i]) return true;
  return false;
}

// Reads records, applies the bad-record and too-long policies, collects the result.
class Loader {
 public:
  Loader(const std::string& path, const Tokenizer& tok, const DatasetOptions& opt)
      : path_(path), opt_(opt), encoder_(path, tok, opt) {}

  void record(const ojson& rec, int64_t line) {
    ++out_.n_records;
    Example ex;
    try {
      ex = encoder_.encode(rec, line);
    } catch (const BadRecord& b) {
      bad(line, b.why);
      return;
    }
    add(std::move(ex));
  }

  // A record that is not valid JSON (a .jsonl line).
  void unparsable(int64_t line, const std::string& why) {
    ++out_.n_records;
    bad(line, why);
  }

  // Adds an example, enforcing the length limit.
  void add(Example ex) {
    const auto max_tokens = static_cast<size_t>(opt_.seq_len + 1);
    if (ex.tokens.size() > max_tokens) {
      const std::string why = "record is " + std::to_string(ex.tokens.size()) +
                              " tokens, more than seq_len + 1 = " + std::to_string(max_tokens);
      if (opt_.on_too_long == TooLongPolicy::Error)
        fail(where(ex.line), why + " (--on-too-long error; truncate or skip would go on)");
      if (opt_.on_too_long == TooLongPolicy::Skip) {
        issue(ex.line, why);
        return;
      }
      ex.tokens.resize(max_tokens);
      ex.train_mask.resize(max_tokens);
      ++out_.n_truncated;
      if (!has_target(ex)) {
        issue(ex.line, "no response tokens left after truncation to seq_len + 1 = " + std::to_string(max_tokens) +
                           " tokens (the prompt alone is that long)");
        return;
      }
    }
    out_.examples.push_back(std::move(ex));
  }

  LoadedExamples finish() {
    if (out_.examples.empty()) {
      std::string msg = "no usable records";
      if (!out_.issues.empty())
        msg += ": all " + std::to_string(out_.n_records) + " were skipped (first: " + out_.issues.front().to_string() + ")";
      else
        msg += " (too little text for even one training position)";
      fail(path_, msg);
    }
    return std::move(out_);
  }

  LoadedExamples& out() { return out_; }

 private:
  std::string where(int64_t line) const { return path_ + ":" + std::to_string(line); }

  void bad(int64_t line, const std::string& why) {
    if (opt_.on_bad_record == BadRecordPolicy::Error) fail(where(line), why);
    issue(line, why);
  }

  void issue(int64_t line, std::string why) { out_.issues.push_back(DataIssue{path_, line, std::move(why)}); }

  const std::string& path_;
  const DatasetOptions& opt_;
  RecordEncoder encoder_;
  LoadedExamples out_;
};

void load_jsonl(Loader& loader, const std::string& content) {
  int64_t line_no = 0;
  size_t pos = 0;
  while (pos < content.size()) {
    size_t end = content.find('\n', pos);
    if (end == std::string::npos) end = content.size();
    const std::string_view line(content.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (is_blank(line)) continue;
    ojson rec;
    try {
      rec = ojson::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      loader.unparsable(line_no, json_error_message(e, line, static_cast<int64_t>(e.byte)));
      continue;
    }
    loader.record(rec, line_no);
  }
}

// A .json file must be valid as a whole: after a syntax error there is no reliable way to
// find where the next record starts, so that is an error for the file whatever the policy.
void load_json_array(Loader& loader, const std::string& path, const std::string& content) {
  ojson doc;
  try {
    doc = ojson::parse(content);
  } catch (const nlohmann::json::parse_error& e) {
    const size_t at = e.byte > 0 ? e.byte - 1 : 0;  // e.byte counts the characters read
    const auto [line, col] = line_col(content, at);
    fail(path + ":" + std::to_string(line),
         json_error_message(e, content, col) +
             " (a .json file must be one valid JSON array; use .jsonl to skip bad lines)");
  }
  if (!doc.is_array())
    fail(path, std::string("expected a JSON array of records, found ") + doc.type_name() +
                   " (use .jsonl for one record per line)");
  const std::vector<size_t> starts = array_element_offsets(content);
  check(starts.size() == doc.size(), path, "internal error: cannot locate the records of the JSON array");
  size_t counted = 0;  // newlines are counted incrementally: the offsets increase
  int64_t line = 1;
  for (size_t i = 0; i < doc.size(); ++i) {
    line += std::count(content.begin() + static_cast<std::ptrdiff_t>(counted),
                       content.begin() + static_cast<std::ptrdiff_t>(starts[i]), '\n');
    counted = starts[i];
    loader.record(doc[i], line);
  }
}

// A plain text file: one document (prefix + text + EOS) cut into chunks of seq_len + 1
// tokens overlapping by one, so every token but the first is a target exactly once.
void load_plain_text(Loader& loader, const std::string& path, const Tokenizer& tok, const DatasetOptions& opt,
                     const std::string& content) {
  if (opt.format == DataFormat::Alpaca || opt.format == DataFormat::Chat)
    fail(path, "a plain text file (not .json/.jsonl) holds no alpaca or chat records; use --data-format text or auto");
  check_utf8_text(path, content);
  std::vector<int> tokens(tok.spec().prefix_ids.begin(), tok.spec().prefix_ids.end());
  for (int32_t id : tok.encode(content, EncodeOptions{.add_special_tokens = false, .parse_special = true}))
    tokens.push_back(id);
  if (tok.eos_id() >= 0) tokens.push_back(tok.eos_id());
  loader.out().n_records = 1;
  const auto n = static_cast<int64_t>(tokens.size());
  for (int64_t start = 0; start + 1 < n; start += opt.seq_len) {
    const int64_t end = std::min(n, start + opt.seq_len + 1);
    Example ex;
    ex.tokens.assign(tokens.begin() + start, tokens.begin() + end);
    ex.train_mask.assign(ex.tokens.size(), 1);
    ex.train_mask[0] = 0;
    ex.line = 1;
    loader.add(std::move(ex));
  }
}

}  // namespace

DataFormat data_format_from_string(const std::string& s) {
  if (s == "auto") return DataFormat::Auto;
  if (s == "text") return DataFormat::Text;
  if (s == "alpaca") return DataFormat::Alpaca;
  if (s == "chat") return DataFormat::Chat;
  fail("--data-format", "unknown value " + excerpt(s) + " (expected auto, text, alpaca or chat)");
}

BadRecordPolicy bad_record_policy_from_string(const std::string& s) {
  if (s == "skip") return BadRecordPolicy::Skip;
  if (s == "error") return BadRecordPolicy::Error;
  fail("--on-bad-record", "unknown value " + excerpt(s) + " (expected skip or error)");
}

TooLongPolicy too_long_policy_from_string(const std::string& s) {
  if (s == "truncate") return TooLongPolicy::Truncate;
  if (s == "skip") return TooLongPolicy::Skip;
  if (s == "error") return TooLongPolicy::Error;
  fail("--on-too-long", "unknown value " + excerpt(s) + " (expected truncate, skip or error)");
}

std::string DataIssue::to_string() const { return file + ":" + std::to_string(line) + ": " + why; }

int64_t TrainSequence::n_targets() const {
  return std::count_if(targets.begin(), targets.end(), [](int t) { return t != -100; });
}

LoadedExamples load_examples(const std::string& path, const Tokenizer& tok, const DatasetOptions& opt) {
  check(opt.seq_len >= 1, path, "seq_len must be at least 1");
  const std::string content = read_file(path);
  check_not_binary(path, content);
  if (is_blank(content)) fail(path, "the data file is empty");
  Loader loader(path, tok, opt);
  if (ends_with(path, ".jsonl")) {
    load_jsonl(loader, content);
  } else if (ends_with(path, ".json")) {
    load_json_array(loader, path, content);
  } else {
    load_plain_text(loader, path, tok, opt, content);
  }
  return loader.finish();
}

void split_eval(std::vector<Example>& train, std::vector<Example>& eval, double fraction) {
  if (!(fraction >= 0.0 && fraction < 1.0))
    fail("eval split", "must be in [0, 1), got " + std::to_string(fraction));
  eval.clear();
  if (fraction == 0.0) return;
  const auto n = static_cast<int64_t>(train.size());
  const auto k = static_cast<int64_t>(std::llround(fraction * static_cast<double>(n)));
  if (k == 0 || k == n)
    fail("eval split", std::to_string(fraction) + " of " + std::to_string(n) + " examples leaves " +
                              (k == 0 ? "no eval example" : "no training example"));
  eval.assign(std::make_move_iterator(train.end() - k), std::make_move_iterator(train.end()));
  train.resize(static_cast<size_t>(n - k));
}

namespace {

// Appends one example's positions to `seq`: inputs tokens[0..n-1), targets tokens[1..n) where
// trained, positions 0..n-2.
void append_example(TrainSequence& seq, const Example& ex) {
  const size_t n = ex.tokens.size();
  for (size_t i = 0; i + 1 < n; ++i) {
    seq.inputs.push_back(ex.tokens[i]);
    seq.targets.push_back(ex.train_mask[i + 1] ? ex.tokens[i + 1] : -100);
    seq.positions.push_back(static_cast<int32_t>(i));
  }
}

}  // namespace

std::vector<TrainSequence> build_sequences(const std::vector<Example>& examples, const DatasetOptions& opt) {
  check(opt.seq_len >= 1, "seq_len", "must be at least 1");
  std::vector<TrainSequence> seqs;
  TrainSequence cur;
  cur.n_examples = 0;
  for (const Example& ex : examples) {
    check(ex.train_mask.size() == ex.tokens.size(), "example at line " + std::to_string(ex.line),
          "train_mask and tokens differ in length");
    if (!has_target(ex)) continue;
    const auto positions = static_cast<int64_t>(ex.tokens.size()) - 1;
    if (positions > opt.seq_len)
      fail("example at line " + std::to_string(ex.line),
           std::to_string(ex.tokens.size()) + " tokens, more than seq_len + 1 = " + std::to_string(opt.seq_len + 1) +
               " (load the examples with the same seq_len)");
    const bool fits = static_cast<int64_t>(cur.inputs.size()) + positions <= opt.seq_len;
    if (cur.n_examples > 0 && (!opt.packing || !fits)) {
      seqs.push_back(std::move(cur));
      cur = TrainSequence{};
      cur.n_examples = 0;
    }
    append_example(cur, ex);
    ++cur.n_examples;
  }
  if (cur.n_examples > 0) seqs.push_back(std::move(cur));
  return seqs;
}

DatasetStats dataset_stats(const std::vector<TrainSequence>& seqs) {
  DatasetStats s;
  s.sequences = static_cast<int64_t>(seqs.size());
  for (const TrainSequence& q : seqs) {
    s.examples += q.n_examples;
    s.tokens += static_cast<int64_t>(q.inputs.size());
    s.target_tokens += q.n_targets();
  }
  return s;
}

}  // namespace qlora
