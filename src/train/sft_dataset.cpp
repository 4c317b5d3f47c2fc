#include "train/sft_dataset.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "base/error.h"
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
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, "cannot open the data file");
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail(path, "cannot read the data file");
  return ss.str();
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

// nlohmann's parse_error text starts with "[json.exception...] parse error at line L, column C: "
// counted within the string it was given (one line of a .jsonl); keep only the explanation.
std::string json_error_detail(const nlohmann::json::parse_error& e) {
  const std::string w = e.what();
  const size_t p = w.find(": ");
  return p == std::string::npos ? w : w.substr(p + 2);
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
  std::string keys;
  for (auto it = rec.begin(); it != rec.end(); ++it) keys += (keys.empty() ? "\"" : ", \"") + it.key() + "\"";
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
    chat_ = std::make_unique<train::ChatTemplate>(source, opt_.chat_template.empty() ? tok_.spec().source + " chat template"
                                                                                     : std::string("chat template"));
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
      loader.unparsable(line_no, "invalid JSON at column " + std::to_string(e.byte) + ": " + json_error_detail(e));
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
         "invalid JSON at column " + std::to_string(col) + ": " + json_error_detail(e) +
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
  fail("--data-format", "unknown value '" + s + "' (expected auto, text, alpaca or chat)");
}

BadRecordPolicy bad_record_policy_from_string(const std::string& s) {
  if (s == "skip") return BadRecordPolicy::Skip;
  if (s == "error") return BadRecordPolicy::Error;
  fail("--on-bad-record", "unknown value '" + s + "' (expected skip or error)");
}

TooLongPolicy too_long_policy_from_string(const std::string& s) {
  if (s == "truncate") return TooLongPolicy::Truncate;
  if (s == "skip") return TooLongPolicy::Skip;
  if (s == "error") return TooLongPolicy::Error;
  fail("--on-too-long", "unknown value '" + s + "' (expected truncate, skip or error)");
}

std::string DataIssue::to_string() const { return file + ":" + std::to_string(line) + ": " + why; }

int64_t TrainSequence::n_targets() const {
  return std::count_if(targets.begin(), targets.end(), [](int t) { return t != -100; });
}

LoadedExamples load_examples(const std::string& path, const Tokenizer& tok, const DatasetOptions& opt) {
  check(opt.seq_len >= 1, path, "seq_len must be at least 1");
  const std::string content = read_file(path);
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
