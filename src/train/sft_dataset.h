#pragma once
// Supervised fine-tuning data: the JSON/JSONL record forms people have, turned into
// training sequences with the loss only where the model should learn to answer.
//
// Record forms (--data-format auto picks per record by its keys):
//   text    {"text": "..."} (or a bare JSON string): every token trained.
//   alpaca  {"instruction", "input" (optional, may be ""), "output"}: the prompt is the
//           Alpaca template (the one QLoRA's repo and Stanford Alpaca use, with or without
//           the "### Input:" section), the response is output + EOS.
//   chat    {"messages": [{"role", "content"}, ...]}: rendered with the model's chat
//           template; only the assistant turns are responses.
// A plain text file (not .json/.jsonl) is one document cut into consecutive chunks of
// seq_len + 1 tokens (every token trained), as language-model pretraining does.
//
// Tokens of an example: prompt pieces and response pieces are tokenized separately and
// concatenated (as QLoRA's and Alpaca's training scripts do), BOS once at the start when
// the tokenizer adds one. train_mask[i] says whether token i is a response token, i.e.
// whether predicting token i from tokens < i contributes to the loss (all tokens with
// train_on_prompt). The BOS is never a target.
//
// A sequence for the model: inputs = tokens[0..n-1), targets[i] = tokens[i+1] where
// train_mask[i+1] else -100, positions 0..n-2. Packing concatenates whole examples
// (in order, greedily, never splitting one) into sequences of at most seq_len positions;
// positions restart at 0 at each example, which the training forward uses to keep
// attention inside the example (key j is visible to query t iff t - positions[t] <= j <= t),
// so nothing leaks across example boundaries and each example sees what it would alone.
#include <cstdint>
#include <string>
#include <vector>

namespace qlora {

class Tokenizer;

enum class DataFormat { Auto, Text, Alpaca, Chat };
enum class BadRecordPolicy { Skip, Error };        // malformed JSON / missing fields / bad types
enum class TooLongPolicy { Truncate, Skip, Error };  // more than seq_len + 1 tokens

DataFormat data_format_from_string(const std::string& s);           // auto|text|alpaca|chat
BadRecordPolicy bad_record_policy_from_string(const std::string& s);  // skip|error
TooLongPolicy too_long_policy_from_string(const std::string& s);      // truncate|skip|error

struct DatasetOptions {
  int64_t seq_len = 256;             // positions per training sequence
  DataFormat format = DataFormat::Auto;
  bool train_on_prompt = false;      // false: loss only on response tokens
  bool packing = false;
  BadRecordPolicy on_bad_record = BadRecordPolicy::Skip;
  TooLongPolicy on_too_long = TooLongPolicy::Truncate;  // truncate keeps the first seq_len + 1 tokens
  std::string chat_template;         // Jinja source for chat records ("" = the tokenizer's own)
  std::string chat_template_name;    // where chat_template came from (its file), for errors
};

// Something wrong with one record: reported to the user (and skipped, or thrown as Error
// with the same text when the policy says so).
struct DataIssue {
  std::string file;
  int64_t line = 0;  // 1-based line of the record's start in the file
  std::string why;
  std::string to_string() const;  // "file:line: why"
};

struct Example {
  std::vector<int> tokens;
  std::vector<uint8_t> train_mask;  // same length as tokens
  int64_t line = 0;                 // where the record starts in its file
};

struct TrainSequence {
  std::vector<int> inputs;          // T
  std::vector<int> targets;         // T, -100 = no loss
  std::vector<int32_t> positions;   // T, restarting at 0 at each packed example
  int n_examples = 1;
  int64_t n_targets() const;        // positions with a target != -100
};

struct LoadedExamples {
  std::vector<Example> examples;
  std::vector<DataIssue> issues;    // skipped records (reported)
  int64_t n_records = 0;            // records read (including skipped)
  int64_t n_truncated = 0;
};

// Reads and tokenizes every record of `path`. Throws Error naming the file (and line)
// when it cannot be read, or on the first bad/too-long record when the policy is Error;
// otherwise bad records are skipped and listed in `issues`. Whatever its extension, a file
// that is not text is refused before any parsing: a directory, a known binary format by
// name (gzip, zip, bzip2, xz, zstd, Parquet, safetensors, GGUF, a llama2.c checkpoint, ...),
// or NUL bytes; a plain text file must also be valid UTF-8 (the error names line and offset).
// Errors quote input only as short escaped excerpts (base/text_excerpt.h).
LoadedExamples load_examples(const std::string& path, const Tokenizer& tok, const DatasetOptions& opt);

// Splits off the LAST round(fraction · n) examples as the eval set (a fixed split, so
// results compare from run to run). fraction in [0, 1); Error otherwise or when a
// non-zero fraction leaves either side empty.
void split_eval(std::vector<Example>& train, std::vector<Example>& eval, double fraction);

// Examples → sequences (one per example, or packed). Examples with no target are dropped.
std::vector<TrainSequence> build_sequences(const std::vector<Example>& examples, const DatasetOptions& opt);

struct DatasetStats {
  int64_t sequences = 0, examples = 0, tokens = 0, target_tokens = 0;
};
DatasetStats dataset_stats(const std::vector<TrainSequence>& seqs);

}  // namespace qlora
