#include "cli/data_flags.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "base/error.h"
#include "cli/bool_flags.h"
#include "formats/tokenizer.h"

namespace qlora::cli {

void add_data_flags(CLI::App& app, DataFlags& f) {
  app.add_option("--data-format", f.format,
                 "auto (by each record's keys), text ({\"text\"}), alpaca ({\"instruction\",\"input\",\"output\"}) "
                 "or chat ({\"messages\"})")
      ->capture_default_str();
  add_bool_flag(app, "--train-on-prompt", f.train_on_prompt,
                "Compute the loss on prompt tokens too (default: only on the responses)");
  add_bool_flag(app, "--packing", f.packing,
                "Pack several examples into each sequence (attention and positions stay inside each example)");
  app.add_option("--on-bad-record", f.on_bad_record, "skip (report and go on) or error (stop at the first)")
      ->capture_default_str();
  app.add_option("--on-too-long", f.on_too_long,
                 "Records longer than --seq-len + 1 tokens: truncate, skip (report) or error")
      ->capture_default_str();
  app.add_option("--chat-template", f.chat_template_file, "Jinja file to use instead of the model's chat template");
  app.add_option("--seq-len", f.seq_len, "Tokens per training sequence")->capture_default_str();
}

DatasetOptions dataset_options(const DataFlags& f) {
  DatasetOptions o;
  if (f.seq_len < 2) fail("--seq-len", "must be >= 2");
  o.seq_len = f.seq_len;
  o.format = data_format_from_string(f.format);
  o.train_on_prompt = f.train_on_prompt;
  o.packing = f.packing;
  o.on_bad_record = bad_record_policy_from_string(f.on_bad_record);
  o.on_too_long = too_long_policy_from_string(f.on_too_long);
  if (!f.chat_template_file.empty()) {
    std::error_code ec;
    if (std::filesystem::is_directory(f.chat_template_file, ec))
      fail(f.chat_template_file, "--chat-template: is a directory; give the Jinja template file");
    std::ifstream in(f.chat_template_file, std::ios::binary);
    if (!in) fail(f.chat_template_file, "--chat-template: cannot open the file");
    std::stringstream ss;
    ss << in.rdbuf();
    // An empty template would mean "the model's own" downstream: never silently.
    if (ss.str().empty()) fail(f.chat_template_file, "--chat-template: the file is empty");
    o.chat_template = ss.str();
    o.chat_template_name = f.chat_template_file;
  }
  return o;
}

LoadedExamples load_dataset_reporting(const std::string& path, const Tokenizer& tok, const DatasetOptions& opt,
                                      bool quiet) {
  LoadedExamples d = load_examples(path, tok, opt);
  if (!quiet) {
    const size_t shown = std::min<size_t>(d.issues.size(), 20);
    for (size_t i = 0; i < shown; ++i) std::fprintf(stderr, "skipped %s\n", d.issues[i].to_string().c_str());
    if (d.issues.size() > shown)
      std::fprintf(stderr, "... and %zu more skipped records\n", d.issues.size() - shown);
    std::fprintf(stderr, "data: %s: %lld records, %zu examples, %zu skipped, %lld truncated to %lld tokens\n",
                 path.c_str(), static_cast<long long>(d.n_records), d.examples.size(), d.issues.size(),
                 static_cast<long long>(d.n_truncated), static_cast<long long>(opt.seq_len + 1));
  }
  return d;
}

void report_sequences(const char* what, const std::vector<TrainSequence>& seqs, bool quiet) {
  if (quiet) return;
  const DatasetStats s = dataset_stats(seqs);
  std::fprintf(stderr, "%s: %lld sequences (%lld examples), %lld tokens, %lld target tokens\n", what,
               static_cast<long long>(s.sequences), static_cast<long long>(s.examples),
               static_cast<long long>(s.tokens), static_cast<long long>(s.target_tokens));
}

}  // namespace qlora::cli
