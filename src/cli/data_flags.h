#pragma once
// The dataset flags `qlora train` and `qlora eval` share, and loading a dataset with its
// problems reported the same way in both.
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "train/sft_dataset.h"

namespace qlora {
class Tokenizer;
}

namespace qlora::cli {

struct DataFlags {
  std::string format = "auto";
  bool train_on_prompt = false;
  bool packing = false;
  std::string on_bad_record = "skip";
  std::string on_too_long = "truncate";
  std::string chat_template_file;  // a Jinja file overriding the model's chat template
  int64_t seq_len = 256;
};

// Adds --data-format, --train-on-prompt, --packing, --on-bad-record, --on-too-long,
// --chat-template and --seq-len.
void add_data_flags(CLI::App& app, DataFlags& f);

// The options the flags describe (throws Error naming the flag on a bad value).
DatasetOptions dataset_options(const DataFlags& f);

// Loads `path` and prints (unless quiet) each skipped record as "skipped file:line: why"
// (the first 20, then a count) and a summary line naming `what` ("train", "eval").
LoadedExamples load_dataset_reporting(const std::string& path, const Tokenizer& tok, const DatasetOptions& opt,
                                      bool quiet);

// Prints "<what>: N sequences (M examples), T tokens, K target tokens" unless quiet.
void report_sequences(const char* what, const std::vector<TrainSequence>& seqs, bool quiet);

}  // namespace qlora::cli
