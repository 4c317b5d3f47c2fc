#pragma once
// int8 (LLM.int8) Linear weights in safetensors, in the layout transformers writes for a
// model loaded with BitsAndBytesConfig(load_in_8bit=True) (checked by saving one with
// transformers 5.23 / bitsandbytes 0.50.2, tools/make_int8_fixtures.py):
//   <module>.weight         int8    (out, in)   CB, row-major
//   <module>.SCB            float32 (out)       absmax of each row
//   <module>.weight_format  uint8   ()          0 = "row" (the only layout bnb still reads)
// config.json carries quantization_config {quant_method "bitsandbytes", load_in_8bit true, ...}.
#include <string>

#include "formats/safetensors.h"
#include "quant/int8.h"

namespace qlora {

// "<module>.weight" -> "<module>.SCB" / "<module>.weight_format". REQUIRES the name to end in
// ".weight".
std::string int8_scb_name(const std::string& weight_name);
std::string int8_format_name(const std::string& weight_name);

// True for the names of an 8-bit weight's extra tensors (".SCB", ".weight_format").
bool is_int8_state_part(const std::string& name);

// True when `weight_name` is an int8 tensor with its SCB beside it in `scb_file`.
bool is_int8_in_safetensors(const SafeTensorsFile& f, const std::string& weight_name,
                            const SafeTensorsFile* scb_file = nullptr);

// Reads CB and SCB, checking dtypes, shapes and weight_format (when present: must be 0, "row").
// `scb_file` is where the SCB (and weight_format) lie when a sharded checkpoint put them in
// another shard (default: `f`). Throws Error naming the file and tensor.
Quantized8bit read_int8_from_safetensors(const SafeTensorsFile& f, const std::string& weight_name,
                                         const SafeTensorsFile* scb_file = nullptr);

// Adds the three tensors above for `q` under `weight_name`.
void write_int8_to_safetensors(SafeTensorsWriter& w, const std::string& weight_name, const Quantized8bit& q);

}  // namespace qlora
