#!/usr/bin/env python3
"""Per-family reference fixtures (tests/model/test_families.cpp): a tiny model of each
architecture made by transformers from a random init, and what transformers + PEFT +
bitsandbytes compute with it — implementations nobody here wrote.

    .refenv/bin/python tools/make_family_fixtures.py [FAMILY ...]

Deterministic (fixed seeds, CPU, float32, eager attention): a rerun rewrites the same
bytes. Writes tests/fixtures/families/<family>/:

  config.json, model.safetensors   the model (float32), a Hugging Face directory
  reference.json                   the prompt ids, the greedy continuation (32 tokens, HF
                                   generate with its KV cache), the training batch (ids,
                                   labels), the loss, and the LoRA config
  logits.safetensors               "logits": full logits of the prompt, float32;
                                   "nf4_logits": the same with every Linear inside the blocks
                                   replaced by its bitsandbytes NF4 round trip (blocksize 64),
                                   i.e. which tensors a QLoRA load quantizes;
                                   "peft_logits": PeftModel with initial_adapter/ on the
                                   float32 base
  initial_adapter/                 PEFT save_pretrained: r 4, alpha 8, all-linear, B filled
                                   with seeded N(0, 0.05^2) so A gets gradients too
  default_adapter/                 (DEFAULT_TARGET_FAMILIES) the same on PEFT's default target
                                   modules for the model type; "peft_default_logits" its logits
  bnb4/, bnb8/                     (BNB_FAMILIES) the model as transformers + bitsandbytes save
                                   it pre-quantized: NF4 with double quantization, and
                                   LLM.int8; logits.safetensors gains "bnb4_logits" and
                                   "bnb8_logits", what those quantized models compute
  grads.safetensors                d loss / d (A, B) of that adapter on the batch, float32,
                                   keyed by PEFT's names; reference.json's "curve" is the loss
                                   before each of 10 torch AdamW steps (lr 1e-3) on it
  model.gguf                       (llama, qwen2, qwen3, gemma) the same weights as llama.cpp's
                                   converter lays them out for that architecture (F32; q/k
                                   rows permuted for "llama"), with a 160-token
                                   SentencePiece-style vocabulary; llama.cpp itself
                                   (llama-cpp-python, float32 KV cache) is run on the prompt
                                   here and must give transformers' logits within 1e-3
                                   (1e-2 for gemma: ggml's GELU goes through an fp16
                                   table), which checks the file, not just our reader

The models are made so that a wrong detail shows in the logits: initializer_range 0.2 (peaked
logits), every norm weight and bias drawn at random, and shapes where the family differs
from Llama (head_dim != hidden / heads for Qwen3 and Gemma, a sliding window shorter than
the prompt for Mistral, tied heads where the family ties them; Gemma's (1 + w) norms, scaled
embeddings and tanh-GELU MLP come with the family).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "families"

COMMON = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=160, max_position_embeddings=128, rms_norm_eps=1e-6,
              initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0)

_FALCON_DROP = ("num_key_value_heads", "rms_norm_eps", "intermediate_size")

# family -> (config class name, extra config); each a shape that exercises what is particular to it
# Mixture-of-experts shapes: 4 experts, 2 per token, experts narrower than the dense
# intermediate_size would be (moe_intermediate_size 32) where the family has its own key.
# PEFT 0.21's all-linear on transformers 5's MoE also wraps the router and the fused 3-D
# expert parameters (target_parameters, gate_up_proj at twice the rank) and refuses dropout
# on them: the fixtures' adapters are all-linear with dropout 0, but qwen3_moe's, which
# names the attention only (_targets).
_MOE_ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
# The gated DeltaNet hybrids' fixtures: 3 layers (linear, full, linear), 2 key heads of 16 and
# 4 value heads (two per key head) of 24, a quarter of each attention head rotated, a less
# peaked init (these models amplify rounding far more than the others: test_families.cpp).
_HYBRID = dict(num_hidden_layers=3, head_dim=32, tie_word_embeddings=False, initializer_range=0.1, _curve_f64=True,
               layer_types=["linear_attention", "full_attention", "linear_attention"],
               linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=24,
               rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "partial_rotary_factor": 0.25})
# (as llama.cpp's GGUFs take them: key and value heads of one size)
_HYBRID_GGUF = {**_HYBRID, "linear_value_head_dim": 16}
_HYBRID_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                   _moe=True)
# Gemma 4's dense shape (see "gemma4_text").
_GEMMA4 = dict(num_hidden_layers=4, head_dim=16, global_head_dim=32, hidden_activation="gelu_pytorch_tanh",
               sliding_window=8, final_logit_softcapping=30.0, tie_word_embeddings=True, initializer_range=0.1,
               hidden_size_per_layer_input=0, num_kv_shared_layers=0, enable_moe_block=False,
               layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
               rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                                   "rope_theta": 1000000.0}})
# Llama 4's fixtures: Scout's rotary (llama3 with low = high frequency factor), here over an original
# context of 8; the Linears PEFT's recipes name (its all-linear fails on Llama 4) and the experts.
_LLAMA4_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 16.0, "low_freq_factor": 1.0,
                "high_freq_factor": 1.0, "original_max_position_embeddings": 8}
_LLAMA4_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_LLAMA4_EXPERTS = ["feed_forward.experts.gate_up_proj", "feed_forward.experts.down_proj"]
FAMILIES = {
    # Mixtral: Mistral's block with the router over experts w1/w3/w2, renormalized top 2.
    "mixtral": ("MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2, rope_theta=10000.0,
                                      router_jitter_noise=0.0, tie_word_embeddings=False, _moe=True)),
    # MiniMax-M2 (minimax_m2): q/k RMSNorms over all heads at once (OLMo 2's form), rotate_half rotary on
    # half of each head (rotary_dim), every layer 8 experts (Mixtral's w1/w3/w2) behind a float32 sigmoid
    # router whose choice adds block_sparse_moe.e_score_correction_bias (drawn at random below), top 2
    # renormalized; no shared expert.
    "minimax_m2": ("MiniMaxM2Config", dict(head_dim=16, num_local_experts=8, num_experts_per_tok=2, intermediate_size=32,
                                           rotary_dim=8, tie_word_embeddings=False,
                                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                            "partial_rotary_factor": 0.5},
                                           _moe=True)),
    # IBM Granite MoE (granitemoe: granite-3.0-1b-a400m / 3b-a800m): Granite's four multipliers on
    # Mixtral's router (softmax over the top 2 logits) and experts stored fused (block_sparse_moe
    # input_linear (E, 2F, C), output_linear (E, C, F), router.layer), 4 experts of 32. PEFT 0.21's
    # all-linear adapts its attention only: the adapter names the experts and the router too
    # (target_parameters under transformers' module tree, block_sparse_moe.experts / .router).
    "granitemoe": ("GraniteMoeConfig", dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=32,
                                            rope_theta=10000.0, embedding_multiplier=3.0, attention_multiplier=0.2,
                                            residual_multiplier=0.4, logits_scaling=2.5, tie_word_embeddings=False,
                                            _target_parameters=["block_sparse_moe.experts.gate_up_proj",
                                                                "block_sparse_moe.experts.down_proj",
                                                                "block_sparse_moe.router.weight"],
                                            _moe=True)),
    # Qwen2-MoE: q/k/v biases, 4 experts of 32, top 2 not renormalized, a shared expert of 48
    # behind its sigmoid gate.
    "qwen2_moe": ("Qwen2MoeConfig", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                         shared_expert_intermediate_size=48, norm_topk_prob=False,
                                         rope_theta=10000.0, tie_word_embeddings=False, _moe=True)),
    # Qwen3-MoE: per-head q/k norms, head_dim 16 of hidden 64, renormalized top 2.
    "qwen3_moe": ("Qwen3MoeConfig", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                         norm_topk_prob=True, rope_theta=10000.0, tie_word_embeddings=False,
                                         _moe=True, _targets=_MOE_ATTN)),
    # OLMoE: q/k RMSNorms over all heads, top 2 of 4 not renormalized; as many key/value heads
    # as query heads, as OLMoE-1B-7B has (llama.cpp's olmoe graph knows no other).
    "olmoe": ("OlmoeConfig", dict(num_experts=4, num_experts_per_tok=2, norm_topk_prob=False, rope_theta=10000.0,
                                  num_key_value_heads=4,
                                  tie_word_embeddings=False, _moe=True)),
    # gpt-oss: q/k/v/o biases, attention sinks, windows on alternate layers, yarn; a router
    # with a bias, softmax over the top 2 of 4, experts fused (gate and up interleaved) with
    # biases and a clamped SwiGLU (limit 1.5 here so that the clamps bite). PEFT's all-linear
    # adapts the attention only; the adapter here adds the experts (target_parameters). mxfp4/ holds the same model with its experts in MXFP4, as
    # OpenAI's checkpoints are (loaded by transformers for its reference).
    "gpt_oss": ("GptOssConfig", dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=32, head_dim=16,
                                     sliding_window=8, swiglu_limit=1.5, tie_word_embeddings=False,
                                     # (OpenAI's recipe names the experts: target_parameters)
                                     _target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj",
                                                         "mlp.router.weight"],
                                     rope_parameters={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0,
                                                      "beta_slow": 1.0, "truncate": False,
                                                      "original_max_position_embeddings": 32, "rope_theta": 150000.0},
                                     _moe=True)),
    # The same at gpt-oss's own swiglu_limit 7, which llama.cpp's graph hard-codes, and with yarn's
    # truncate on (ggml's rope always rounds yarn's correction range outwards; gpt-oss's config
    # says false, so llama.cpp runs gpt-oss GGUFs with slightly other frequencies than
    # transformers: measured 4.4 on these logits): for the GGUFs (model.gguf with float experts,
    # model_mxfp4.gguf with llama.cpp's MXFP4 ones).
    "gpt_oss_gguf": ("GptOssConfig", dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=32, head_dim=16,
                                          sliding_window=8, tie_word_embeddings=False,
                                          rope_parameters={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0,
                                                           "beta_slow": 1.0, "truncate": True,
                                                           "original_max_position_embeddings": 32,
                                                           "rope_theta": 150000.0},
                                          _target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj",
                                                              "mlp.router.weight"],
                                          _moe=True)),
    "llama": ("LlamaConfig", dict(rope_theta=10000.0, tie_word_embeddings=False)),
    # Vision-language checkpoints, whose language model qlora runs (text only): the config
    # class is the outer one, the keys here its text_config's; _wrapper has the outer keys
    # (a tiny vision tower) and _text_type text_config's model_type. Their adapters name the
    # language model by a regular expression (PEFT's list or all-linear would also adapt
    # the vision tower, which text-only inputs never reach); vision_adapter/ is all-linear.
    "gemma3": ("Gemma3Config", dict(
        head_dim=32, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=24, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True, initializer_range=0.1,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0}},
        _text_type="gemma3_text", _targets=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        _wrapper=dict(vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=48,
                                         num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14),
                      mm_tokens_per_image=4, image_token_index=159, boi_token_index=157, eoi_token_index=158))),
    # Mistral Small 3.1's form: the head stored and no tie_word_embeddings in the outer config
    # (whose class default is true: transformers unties a head the file holds).
    "mistral3": ("Mistral3Config", dict(
        rope_theta=10000.0, sliding_window=8, tie_word_embeddings=False, _text_type="mistral", _outer_untied_by_file=True,
        _targets=r"model\.language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)",
        _wrapper=dict(vision_config=dict(model_type="pixtral", hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                         num_attention_heads=2, head_dim=16, image_size=28, patch_size=14),
                      image_token_index=159, tie_word_embeddings=False))),
    # Qwen2.5-VL / Qwen3-VL: Qwen2's / Qwen3's language model with the multimodal rotary, which
    # on text is the plain one; Qwen2.5-VL's files name it plain "model.", Qwen3-VL's
    # "model.language_model.".
    "qwen2_5_vl": ("Qwen2_5_VLConfig", dict(
        rope_theta=1000000.0, tie_word_embeddings=False, _text_type="qwen2_5_vl_text",
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        _targets=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        _wrapper=dict(vision_config=dict(depth=1, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                                         patch_size=14, fullatt_block_indexes=[0]),
                      tie_word_embeddings=False))),
    "qwen3_vl": ("Qwen3VLConfig", dict(
        head_dim=16, tie_word_embeddings=False, _text_type="qwen3_vl_text",
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0, "mrope_section": [2, 3, 3],
                         "mrope_interleaved": True},
        _targets=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        _wrapper=dict(vision_config=dict(depth=1, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                                         deepstack_visual_indexes=[0], num_position_embeddings=16, patch_size=4),
                      tie_word_embeddings=False))),
    # Qwen3.5 as the Hub has it (Qwen3_5ForConditionalGeneration): the language model of
    # qwen3_5_text's shape under model.language_model., a tiny vision tower under model.visual.
    "qwen3_5": ("Qwen3_5Config", dict(
        num_hidden_layers=3, head_dim=32, tie_word_embeddings=False, initializer_range=0.1, _text_type="qwen3_5_text",
        _curve_f64=True,
        layer_types=["linear_attention", "full_attention", "linear_attention"],
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=24,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "partial_rotary_factor": 0.25,
                         "mrope_section": [1, 1, 2], "mrope_interleaved": True},
        _targets=(r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|in_proj_qkv|in_proj_z"
                  r"|in_proj_b|in_proj_a|out_proj)"),
        _wrapper=dict(vision_config=dict(depth=1, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                                         num_position_embeddings=16, patch_size=4),
                      tie_word_embeddings=False))),
    # Qwen3.5-MoE as the Hub has it (Qwen3_5MoeForConditionalGeneration): qwen3_5's hybrid with
    # every MLP 4 experts of 32 (top 2, renormalized) and a shared expert of 48 behind its gate,
    # the experts stored fused. The adapter names the language model's Linears (shared expert
    # and its gate included) and, as target_parameters, the experts and the router.
    "qwen3_5_moe": ("Qwen3_5MoeConfig", dict(
        num_hidden_layers=3, head_dim=32, tie_word_embeddings=False, initializer_range=0.1,
        _text_type="qwen3_5_moe_text", _curve_f64=True, _moe=True,
        layer_types=["linear_attention", "full_attention", "linear_attention"],
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=24,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "partial_rotary_factor": 0.25,
                         "mrope_section": [1, 1, 2], "mrope_interleaved": True},
        _drop=("intermediate_size",),
        _targets=(r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|in_proj_qkv|in_proj_z"
                  r"|in_proj_b|in_proj_a|out_proj|shared_expert_gate)"),
        _target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.gate.weight"],
        _wrapper=dict(vision_config=dict(depth=1, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                                         num_position_embeddings=16, patch_size=4),
                      tie_word_embeddings=False))),
    "llava": ("LlavaConfig", dict(
        rope_theta=10000.0, tie_word_embeddings=False, _text_type="llama",
        _targets=r".*language_model.*\.(q_proj|v_proj|down_proj)",
        _wrapper=dict(vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=48,
                                         num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14,
                                         projection_dim=16),
                      image_token_index=159, tie_word_embeddings=False))),
    "llama_bias": ("LlamaConfig", dict(rope_theta=10000.0, attention_bias=True, mlp_bias=True,
                                       tie_word_embeddings=True)),
    "mistral": ("MistralConfig", dict(rope_theta=10000.0, sliding_window=8, tie_word_embeddings=False)),
    # Ministral-8B-2410: a window on chosen layers (layer_types).
    "ministral": ("MinistralConfig", dict(rope_theta=10000.0, sliding_window=8, tie_word_embeddings=False, head_dim=16,
                                          layer_types=["sliding_attention", "full_attention"])),
    # Ministral 3's language model: yarn, and llama 4's attention temperature, here with a period
    # of 8 positions so that the prompt crosses two (the released models' is 16384).
    "ministral3": ("Ministral3Config", dict(head_dim=16, tie_word_embeddings=False,
                                            rope_parameters={"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 16.0,
                                                             "original_max_position_embeddings": 8, "beta_fast": 32.0,
                                                             "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                                                             "llama_4_scaling_beta": 0.5})),
    # ERNIE 4.5: GLM's adjacent-pair rotary, tied head (use_bias off, as released: llama.cpp's ernie4_5 has no MLP biases).
    "ernie4_5": ("Ernie4_5Config", dict(head_dim=16, use_bias=False, tie_word_embeddings=True,
                                        rope_parameters={"rope_type": "default", "rope_theta": 500000.0})),
    # Hunyuan dense: per-head q/k norms after the rotary; "dynamic" rope with a fixed alpha (a
    # stretched base); no attention biases, as released (llama.cpp's hunyuan-dense has none).
    "hunyuan_v1_dense": ("HunYuanDenseV1Config", dict(head_dim=16, attention_bias=False, tie_word_embeddings=False,
                                                      rope_parameters={"rope_type": "dynamic", "alpha": 1000.0,
                                                                       "factor": 1.0, "rope_theta": 10000.0})),
    # Hunyuan-A13B's MoE (hunyuan_v1_moe): the dense model's attention (q/k norms after the dynamic-alpha
    # rotary) with every MLP 4 experts of intermediate_size behind a float32 softmax router (gate.wg, an
    # nn.Linear kept in float32), top 2 renormalized, plus an ungated shared MLP of the same width.
    "hunyuan_v1_moe": ("HunYuanMoEV1Config", dict(head_dim=16, attention_bias=False, tie_word_embeddings=False,
                                                  num_experts=4, moe_topk=2, intermediate_size=32,
                                                  rope_parameters={"rope_type": "dynamic", "alpha": 1000.0,
                                                                   "factor": 1.0, "rope_theta": 10000.0},
                                                  _moe=True)),
    # Llama 4's language model (llama4_text): 4 layers, every second one NoPE (its queries scaled by
    # the attention temperature, here over periods of 8 positions at 0.5 so that the prompt
    # crosses two) and the others rotating on adjacent pairs with llama3 scaling (Scout's
    # low = high frequency factor), chunked attention over 8 positions and weightless q/k norms
    # after the rotary; layers 1 and 3 a mixture of 4 experts (top 2 here: Scout and Maverick
    # route 1) whose sigmoid weights scale their inputs, plus the shared expert, layers 0 and 2 a
    # dense MLP of intermediate_size_mlp. PEFT 0.21's all-linear wraps the router (an nn.Linear
    # subclass returning a tuple) and fails in the forward: the adapter names the Linears, and the
    # experts' fused parameters (target_parameters; experts 24 wide so that gate_up is not square:
    # PEFT takes Llama 4's (E, in, out) for (E, out, in)).
    "llama4_text": ("Llama4TextConfig", dict(num_hidden_layers=4, head_dim=16, intermediate_size=24,
                                             intermediate_size_mlp=96, num_local_experts=4, num_experts_per_tok=2,
                                             interleave_moe_layer_step=2, no_rope_layer_interval=2,
                                             attention_chunk_size=8, floor_scale=8, attn_scale=0.5,
                                             tie_word_embeddings=False,
                                             rope_parameters=_LLAMA4_ROPE,
                                             _targets=_LLAMA4_TARGETS, _target_parameters=_LLAMA4_EXPERTS,
                                             _moe=True)),
    # Llama 4 as released (Llama4ForConditionalGeneration: Scout, Maverick): the language model above
    # under language_model.model. / language_model.lm_head -- its module paths too -- beside a
    # vision tower (vision_model.) and projector. PEFT's all-linear fails on it as above: the
    # vision adapter names the Linears of both parts.
    "llama4": ("Llama4Config", dict(
        num_hidden_layers=4, head_dim=16, intermediate_size=32, intermediate_size_mlp=96, num_local_experts=4,
        num_experts_per_tok=2, interleave_moe_layer_step=2, no_rope_layer_interval=2, attention_chunk_size=8,
        floor_scale=8, attn_scale=0.5, tie_word_embeddings=False, _text_type="llama4_text",
        rope_parameters=_LLAMA4_ROPE,
        _targets=r"language_model\.model\.layers\.\d+\.(self_attn\.[qkvo]_proj|feed_forward\.(shared_expert\.)?(gate|up|down)_proj)",
        _target_parameters=_LLAMA4_EXPERTS,
        _vision_targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "fc1", "fc2"],
        _wrapper=dict(vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                         image_size=28, patch_size=14, vision_output_dim=64, projector_input_dim=64,
                                         projector_output_dim=64, rope_theta=10000),
                      tie_word_embeddings=False))),
    # Llama 4 as llama.cpp's llama4 GGUF carries it (its graph fixes chunks of 8192, the temperature
    # over 8192 positions at 0.1 and NoPE on every fourth layer): Scout's rotary, experts every
    # second layer (Maverick's interleave) routing 1 of 4; model.gguf as its converter writes it.
    "llama4_gguf": ("Llama4TextConfig", dict(num_hidden_layers=4, head_dim=16, intermediate_size=32,
                                             intermediate_size_mlp=96, num_local_experts=4, num_experts_per_tok=1,
                                             interleave_moe_layer_step=2, no_rope_layer_interval=4,
                                             attention_chunk_size=8192, floor_scale=8192, attn_scale=0.1,
                                             tie_word_embeddings=False,
                                             rope_parameters=_LLAMA4_ROPE,
                                             _targets=_LLAMA4_TARGETS, _target_parameters=_LLAMA4_EXPERTS,
                                             _moe=True)),
    # LFM2: short-conv layers (B | C | x from in_proj, C * conv(B * x), 3 taps) around an attention
    # layer with per-head q/k norms; the MLP's width derived from intermediate_size (2/3 of 150,
    # rounded up to a multiple of 32: 128), the final norm named embedding_norm, a tied head.
    "lfm2": ("Lfm2Config", dict(_drop=("rms_norm_eps",), num_hidden_layers=3, intermediate_size=150, block_multiple_of=32,
                                layer_types=["conv", "full_attention", "conv"], conv_L_cache=3, norm_eps=1e-6,
                                tie_word_embeddings=True, initializer_range=0.1,
                                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    # LFM2-VL: lfm2 inside Lfm2VlForConditionalGeneration (model.language_model.*, a SigLIP2 tower and
    # a projector beside it), tied head.
    "lfm2_vl": ("Lfm2VlConfig", dict(_drop=("rms_norm_eps",), num_hidden_layers=3, intermediate_size=150,
                                     block_multiple_of=32, layer_types=["conv", "full_attention", "conv"],
                                     conv_L_cache=3, norm_eps=1e-6, tie_word_embeddings=True, initializer_range=0.1,
                                     rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                                     _text_type="lfm2",
                                     _targets=r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|conv\.(in|out)_proj|feed_forward\.w[123])",
                                     _wrapper=dict(vision_config=dict(model_type="siglip2_vision_model", hidden_size=32,
                                                                      intermediate_size=48, num_hidden_layers=1,
                                                                      num_attention_heads=2, num_patches=16,
                                                                      patch_size=14),
                                                   projector_hidden_size=32, image_token_id=159,
                                                   tie_word_embeddings=True))),
    # LFM2-MoE: LFM2's layers, the first MLP dense (intermediate_size as it is), the others 4
    # experts of 32 behind the sigmoid router with its expert_bias, top 2 renormalized (scale 1,
    # as released: llama.cpp's converter carries no routed_scaling_factor).
    # PEFT 0.21's all-linear adapts the Linears only: the adapter adds the experts and the router
    # (target_parameters under feed_forward).
    "lfm2_moe": ("Lfm2MoeConfig", dict(_drop=("rms_norm_eps",), num_hidden_layers=3, intermediate_size=96,
                                       moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                                       num_dense_layers=1, routed_scaling_factor=1.0,
                                       layer_types=["conv", "full_attention", "conv"], conv_L_cache=3, norm_eps=1e-6,
                                       tie_word_embeddings=True, initializer_range=0.1,
                                       rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                                       _target_parameters=["feed_forward.experts.gate_up_proj",
                                                           "feed_forward.experts.down_proj", "feed_forward.gate.weight"],
                                       _moe=True)),
    # IBM Granite 4.0-H (granitemoehybrid, dense: granite-4.0-h-micro / -h-1b / -h-350m): Mamba2 layers
    # (4 heads of 32 in 2 groups, a state of 8, 4 taps with a bias) around an attention layer without
    # positions ("nope"), Granite's four multipliers, the MLP fused under shared_mlp; chunks of 8
    # tokens so that transformers' chunked scan crosses chunks. A_log, dt_bias and D drawn at
    # random (_ssm_random: their init is 1..H, ones and ones).
    "granitemoehybrid": ("GraniteMoeHybridConfig", dict(num_hidden_layers=3, layer_types=["mamba", "attention", "mamba"],
                                                        num_local_experts=0, num_experts_per_tok=0,
                                                        shared_intermediate_size=96,
                                                        position_embedding_type="nope", mamba_n_heads=4,
                                                        mamba_n_groups=2, mamba_d_state=8, mamba_d_conv=4,
                                                        mamba_expand=2, mamba_chunk_size=8, embedding_multiplier=3.0,
                                                        attention_multiplier=0.2, residual_multiplier=0.4,
                                                        logits_scaling=2.5, tie_word_embeddings=True,
                                                        _ssm_random=True)),
    # Granite 4.0-H with experts (granite-4.0-h-tiny / -h-small's block): granitemoe's router (softmax over
    # the top 2 of 4 logits) and fused experts of 32 beside the shared_mlp (48 wide, ungated); here with
    # the rotary (position_embedding_type "rope", granite-4.0-micro's) so that both position forms meet
    # transformers. PEFT 0.21's all-linear adapts the Linears; the adapter adds the experts and router.
    "granitemoehybrid_moe": ("GraniteMoeHybridConfig", dict(num_hidden_layers=3, layer_types=["mamba", "attention", "mamba"],
                                                            num_local_experts=4, num_experts_per_tok=2, intermediate_size=32,
                                                            shared_intermediate_size=48, position_embedding_type="rope",
                                                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                                            mamba_n_heads=4, mamba_n_groups=1, mamba_d_state=16,
                                                            mamba_d_conv=3, mamba_expand=2, mamba_chunk_size=8,
                                                            embedding_multiplier=3.0, attention_multiplier=0.2,
                                                            residual_multiplier=0.4, logits_scaling=2.5,
                                                            tie_word_embeddings=False, _ssm_random=True,
                                                            _target_parameters=["block_sparse_moe.experts.gate_up_proj",
                                                                                "block_sparse_moe.experts.down_proj",
                                                                                "block_sparse_moe.router.weight"],
                                                            _moe=True)),
    # IBM's Bamba (Bamba-9B): Llama's block with Granite 4.0-H's Mamba2 layers but on attn_layer_indices;
    # the attention rotates half of each head (BambaConfig fixes partial_rotary_factor 0.5); feed_forward /
    # pre_ff_layernorm / final_layernorm. attn_rotary_emb as Bamba-9B's config carries it (llama.cpp's
    # converter reads the rotary width from it).
    "bamba": ("BambaConfig", dict(num_hidden_layers=3, attn_layer_indices=[1], mamba_n_heads=4, mamba_n_groups=2,
                                  mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=8,
                                  attn_rotary_emb=8, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                  tie_word_embeddings=False, _ssm_random=True)),
    # Mamba2 (Mamba2ForCausalLM: Mamba-Codestral): every layer norm -> the Mamba2 mixer (4 heads of 32 in
    # 2 groups, state 8, 4 taps with a bias, chunks of 8) -> residual; no attention, no MLP.
    "mamba2": ("Mamba2Config", dict(_drop=("intermediate_size", "num_attention_heads", "num_key_value_heads",
                                           "max_position_embeddings", "rms_norm_eps"),
                                    num_hidden_layers=3, num_heads=4, head_dim=32, state_size=8, n_groups=2,
                                    conv_kernel=4, expand=2, chunk_size=8, layer_norm_epsilon=1e-6,
                                    tie_word_embeddings=False, _ssm_random=True,
                                    # (PEFT refuses LoRA on a Mamba model's out_proj, so all-linear fails there)
                                    _targets=["in_proj"])),
    # Mamba (1) (the state-spaces models' MambaForCausalLM): norm -> mixer -> residual, 2 layers of 128
    # channels (expand 2), state 8, 4 conv taps with a bias, time_step_rank "auto" (4), the head tied.
    # A_log (channels, state), D and every bias drawn at random (_ssm_random). PEFT refuses out_proj and
    # transformers' mixer bypasses an adapter on dt_proj (it multiplies by dt_proj.weight itself): the
    # adapter names in_proj and x_proj, what qlora's all-linear picks here.
    "mamba": ("MambaConfig", dict(_drop=("intermediate_size", "num_attention_heads", "num_key_value_heads",
                                         "max_position_embeddings", "rms_norm_eps"),
                                  state_size=8, expand=2, conv_kernel=4, layer_norm_epsilon=1e-6,
                                  tie_word_embeddings=True, _ssm_random=True, _targets=["in_proj", "x_proj"])),
    # Falcon-Mamba: the same mixer with weightless RMSNorms on dt, B and C, the head untied as
    # falcon-mamba-7b's; 3 layers. mixer_rms_eps equals the layers' epsilon here because llama.cpp's
    # graph runs those norms with the layers' (its GGUF has no key for it) and the fixture's GGUF must
    # agree with transformers; tests/model/test_hf_config.cpp checks that the key itself is read.
    "falcon_mamba": ("FalconMambaConfig", dict(_drop=("intermediate_size", "num_attention_heads",
                                                      "num_key_value_heads", "max_position_embeddings",
                                                      "rms_norm_eps"),
                                               num_hidden_layers=3, state_size=8, expand=2, conv_kernel=4,
                                               time_step_rank=6, layer_norm_epsilon=1e-5, mixer_rms_eps=1e-5,
                                               tie_word_embeddings=False, _ssm_random=True,
                                               _targets=["in_proj", "x_proj"],
                                               # (dt_proj's adapter: live only in the quantized model's path)
                                               _bnb4_adapter_targets=["in_proj", "x_proj", "dt_proj"])),
    # AI21's Jamba: 4 layers -- Mamba (128 channels, state 8, dt rank 4, dt / B / C norms with weights),
    # Mamba with experts, attention without positions (4 heads, 2 key/value heads), Mamba with experts
    # (attn_layer_period 4 offset 2, expert_layer_period 2 offset 1; 4 experts of 32, top 2 not
    # renormalized; the MLPs narrow to keep the files small). The adapter names the Linears PEFT's all-linear picks here but dt_proj (transformers'
    # unquantized mixer multiplies by its weight, bypassing an adapter): qlora's all-linear on this model.
    "jamba": ("JambaConfig", dict(num_hidden_layers=4, intermediate_size=32, num_experts=4, num_experts_per_tok=2, expert_layer_period=2,
                                  expert_layer_offset=1, attn_layer_period=4, attn_layer_offset=2, mamba_d_state=8,
                                  mamba_d_conv=4, mamba_expand=2, mamba_dt_rank="auto", use_mamba_kernels=False,
                                  tie_word_embeddings=False, _ssm_random=True, _moe=True,
                                  _targets=["q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "x_proj", "out_proj",
                                            "gate_proj", "up_proj", "down_proj"])),
    # NVIDIA Nemotron-H (Nemotron Nano 2's block): each layer norm -> one branch -> residual, the branch a
    # Mamba2 mixer (4 heads of 24 in 2 groups: an inner width of heads x head size, not expand x hidden;
    # state 8, 4 taps with a bias, chunks of 8), attention without positions (4 heads of 16, 2 key/value
    # heads) or a relu^2 MLP; the pattern M-*-M. PEFT refuses LoRA on the mixer's out_proj, so
    # all-linear fails there: the adapter names the other Linears.
    "nemotron_h": ("NemotronHConfig", dict(_drop=("rms_norm_eps", "num_hidden_layers", "rope_theta"),
                                           layers_block_type=["mamba", "mlp", "attention", "mlp", "mamba"],
                                           mamba_num_heads=4, mamba_head_dim=24, n_groups=2, ssm_state_size=8,
                                           conv_kernel=4, chunk_size=8, head_dim=16, layer_norm_epsilon=1e-6,
                                           mlp_hidden_act="relu2", tie_word_embeddings=False, _ssm_random=True,
                                           _targets=["in_proj", "q_proj", "k_proj", "v_proj", "o_proj", "up_proj",
                                                     "down_proj"])),
    # Nemotron 3 (Nano 30B-A3B's form): Mamba2 and attention layers around MoE layers -- DeepSeek-V3's
    # sigmoid router (2 groups of 4, the best group competing, routed_scaling_factor), ungated relu^2
    # experts (experts.up_proj / down_proj) and a shared expert of 48. The adapter names the Linears
    # (the shared experts' up/down among them: PEFT's module names reach no routed expert) and, as
    # target_parameters, the experts and the router.
    "nemotron_h_moe": ("NemotronHConfig", dict(_drop=("rms_norm_eps", "num_hidden_layers", "rope_theta"),
                                               layers_block_type=["mamba", "moe", "attention", "mamba", "moe"],
                                               mamba_num_heads=4, mamba_head_dim=24, n_groups=2, ssm_state_size=8,
                                               conv_kernel=4, chunk_size=8, head_dim=16, layer_norm_epsilon=1e-6,
                                               mlp_hidden_act="relu2", tie_word_embeddings=False, _ssm_random=True,
                                               n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                               moe_shared_expert_intermediate_size=48, n_group=2, topk_group=1,
                                               routed_scaling_factor=2.5, norm_topk_prob=True, _moe=True,
                                               _targets=["in_proj", "q_proj", "k_proj", "v_proj", "o_proj", "up_proj",
                                                         "down_proj"],
                                               _target_parameters=["experts.up_proj", "experts.down_proj",
                                                                   "gate.weight"])),
    # Apertus: q/k norms, an ungated up -> xIELU -> down MLP (its four parameters per layer drawn at
    # random below, so that each layer's differ), ApertusConfig's default llama3 rotary (theta 12e6,
    # factor 8 over 8192) with heads of 16.
    "apertus": ("ApertusConfig", dict(_drop=("rope_theta",), head_dim=16, tie_word_embeddings=False,
                                      rope_parameters=dict(rope_type="llama3", rope_theta=12000000.0, factor=8.0,
                                                           original_max_position_embeddings=8192,
                                                           low_freq_factor=1.0, high_freq_factor=4.0))),
    "qwen2": ("Qwen2Config", dict(rope_theta=10000.0, tie_word_embeddings=True)),
    # Qwen's per-layer sliding window: layers from max_window_layers on slide (here layer 1,
    # with a window shorter than the prompt).
    "qwen2_swa": ("Qwen2Config", dict(rope_theta=10000.0, use_sliding_window=True, sliding_window=8,
                                      max_window_layers=1, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(rope_theta=1000000.0, head_dim=32, tie_word_embeddings=True)),
    # Qwen3.5's language model: gated DeltaNet layers around a gated-attention layer; key and
    # value heads of different sizes, two value heads per key head, the default quarter of
    # each attention head rotated.
    "qwen3_5_text": ("Qwen3_5TextConfig", dict(**_HYBRID, linear_conv_kernel_dim=4)),
    # Qwen3.5-MoE's language model as llama.cpp's qwen35moe GGUF can hold it (heads of one size,
    # every second layer attending); model.gguf as its converter writes it.
    "qwen3_5_moe_gguf": ("Qwen3_5MoeTextConfig", dict(**_HYBRID_GGUF, **_HYBRID_MOE, _drop=("intermediate_size",))),
    # Qwen3-Next: the hybrid with its DeltaNet projections fused per key head (in_proj_qkvz,
    # in_proj_ba), 4 experts of 32 (top 2, norm_topk_prob) and a shared expert of 48.
    "qwen3_next": ("Qwen3NextConfig", dict(**_HYBRID, **_HYBRID_MOE, norm_topk_prob=True)),
    # Qwen3-Next as llama.cpp's qwen3next GGUF can hold it (heads of one size, every second layer
    # attending); model.gguf as its converter writes it (in_proj_qkvz split into attn_qkv and
    # attn_gate, in_proj_ba as ssm_ba, the value heads left grouped).
    "qwen3_next_gguf": ("Qwen3NextConfig", dict(**_HYBRID_GGUF, **_HYBRID_MOE, norm_topk_prob=True)),
    # The same as llama.cpp's qwen35 GGUF can hold it (key and value heads of one size; every
    # second layer attending: full_attention_interval 2); model.gguf as its converter writes it.
    "qwen3_5_gguf": ("Qwen3_5TextConfig", dict(**_HYBRID_GGUF, linear_conv_kernel_dim=4)),
    # Rotary scalings (transformers' modeling_rope_utils): the original context is 32 so
    # that the prompt's positions and every frequency band are in play.
    "llama_rope_llama3": ("LlamaConfig", dict(rope_parameters=dict(
        rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=32), tie_word_embeddings=False)),
    # Dynamic NTK: a trained context of 16 that the prompt (20) and the greedy run (36)
    # pass, so the base grows per forward (factor 4: runs to 64).
    "llama_rope_dynamic": ("LlamaConfig", dict(max_position_embeddings=16, rope_parameters=dict(
        rope_type="dynamic", rope_theta=10000.0, factor=4.0), tie_word_embeddings=False)),
    "llama_rope_linear": ("LlamaConfig", dict(rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0),
                                              tie_word_embeddings=False)),
    "qwen2_rope_yarn": ("Qwen2Config", dict(rope_parameters=dict(
        rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32),
        tie_word_embeddings=True)),
    # Gemma 2: a window shorter than the prompt on layer 0 (layers alternate), soft caps
    # small enough to bend these models' scores and logits. (query_pre_attn_scalar =
    # head_dim, as llama.cpp assumes for a GGUF; gemma3_text's differs.)
    "gemma2": ("Gemma2Config", dict(rope_theta=10000.0, head_dim=32, hidden_activation="gelu_pytorch_tanh",
                                    query_pre_attn_scalar=32, sliding_window=8, attn_logit_softcapping=5.0,
                                    final_logit_softcapping=10.0, tie_word_embeddings=True,
                                    initializer_range=0.1)),  # 0.2 makes its greedy text one repeated token
    # Gemma 3 text: per-head (1 + w) q/k norms, a local rotary on the sliding layer and a
    # linearly scaled global one on the full layer.
    "gemma3_text": ("Gemma3TextConfig", dict(
        head_dim=32, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=24, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True, initializer_range=0.1,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0}})),
    # The same with query_pre_attn_scalar = head_dim, which is all a GGUF can carry: for the
    # gemma3 GGUF (llama.cpp assumes the head size).
    "gemma3_text_gguf": ("Gemma3TextConfig", dict(
        head_dim=32, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=32, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True, initializer_range=0.1,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0}})),
    "gemma": ("GemmaConfig", dict(rope_theta=10000.0, head_dim=32, hidden_act="gelu_pytorch_tanh",
                                  tie_word_embeddings=True)),
    # Gemma 4's dense text model: layers sliding (head 16, window 8) and full (head 32, one
    # key/value head whose values are the key projection: attention_k_eq_v), the full layers'
    # proportional rotary over a quarter of the head, v_norm, unscaled scores, layer_scalar
    # (drawn at random below), a final soft cap. No per-layer embeddings, shared KV or MoE.
    "gemma4_text": ("Gemma4TextConfig", dict(_GEMMA4, attention_k_eq_v=True, num_global_key_value_heads=1)),
    # Gemma 4's MoE block (26B-A4B's form): beside each layer's dense MLP, 4 experts of 32 (top 2)
    # behind a router with its own norm and scales (router.scale and per_expert_scale drawn at
    # random below). PEFT's all-linear adapts the router (an nn.Linear), not the experts.
    "gemma4_moe": ("Gemma4TextConfig", dict(_GEMMA4, attention_k_eq_v=True, num_global_key_value_heads=1,
                                            enable_moe_block=True, num_experts=4, top_k_experts=2,
                                            moe_intermediate_size=32, _moe=True)),
    # Gemma 4 E2B / E4B's form: per-layer inputs (8 values per layer per token), the last 2 of 6
    # layers attending over the keys and values of the last earlier layer of their type (layers 2
    # and 3) with MLPs twice as wide; no k_eq_v (the full layers keep v_proj).
    "gemma4_e": ("Gemma4TextConfig", dict(
        _GEMMA4, num_hidden_layers=6, attention_k_eq_v=False, hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=160, num_kv_shared_layers=2, use_double_wide_mlp=True,
        layer_types=["sliding_attention", "full_attention"] * 3, _curve_f64=True)),
    # Gemma 4 as the Hub has it (Gemma4ForConditionalGeneration): the language model under
    # model.language_model. (here without k_eq_v: the full layers keep v_proj and the sliding
    # layers' key/value heads), a tiny vision tower under model.vision_tower / embed_vision.
    "gemma4": ("Gemma4Config", dict(
        _GEMMA4, attention_k_eq_v=False, _text_type="gemma4_text",
        _targets=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        _wrapper=dict(vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=2, head_dim=16, position_embedding_size=64, patch_size=4,
                                         pooling_kernel_size=2),
                      audio_config=None, tie_word_embeddings=True))),
    # GLM-4.5's block (glm4_moe): q/k/v biases, per-head q/k norms, rotate_half rotary on half of
    # each head; layer 0 a dense SwiGLU MLP, layers 1-2 8 experts of 32 in 2 groups (the best
    # group's top 2, DeepSeek-V3's sigmoid router with its score bias drawn at random below,
    # renormalized, times 2.5) plus one shared expert, ungated.
    "glm4_moe": ("Glm4MoeConfig", dict(num_hidden_layers=3, head_dim=16, attention_bias=True, use_qk_norm=True,
                                       n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
                                       moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1,
                                       routed_scaling_factor=2.5, norm_topk_prob=True, tie_word_embeddings=False,
                                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                        "partial_rotary_factor": 0.5},
                                       _moe=True)),
    # ERNIE 4.5's MoE block (ernie4_5_moe, ERNIE-4.5-21B-A3B's form): adjacent-pair rotary, layer 0
    # dense, layers 1-2 eight experts of 32 (top 2 of the softmax plus a score bias drawn at random
    # below, renormalized) and a shared expert, ungated.
    "ernie4_5_moe": ("Ernie4_5_MoeConfig", dict(num_hidden_layers=3, head_dim=16, use_bias=False, tie_word_embeddings=True,
                                               moe_num_experts=8, moe_k=2, moe_intermediate_size=32,
                                               moe_num_shared_experts=1, moe_layer_start_index=1,
                                               rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                                               _moe=True)),
    # DeepSeek-V3's block (deepseek_v3; Kimi K2's too): multi-head latent attention -- q through a
    # rank-24 latent with its RMSNorm (q_a_proj, q_a_layernorm, q_b_proj), keys and values from a
    # rank-16 latent (kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj) plus an 8-dim rotary key shared
    # by the 4 heads, query/key heads of 12 + 8, value heads of 16, adjacent-pair rotary
    # (rope_interleave), yarn whose mscale_all_dim scales the softmax; layer 0 dense, layers 1-2 the
    # sigmoid router of GLM-4.5 (8 experts in 2 groups, score bias drawn below, x 2.5) plus a shared
    # expert.
    "deepseek_v3": ("DeepseekV3Config", dict(num_hidden_layers=3, num_key_value_heads=4, q_lora_rank=24, kv_lora_rank=16,
                                             qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=16,
                                             n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
                                             moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1,
                                             routed_scaling_factor=2.5, norm_topk_prob=True, tie_word_embeddings=False,
                                             rope_interleave=True,
                                             rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                              "original_max_position_embeddings": 32, "mscale": 1.0,
                                                              "mscale_all_dim": 1.0, "beta_fast": 32.0, "beta_slow": 1.0},
                                             _moe=True)),
    # rednote's dots.llm1 (dots1): Qwen3's attention (per-head q/k norms; as many key/value heads as
    # heads and no biases, as the released model and llama.cpp's dots1, which takes no other) with
    # DeepSeek-V3's MoE: layer 0 dense, layers 1-2 eight experts behind the sigmoid router (score bias
    # drawn below, top 2 of all, not renormalized, x 2.0) plus a shared expert.
    "dots1": ("Dots1Config", dict(num_hidden_layers=3, head_dim=16, num_key_value_heads=4, attention_bias=False, n_routed_experts=8,
                                  num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
                                  first_k_dense_replace=1, routed_scaling_factor=2.0, norm_topk_prob=False,
                                  sliding_window=None, tie_word_embeddings=False,
                                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, _moe=True)),
    # DeepSeek-V2-Lite's form (deepseek_v2): the same latent attention without the query latent
    # (q_lora_rank null: one q_proj), complex (adjacent-pair) rotary; layer 0 dense, layers 1-2
    # eight experts behind a float32 softmax router limited to the best group by its best expert
    # (group_limited_greedy, 2 groups, 1 kept), weights not renormalized, x 2.0, two shared experts.
    "deepseek_v2": ("DeepseekV2Config", dict(num_hidden_layers=3, num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=16,
                                             qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=16,
                                             n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
                                             topk_method="group_limited_greedy", moe_intermediate_size=32,
                                             n_shared_experts=2, first_k_dense_replace=1, routed_scaling_factor=2.0,
                                             tie_word_embeddings=False,
                                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                             _moe=True)),
    # Seed-OSS: q/k/v biases without o's, heads of 16 (not hidden / heads), untied head; its
    # attention and residual dropouts 0 (transformers applies them in training).
    "seed_oss": ("SeedOssConfig", dict(head_dim=16, num_attention_heads=8, attention_bias=True, attention_out_bias=False,
                                       attention_dropout=0.0, residual_dropout=0.0, tie_word_embeddings=False,
                                       rope_parameters={"rope_type": "default", "rope_theta": 10000000.0})),
    # Phi-3: fused qkv_proj and gate_up_proj (PEFT adapts the fused modules), a sliding
    # window shorter than the prompt, untied head.
    "phi3": ("Phi3Config", dict(rope_theta=10000.0, sliding_window=8, tie_word_embeddings=False)),
    # Phi-4-mini's shape: partial rotary (0.75 of each head) and LongRope with an original
    # context of 16, so the prompt (20) runs on the long factors and greedy decoding starts
    # on the short ones and crosses over (transformers picks per forward by its length).
    "phi4_mini": ("Phi3Config", dict(
        original_max_position_embeddings=16, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.75,
                             short_factor=[1.0, 1.1, 1.3, 1.6, 2.0, 2.5],
                             long_factor=[1.0, 1.5, 2.5, 4.0, 6.0, 9.0]))),
    # Phi-1/1.5/2: one LayerNorm feeding attention and the MLP in parallel, separate q/k/v
    # and "dense" with biases, Phi-2's partial rotary 0.4 (6 of 16 dims: a count that is not a
    # power of two), fc1 / gelu_new / fc2, final_layernorm, an untied head with a bias.
    "phi": ("PhiConfig", dict(_drop=("num_key_value_heads", "rms_norm_eps"), layer_norm_eps=1e-5,
                              rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                   partial_rotary_factor=0.4),
                              resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, tie_word_embeddings=False)),
    # GPT-J: one LayerNorm feeding parallel attention and MLP, rotary on 6 of each head's 16
    # dims in adjacent pairs (rotate_every_two), no attention biases, fc_in / gelu_new / fc_out
    # with biases, an untied head with a bias; gpt2's key names.
    "gptj": ("GPTJConfig", dict(_drop=("num_key_value_heads", "rms_norm_eps", "hidden_size", "intermediate_size",
                                       "num_hidden_layers", "num_attention_heads", "max_position_embeddings"),
                                n_embd=64, n_layer=2, n_head=4, n_inner=96, n_positions=128, rotary_dim=6,
                                layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                initializer_range=0.3, tie_word_embeddings=False)),
    # Cohere (Command R, Aya): one bias-free LayerNorm feeding parallel attention and SwiGLU,
    # rotary in adjacent pairs, logits x logit_scale (0.3: not a power of two), tied head, GQA.
    "cohere": ("CohereConfig", dict(_drop=("rms_norm_eps",), layer_norm_eps=1e-5, logit_scale=0.3,
                                    use_qk_norm=False, rope_theta=10000.0, tie_word_embeddings=True)),
    # Command R+: the same with a LayerNorm per head of q and of k, each head its own weights
    # (drawn at random below, as every norm weight is). No GGUF: llama.cpp's command-r reads q/k
    # norms on 64-layer models only.
    "cohere_qk": ("CohereConfig", dict(_drop=("rms_norm_eps",), layer_norm_eps=1e-5, logit_scale=0.3,
                                       use_qk_norm=True, rope_theta=10000.0, tie_word_embeddings=True)),
    # SmolLM3: Llama with every fourth layer NoPE (4 layers: the last one skips rotary), tied;
    # and explicit no_rope_layers with a sliding window on the NoPE layer (layer_types derived).
    "smollm3": ("SmolLM3Config", dict(num_hidden_layers=4, rope_theta=10000.0, tie_word_embeddings=True)),
    "smollm3_swa": ("SmolLM3Config", dict(rope_theta=10000.0, no_rope_layers=[0, 1], use_sliding_window=True,
                                          sliding_window=8, tie_word_embeddings=True)),
    # Cohere 2 (Command R7B): the cohere block with windows (8, shorter than the prompt) on
    # three layers of four and rotary on those only (4 layers: the last is full and NoPE).
    "cohere2": ("Cohere2Config", dict(_drop=("rms_norm_eps",), num_hidden_layers=4, layer_norm_eps=1e-5,
                                      logit_scale=0.3, sliding_window=8, rope_theta=10000.0,
                                      tie_word_embeddings=True)),
    # Arcee (AFM-4.5B): Llama's attention with an up / relu^2 / down MLP (no gate).
    "arcee": ("ArceeConfig", dict(hidden_act="relu2", rope_theta=10000.0, tie_word_embeddings=False)),
    # Nemotron (Minitron): LayerNorm1P ((1 + w) with biases), up / relu^2 / down, partial rotary
    # (NemotronConfig's default 0.5), untied head.
    "nemotron": ("NemotronConfig", dict(_drop=("rms_norm_eps",), norm_eps=1e-5, rope_theta=10000.0,
                                        tie_word_embeddings=False)),
    # OLMo: LayerNorms without weights or biases, and q/k/v clamped (clip_qkv 1: it binds here).
    "olmo": ("OlmoConfig", dict(_drop=("rms_norm_eps",), clip_qkv=1.0, rope_theta=10000.0, tie_word_embeddings=False)),
    # OLMo 3: OLMo 2's block with windows on three layers of four (window 8 < the prompt) and
    # a rotary per layer type: yarn on the full-attention layer, none on the sliding ones (one
    # base for both, as the releases have: llama.cpp's olmo2 graph ignores rope.freq_base_swa).
    "olmo3": ("Olmo3Config", dict(num_hidden_layers=4, sliding_window=8, tie_word_embeddings=False,
                                  rope_parameters={"full_attention": {"rope_type": "yarn", "rope_theta": 10000.0,
                                                                      "factor": 2.0,
                                                                      "original_max_position_embeddings": 64},
                                                   "sliding_attention": {"rope_type": "default",
                                                                         "rope_theta": 10000.0}})),
    # EXAONE 4.0: OLMo 2's post-norm block with per-head q/k norms (head_dim 32 of hidden 64), windows
    # on three layers of four (window 8 < the prompt) with rotary on those only (the full layer is NoPE).
    "exaone4": ("Exaone4Config", dict(num_hidden_layers=4, head_dim=32, sliding_window=8, sliding_window_pattern=4,
                                      rope_theta=10000.0, tie_word_embeddings=False)),
    # ... and without a window (EXAONE 4.0 1.2B's form): every layer full and rotating, what
    # llama.cpp's exaone4 runs for any size but the 64-layer one (the GGUF fixture).
    "exaone4_nowin": ("Exaone4Config", dict(sliding_window=None,
                                            layer_types=["full_attention", "full_attention"],
                                            rope_theta=10000.0, tie_word_embeddings=False)),
    # GLM-4: sandwich norms under GLM's names, q/k/v biases, fused gate_up_proj, rotary on half of
    # each head (the config's default) in adjacent pairs, GQA.
    "glm4": ("Glm4Config", dict(head_dim=16, rope_theta=10000.0, tie_word_embeddings=False)),
    # OLMo 2: no pre-norms, post-branch RMSNorms, RMSNorms over all of q and of k, GQA.
    "olmo2": ("Olmo2Config", dict(rope_theta=10000.0, tie_word_embeddings=False)),
    # Granite: Llama's block with its four multipliers, each far from 1 so that a missing or
    # misplaced one shows (embeddings x 3, scores x 0.2 instead of 1/sqrt(16), branches x 0.4,
    # logits / 2.5); untied head.
    "granite": ("GraniteConfig", dict(rope_theta=10000.0, embedding_multiplier=3.0, attention_multiplier=0.2,
                                      residual_multiplier=0.4, logits_scaling=2.5, tie_word_embeddings=False)),
    # StableLM: Llama's SwiGLU MLP and GQA with LayerNorms (biases), q/k/v biases
    # (use_qkv_bias, StableLM 2 1.6B), partial rotary (StableLmConfig's default 0.25: 4 of 16
    # dims), the sequential block; and the parallel block with one norm, without q/k/v biases,
    # half of each head rotated, untied head in both.
    "stablelm": ("StableLmConfig", dict(_drop=("rms_norm_eps",), layer_norm_eps=1e-5, use_qkv_bias=True,
                                        hidden_dropout=0.0, attention_dropout=0.0, tie_word_embeddings=False)),
    # StableLM 2 12B's form: the parallel block with a bias-free LayerNorm per head of q and k.
    "stablelm_qk": ("StableLmConfig", dict(_drop=("rms_norm_eps",), layer_norm_eps=1e-5, use_qkv_bias=False,
                                           use_parallel_residual=True, qk_layernorm=True,
                                           hidden_dropout=0.0, attention_dropout=0.0, tie_word_embeddings=False)),
    "stablelm_par": ("StableLmConfig", dict(_drop=("rms_norm_eps",), layer_norm_eps=1e-5, use_qkv_bias=False,
                                            use_parallel_residual=True,
                                            rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                                 partial_rotary_factor=0.5),
                                            hidden_dropout=0.0, attention_dropout=0.0, tie_word_embeddings=False)),
    # StarCoder2: GQA, LayerNorms (biases), c_fc / tanh GELU / c_proj, biases everywhere, tied
    # head; without a window (llama.cpp's starcoder2 has none: the GGUF fixture), and with a
    # sliding window shorter than the prompt.
    "starcoder2": ("Starcoder2Config", dict(_drop=("rms_norm_eps",), norm_epsilon=1e-5, use_bias=True,
                                            residual_dropout=0.0, embedding_dropout=0.0, attention_dropout=0.0,
                                            tie_word_embeddings=True)),
    "starcoder2_swa": ("Starcoder2Config", dict(_drop=("rms_norm_eps",), norm_epsilon=1e-5, use_bias=True,
                                                sliding_window=8, residual_dropout=0.0, embedding_dropout=0.0,
                                                attention_dropout=0.0, tie_word_embeddings=True)),
    # GPT-NeoX (Pythia): LayerNorm with biases, GELU MLP, per-head fused query_key_value,
    # partial rotary (GPTNeoXConfig's default 0.25 of each head), the parallel residual;
    # and the sequential form with the tanh GELU and half the head rotated.
    "gpt_neox": ("GPTNeoXConfig", dict(_drop=("num_key_value_heads", "rms_norm_eps"), layer_norm_eps=1e-5,
                                       tie_word_embeddings=False)),
    "gpt_neox_seq": ("GPTNeoXConfig", dict(_drop=("num_key_value_heads", "rms_norm_eps"), layer_norm_eps=1e-5,
                                           use_parallel_residual=False, hidden_act="gelu_new", initializer_range=0.4,
                                           rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                                partial_rotary_factor=0.5),
                                           tie_word_embeddings=False)),
    # GPT-2: learned positions, Conv1D weights stored (in, out), fused c_attn, gelu_new,
    # LayerNorm with biases, tied head.
    "gpt2": ("GPT2Config", dict(_drop=("num_key_value_heads", "rms_norm_eps", "hidden_size", "intermediate_size",
                                       "num_hidden_layers", "num_attention_heads", "max_position_embeddings"),
                                n_embd=64, n_layer=2, n_head=4, n_inner=96, n_positions=128, layer_norm_epsilon=1e-5,
                                attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, initializer_range=0.4,
                                tie_word_embeddings=True)),
    # GPT-BigCode (StarCoder / SantaCoder / WizardCoder): GPT-2's block with nn.Linear weights and one
    # key/value head (multi_query, the default): c_attn's rows q | k | v; the MLP 4 x n_embd as llama.cpp's
    # starcoder converter assumes; tied head.
    "gpt_bigcode": ("GPTBigCodeConfig", dict(_drop=("num_key_value_heads", "rms_norm_eps", "hidden_size",
                                                    "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                                    "max_position_embeddings"),
                                             n_embd=64, n_layer=2, n_head=4, n_inner=256, n_positions=128,
                                             layer_norm_epsilon=1e-5, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0,
                                             initializer_range=0.4, tie_word_embeddings=True)),
    # The same without multi_query: a key/value head per head, c_attn's rows per head q | k | v.
    "gpt_bigcode_mha": ("GPTBigCodeConfig", dict(_drop=("num_key_value_heads", "rms_norm_eps", "hidden_size",
                                                        "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                                        "max_position_embeddings"),
                                                 n_embd=64, n_layer=2, n_head=4, n_inner=96, n_positions=128,
                                                 layer_norm_epsilon=1e-5, attn_pdrop=0.0, resid_pdrop=0.0,
                                                 embd_pdrop=0.0, initializer_range=0.4, multi_query=False,
                                                 tie_word_embeddings=True)),
    # MPT (MPT-7B's block): ALiBi (alibi_bias_max 8), LayerNorms without biases, fused Wqkv clamped to
    # clip_qkv (0.5: below the projections' spread, so the clamp bites), the exact GELU, no biases, tied.
    "mpt": ("MptConfig", dict(_drop=("num_key_value_heads", "rms_norm_eps", "intermediate_size"),
                              max_seq_len=128, attn_config=dict(clip_qkv=0.5, alibi_bias_max=8),
                              tie_word_embeddings=True)),
    # MPT with 6 heads (not a power of two: MPT's slope order differs from BLOOM's and llama.cpp's), a
    # softmax_scale of its own and an alibi_bias_max of 6, which transformers ignores (its ALiBi takes 8);
    # no GGUF (llama.cpp's slopes are BLOOM's).
    "mpt_6h": ("MptConfig", dict(_drop=("num_key_value_heads", "rms_norm_eps", "intermediate_size"),
                                 hidden_size=96, num_attention_heads=6, max_seq_len=128,
                                 attn_config=dict(softmax_scale=0.3, alibi_bias_max=6),
                                 tie_word_embeddings=True)),
    # OPT (opt-125m's layout): learned positions at an offset of 2, pre-LayerNorm, ReLU,
    # separate q/k/v/out_proj and fc1/fc2 with biases, tied head.
    "opt": ("OPTConfig", dict(_drop=("num_key_value_heads", "rms_norm_eps", "intermediate_size", "initializer_range"),
                              ffn_dim=96, word_embed_proj_dim=64, do_layer_norm_before=True, dropout=0.0,
                              attention_dropout=0.0, activation_dropout=0.0, init_std=0.2,
                              tie_word_embeddings=True)),
    # opt-350m's layout: post-norm blocks (no final norm) and embeddings narrower than the
    # blocks, taken there and back by project_in / project_out (which all-linear adapts).
    "opt_350m": ("OPTConfig", dict(_drop=("num_key_value_heads", "rms_norm_eps", "intermediate_size",
                                          "initializer_range"),
                                   ffn_dim=96, word_embed_proj_dim=32, do_layer_norm_before=False, dropout=0.0,
                                   attention_dropout=0.0, activation_dropout=0.0, init_std=0.15,
                                   tie_word_embeddings=True)),
    # BLOOM: ALiBi (6 heads: the slopes' non-power-of-two branch), the embedding LayerNorm,
    # per-head fused query_key_value, tanh GELU, biases, tied head.
    "bloom": ("BloomConfig", dict(_drop=("num_key_value_heads", "rms_norm_eps", "intermediate_size",
                                         "max_position_embeddings", "num_hidden_layers", "num_attention_heads"),
                                  hidden_size=48, n_layer=2, n_head=6, layer_norm_epsilon=1e-5, hidden_dropout=0.0,
                                  attention_dropout=0.0, initializer_range=0.4, tie_word_embeddings=True)),
    # Falcon's three fused q/k/v layouts and block forms: the new architecture (grouped per
    # kv head, two norms, parallel), falcon-7b's (multi-query, one shared norm, parallel),
    # and multi-head per-head q/k/v with the sequential block and biases.
    "falcon": ("FalconConfig", dict(_drop=_FALCON_DROP, ffn_hidden_size=96, new_decoder_architecture=True,
                                    num_kv_heads=2, bias=False, hidden_dropout=0.0, attention_dropout=0.0)),
    "falcon_mq": ("FalconConfig", dict(_drop=_FALCON_DROP, ffn_hidden_size=96, new_decoder_architecture=False,
                                       multi_query=True, parallel_attn=True, bias=False, hidden_dropout=0.0,
                                       attention_dropout=0.0, initializer_range=0.3)),
    # falcon-rw's layout: ALiBi (Falcon's bf16 form, added before the 1/sqrt(head_dim)
    # scaling), per-head q/k/v, the sequential block, biases. Run with SDPA: transformers
    # 5.23's eager Falcon attention adds the ALiBi bias twice (once in its scores, once more
    # through the mask it folded the bias into), where SDPA and the original falcon-rw code
    # add it once. A 300-token prompt's last logits check positions past 256, which the bf16
    # bias rounds.
    "falcon_alibi": ("FalconConfig", dict(_drop=_FALCON_DROP, _attn="sdpa", _long=300, ffn_hidden_size=96,
                                          new_decoder_architecture=False, multi_query=False, parallel_attn=False,
                                          alibi=True, bias=True, hidden_dropout=0.0, attention_dropout=0.0,
                                          initializer_range=0.3, max_position_embeddings=512)),
    "falcon_seq": ("FalconConfig", dict(_drop=_FALCON_DROP, ffn_hidden_size=96, new_decoder_architecture=False,
                                        multi_query=False, parallel_attn=False, bias=True, hidden_dropout=0.0,
                                        attention_dropout=0.0, initializer_range=0.3)),
}

PROMPT_LEN, GREEDY, BATCH, SEQ = 20, 32, 2, 24
CURVE_STEPS, CURVE_LR = 10, 1e-3


def attn_impl(family: str) -> str:
    """eager, unless the family's entry says otherwise (_attn)."""
    return FAMILIES[family][1].get("_attn", "eager")


def is_wrapper(family: str) -> bool:
    return "_wrapper" in FAMILIES[family][1]


def auto_class(family: str):
    """The Auto class a user loads the family with: a vision-language model's is
    AutoModelForImageTextToText (AutoModelForCausalLM takes gemma3 but not mistral3 / llava)."""
    import transformers
    return transformers.AutoModelForImageTextToText if is_wrapper(family) else transformers.AutoModelForCausalLM


def make_model(family: str):
    import transformers
    cls_name, extra = FAMILIES[family]
    drop = extra.get("_drop", ())
    kw = {k: v for k, v in {**COMMON, **extra}.items() if k not in drop and not k.startswith("_")}
    if is_wrapper(family):
        kw["model_type"] = extra["_text_type"]
        cfg = getattr(transformers, cls_name)(text_config=kw, **extra["_wrapper"])
        cfg.text_config._attn_implementation = attn_impl(family)
    else:
        cfg = getattr(transformers, cls_name)(**kw)
    cfg._attn_implementation = attn_impl(family)
    torch.manual_seed(1234)
    model = auto_class(family).from_config(cfg, torch_dtype=torch.float32)
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("moe_statics.e_score_correction_bias"):  # (ERNIE 4.5's: a parameter, zeros at init)
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        gl = torch.Generator().manual_seed(98)  # (Gemma 4's per-layer output scalars, a buffer)
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gl))
            if name.endswith(("e_score_correction_bias", ".expert_bias")):  # (GLM-4.5 / DeepSeek-V3's, LFM2-MoE's router: zeros at init)
                b.copy_(0.1 * torch.randn(b.shape, generator=gl))
        gx = torch.Generator().manual_seed(96)  # (xIELU's per-layer parameters: the same at init)
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith((".act_fn.alpha_p", ".act_fn.alpha_n")):
                t.copy_(torch.randn(t.shape, generator=gx))
            elif name.endswith(".act_fn.beta"):
                t.copy_(0.3 + 0.4 * torch.rand(t.shape, generator=gx))
        if extra.get("_ssm_random"):  # (Mamba2's per-head decay, step bias and skip)
            gs = torch.Generator().manual_seed(97)
            for name, p in model.named_parameters():
                if name.endswith(".A_log"):
                    p.copy_(torch.log(0.5 + 4 * torch.rand(p.shape, generator=gs)))
                elif name.endswith(".dt_bias"):
                    p.copy_(torch.randn(p.shape, generator=gs))
                elif name.endswith(".D"):
                    p.copy_(0.5 + torch.rand(p.shape, generator=gs))
        for name, p in model.named_parameters():  # (Gemma 4's router scales)
            if name.endswith(("router.scale", "router.per_expert_scale")):
                p.copy_(0.5 + torch.rand(p.shape, generator=gl))
    model.eval()
    return model


def reset_rope_state(model):
    """transformers' dynamic rotary embedding keeps the longest sequence it has seen across
    calls (generate leaves it at 36 here); every reference below is a fresh model's, as a
    user's first forward is (and as ours is, per forward)."""
    for mod in model.modules():
        if hasattr(mod, "original_inv_freq") and hasattr(mod, "max_seq_len_cached"):
            mod.register_buffer("inv_freq", mod.original_inv_freq.clone(), persistent=False)
            mod.max_seq_len_cached = mod.original_max_seq_len


_GENERIC_DEQUANT = False


def use_generic_cpu_dequantize():
    """bitsandbytes 0.50.2's AVX-512 CPU dequantize_4bit (its native kernel, taken on CPUs with
    AVX-512) looks each block's absmax up per row: for a weight whose rows are not a whole
    number of blocks (here the MLP's down projection, 64 x 96 with blocksize 64) it dequantizes
    with the wrong scales, while quantize_4bit, the CUDA kernels, the scalar CPU path and the
    PyTorch reference all index blocks over the flattened tensor (measured on an AMD Zen 4:
    0.24 max error on such a weight, 0 on 96 x 64). The fixtures are what bitsandbytes computes
    on a GPU or on any other CPU, so its PyTorch reference dequantization is put in the
    native kernel's place."""
    global _GENERIC_DEQUANT
    if _GENERIC_DEQUANT:
        return
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code

    @torch.library.register_kernel("bitsandbytes::dequantize_4bit", "cpu")
    def _(A, absmax, blocksize, quant_type, shape, dtype):
        if A.dtype != torch.uint8:
            A = A.view(torch.uint8)
        return _dequantize_4bit_compute(A.reshape(-1), absmax, _get_4bit_code(quant_type, A.device), blocksize, shape,
                                        dtype)
    _GENERIC_DEQUANT = True


def is_moe(family: str) -> bool:
    return FAMILIES[family][1].get("_moe", False)


def experts_roundtrip(model, double_quant: bool):
    """Each expert's fused gate_up_proj[e] (2F, C) and down_proj[e] (C, F) through bitsandbytes'
    NF4 (blocksize 64): transformers 5 keeps these 3-D parameters dense under bitsandbytes
    (only nn.Linear is replaced), while qlora quantizes them as QLoRA on transformers 4 did;
    this is what bitsandbytes makes of them."""
    import bitsandbytes.functional as F
    use_generic_cpu_dequantize()
    with torch.no_grad():
        for name, mod in model.named_modules():
            # (Nemotron 3's ungated experts: up_proj (E, F, C) and down_proj, 3-D parameters too)
            ungated = isinstance(getattr(mod, "up_proj", None), torch.nn.Parameter)
            if not name.endswith(".experts") or not (hasattr(mod, "gate_up_proj") or ungated):
                continue
            gpt_oss = hasattr(mod, "gate_up_proj_bias")
            in_out = gpt_oss or type(mod).__name__ == "Llama4TextExperts"  # (Llama 4's are (in, out) too)
            for p in (mod.up_proj if ungated else mod.gate_up_proj, mod.down_proj):
                for e in range(p.shape[0]):
                    w = p.data[e].to(torch.float32)
                    if in_out:  # (in, out): qlora's (out, in) Linear (gpt-oss: gate and up rows stay interleaved)
                        w = w.t()
                    q, st = F.quantize_4bit(w.contiguous(), blocksize=64, quant_type="nf4", compress_statistics=double_quant)
                    d = F.dequantize_4bit(q, st, blocksize=64, quant_type="nf4").to(torch.float32)
                    if in_out:
                        d = d.t()
                    p.data[e].copy_(d.to(p.dtype))


def nf4_roundtrip(model):
    import bitsandbytes.functional as F
    use_generic_cpu_dequantize()
    experts_roundtrip(model, False)
    with torch.no_grad():
        from transformers.pytorch_utils import Conv1D
        for name, mod in model.named_modules():
            # (bitsandbytes quantizes every Linear but the head: OPT's project_in/out too; not Llama 4's
            # router, an nn.Linear subclass its exact-type check passes over)
            if type(mod).__name__ == "Llama4Router":
                continue
            if isinstance(mod, torch.nn.Linear) and (".layers." in name or ".h." in name or ".blocks." in name or
                                                     name.endswith(("project_in", "project_out",
                                                                    "per_layer_model_projection"))):
                q, st = F.quantize_4bit(mod.weight.data.contiguous(), blocksize=64, quant_type="nf4")
                mod.weight.copy_(F.dequantize_4bit(q, st, blocksize=64, quant_type="nf4").to(torch.float32))
            elif isinstance(mod, Conv1D) and ".h." in name:
                # (in, out): transformers' bnb integration quantizes it as a (out, in) Linear4bit
                w = mod.weight.data.t().contiguous()
                q, st = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
                mod.weight.copy_(F.dequantize_4bit(q, st, blocksize=64, quant_type="nf4").to(torch.float32).t())


# The families whose GGUF is checked, and llama.cpp's architecture for each. (Mistral goes
# to GGUF as "llama" and llama.cpp drops its sliding window; "llama_bias" needs MLP biases
# llama.cpp's llama graph does not have.)
def write_gguf_nemotron_h(model, path: Path):
    """As llama.cpp's converter writes Nemotron-H (conversion/nemotron.py: NemotronHModel on
    GraniteHybridModel): head_count_kv and feed_forward_length one value per layer, the key/value
    heads on the attention layers and the MLP width on the MLP layers, 0 elsewhere (both 0: a Mamba
    layer); the ssm.* sizes (inner_size = heads x head size, time_step_rank = the heads);
    key_length / value_length the head size; the config's layer_norm_epsilon as
    attention.layer_norm_epsilon (no RMS key); no positions (rope.scaling.finetuned false, the
    context 2**20, a rope.dimension_count of hidden / heads nothing reads); each layer's one norm as
    attn_norm; q/k rows permuted as its llama converter does; ssm_a = -exp(A_log) and ssm_d as
    (heads, 1), ssm_norm as (groups, inner / groups), the conv taps squeezed.
    With experts (Nemotron 3: num_experts_per_tok in the config) as nemotron_h_moe: the experts' width
    as the MoE layers' feed_forward_length, the expert_* keys (routed_scaling_factor as
    expert_weights_scale, n_group / topk_group as the group counts), the router as ffn_gate_inp, its
    e_score_correction_bias as exp_probs_b.bias, the experts stacked as ffn_up_exps / ffn_down_exps and
    the shared expert as ffn_up_shexp / ffn_down_shexp."""
    import gguf
    import numpy as np
    c = model.config
    kinds = list(c.layers_block_type)
    moe = "moe" in kinds
    w = gguf.GGUFWriter(str(path), "nemotron_h_moe" if moe else "nemotron_h")
    w.add_context_length(2 ** 20)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(len(kinds))
    w.add_feed_forward_length([c.intermediate_size if k == "mlp" else c.moe_intermediate_size if k == "moe" else 0
                               for k in kinds])
    if moe:
        w.add_expert_used_count(c.num_experts_per_tok)
        w.add_expert_feed_forward_length(c.moe_intermediate_size)
        w.add_expert_shared_feed_forward_length(c.moe_shared_expert_intermediate_size)
        w.add_expert_count(c.n_routed_experts)
        w.add_expert_shared_count(c.n_shared_experts)
        w.add_expert_weights_norm(c.norm_topk_prob)
        w.add_expert_weights_scale(c.routed_scaling_factor)
        w.add_expert_group_count(c.n_group)
        w.add_expert_group_used_count(c.topk_group)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv([c.num_key_value_heads if k == "full_attention" else 0 for k in kinds])
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_scaling_finetuned(False)
    w.add_layer_norm_eps(c.layer_norm_epsilon)
    inner = c.mamba_num_heads * c.mamba_head_dim
    w.add_ssm_conv_kernel(c.conv_kernel)
    w.add_ssm_state_size(c.ssm_state_size)
    w.add_ssm_group_count(c.n_groups)
    w.add_ssm_inner_size(inner)
    w.add_ssm_time_step_rank(c.mamba_num_heads)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_test_vocab(w, c.vocab_size)

    names = {"mixer.q_proj": "attn_q", "mixer.k_proj": "attn_k", "mixer.v_proj": "attn_v", "mixer.o_proj": "attn_output",
             "norm": "attn_norm", "mixer.in_proj": "ssm_in", "mixer.conv1d": "ssm_conv1d", "mixer.norm": "ssm_norm",
             "mixer.out_proj": "ssm_out", "mixer.up_proj": "ffn_up", "mixer.down_proj": "ffn_down",
             "mixer.gate": "ffn_gate_inp", "mixer.shared_experts.up_proj": "ffn_up_shexp",
             "mixer.shared_experts.down_proj": "ffn_down_shexp"}
    heads = {"mixer.q_proj": c.num_attention_heads, "mixer.k_proj": c.num_key_value_heads}
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.float32).numpy()
        name = name.replace("model.embeddings.", "model.embed_tokens.")
        if _add_global_tensor(w, name, t, c.tie_word_embeddings, "model.norm_f.weight", "output_norm"):
            continue
        _, _, layer, rest = name.split(".", 3)
        experts = {"mixer.experts.up_proj": "ffn_up_exps.weight", "mixer.experts.down_proj": "ffn_down_exps.weight",
                   "mixer.gate.e_score_correction_bias": "exp_probs_b.bias"}
        if rest in experts:  # ((E, F, C) / (E, C, F) stacked as they are; the score bias)
            w.add_tensor(f"blk.{layer}.{experts[rest]}", np.ascontiguousarray(t))
            continue
        _add_mixer_layer_tensor(w, layer, rest, t, names, c.n_groups, inner, heads)
    _finish(w)


def _add_mixer_layer_tensor(w, layer, rest: str, t, names: dict, groups: int, inner: int, qk_heads=None):
    """A layer's tensor (`rest`: its name after the layer index, modules under mixer.) as llama.cpp's
    Mamba2 converters write it: ssm_a = -exp(A_log) and ssm_d as (heads, 1), dt_bias as ssm_dt.bias, the
    conv taps squeezed, the gated norm as (groups, inner / groups); q / k rows permuted as its llama
    converter does over qk_heads[module] heads; the rest as they are, under names[module]."""
    import numpy as np

    def permute(t, n_head):  # (LlamaModel.permute)
        return t.reshape(n_head, 2, t.shape[0] // n_head // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)
    if rest == "mixer.A_log":
        w.add_tensor(f"blk.{layer}.ssm_a", np.ascontiguousarray(-np.exp(t).reshape(-1, 1)))
        return
    if rest == "mixer.D":
        w.add_tensor(f"blk.{layer}.ssm_d", np.ascontiguousarray(t.reshape(-1, 1)))
        return
    if rest == "mixer.dt_bias":
        w.add_tensor(f"blk.{layer}.ssm_dt.bias", np.ascontiguousarray(t))
        return
    mod, suffix = rest.rsplit(".", 1)
    if mod == "mixer.conv1d" and suffix == "weight":
        t = t.reshape(t.shape[0], t.shape[2])
    elif mod == "mixer.norm":
        t = t.reshape(groups, inner // groups)
    elif qk_heads and mod in qk_heads:
        t = permute(t, qk_heads[mod])
    w.add_tensor(f"blk.{layer}.{names[mod]}.{suffix}", np.ascontiguousarray(t))


def write_gguf_mamba2(model, path: Path):
    """As llama.cpp's converter writes Mamba2ForCausalLM (conversion/mamba.py: Mamba2Model): the context
    2**20, feed_forward_length and head_count 0 (no MLP, no attention), the ssm.* sizes (inner_size =
    heads x head size, time_step_rank = the heads), layer_norm_epsilon as attention.layer_norm_rms_epsilon;
    each layer's norm as attn_norm; ssm_a = -exp(A_log) and ssm_d as (heads, 1), ssm_norm as (groups,
    inner / groups), the conv taps squeezed."""
    import gguf
    import numpy as np
    c = model.config
    w = gguf.GGUFWriter(str(path), "mamba2")
    inner = c.num_heads * c.head_dim
    w.add_context_length(2 ** 20)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(0)
    w.add_head_count(0)
    w.add_block_count(c.num_hidden_layers)
    w.add_ssm_conv_kernel(c.conv_kernel)
    w.add_ssm_inner_size(inner)
    w.add_ssm_state_size(c.state_size)
    w.add_ssm_time_step_rank(c.num_heads)
    w.add_ssm_group_count(c.n_groups)
    w.add_layer_norm_rms_eps(c.layer_norm_epsilon)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_test_vocab(w, c.vocab_size)
    names = {"norm": "attn_norm", "mixer.in_proj": "ssm_in", "mixer.conv1d": "ssm_conv1d", "mixer.norm": "ssm_norm",
             "mixer.out_proj": "ssm_out"}
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.float32).numpy()
        name = name.replace("backbone.embeddings.", "model.embed_tokens.").replace("backbone.norm_f.", "model.norm.")
        if _add_global_tensor(w, name, t, c.tie_word_embeddings, "model.norm.weight", "output_norm"):
            continue
        _, _, layer, rest = name.split(".", 3)
        _add_mixer_layer_tensor(w, layer, rest, t, names, c.n_groups, inner)
    _finish(w)


GGUF_ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma", "gemma2": "gemma2",
             "gemma3_text_gguf": "gemma3",
             "llama_rope_llama3": "llama", "llama_rope_linear": "llama", "qwen2_rope_yarn": "qwen2",
             "phi3": "phi3", "phi4_mini": "phi3", "gpt2": "gpt2", "gpt_neox": "gptneox", "gpt_neox_seq": "gptneox",
             "bloom": "bloom", "falcon": "falcon", "falcon_mq": "falcon", "phi": "phi2", "stablelm": "stablelm",
             "stablelm_par": "stablelm", "starcoder2": "starcoder2",
             "granite": "granite", "olmo2": "olmo2", "cohere": "command-r",
             "smollm3": "smollm3", "cohere2": "cohere2", "olmo": "olmo",
             "arcee": "arcee", "nemotron": "nemotron",
             "mixtral": "llama", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "olmoe": "olmoe", "olmo3": "olmo2",
             "exaone4_nowin": "exaone4", "glm4": "glm4",
             "stablelm_qk": "stablelm", "gpt_oss_gguf": "gpt-oss", "ministral3": "mistral3", "ernie4_5": "ernie4_5",
             "hunyuan_v1_dense": "hunyuan-dense", "qwen3_5_gguf": "qwen35", "lfm2": "lfm2", "lfm2_moe": "lfm2moe", "qwen3_5_moe_gguf": "qwen35moe",
             "qwen3_next_gguf": "qwen3next", "glm4_moe": "glm4moe", "ernie4_5_moe": "ernie4_5-moe", "seed_oss": "seed_oss", "gemma4_text": "gemma4", "gemma4_moe": "gemma4", "gemma4_e": "gemma4", "deepseek_v3": "deepseek2", "granitemoe": "granitemoe", "dots1": "dots1", "minimax_m2": "minimax-m2", "hunyuan_v1_moe": "hunyuan-moe", "llama4_gguf": "llama4",
             "granitemoehybrid": "granitehybrid", "granitemoehybrid_moe": "granitehybrid", "nemotron_h": "nemotron_h",
             "nemotron_h_moe": "nemotron_h_moe", "apertus": "apertus",
             "mamba2": "mamba2", "gpt_bigcode": "starcoder", "mpt": "mpt",
             "bamba": "granitehybrid", "mamba": "mamba", "falcon_mamba": "mamba", "jamba": "jamba"}


def write_gguf_mamba(model, path: Path):
    """As llama.cpp's converter writes MambaForCausalLM and FalconMambaForCausalLM (conversion/mamba.py:
    MambaModel): the context 2**20, feed_forward_length and head_count 0, the ssm.* sizes (time_step_rank
    dt_proj's rank), layer_norm_epsilon as attention.layer_norm_rms_epsilon, ssm.dt_b_c_rms for
    falcon_mamba; each layer's norm as attn_norm; ssm_a = -exp(A_log) (channels, state), ssm_d, the conv
    taps squeezed; x_proj as ssm_x, dt_proj (weight and bias) as ssm_dt; the head left out when tied."""
    import gguf
    import numpy as np
    c = model.config
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_context_length(2 ** 20)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(0)
    w.add_head_count(0)
    w.add_block_count(c.num_hidden_layers)
    w.add_ssm_conv_kernel(c.conv_kernel)
    w.add_ssm_inner_size(c.intermediate_size)
    w.add_ssm_state_size(c.state_size)
    w.add_ssm_time_step_rank(c.time_step_rank)
    w.add_layer_norm_rms_eps(c.layer_norm_epsilon)
    w.add_ssm_dt_b_c_rms(c.model_type == "falcon_mamba")
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_test_vocab(w, c.vocab_size)
    names = {"mixer.in_proj": "ssm_in", "mixer.conv1d": "ssm_conv1d", "mixer.x_proj": "ssm_x", "mixer.dt_proj": "ssm_dt",
             "mixer.out_proj": "ssm_out", "norm": "attn_norm"}
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.float32).numpy()
        name = name.replace("backbone.embeddings.", "model.embed_tokens.").replace("backbone.norm_f.", "model.norm.")
        if _add_global_tensor(w, name, t, c.tie_word_embeddings, "model.norm.weight", "output_norm"):
            continue
        _, _, layer, rest = name.split(".", 3)
        _add_mamba1_layer_tensor(w, layer, rest, t, names, "mixer")
    _finish(w)


def _add_mamba1_layer_tensor(w, layer, rest: str, t, names: dict, mixer: str):
    """A layer's tensor (`rest`: its name after the layer index; the Mamba mixer under `mixer`.) as llama.cpp's
    mamba / jamba converters write it: ssm_a = -exp(A_log) (channels, state), ssm_d, the conv taps squeezed;
    the rest as they are, under names[module]."""
    import numpy as np
    if rest == f"{mixer}.A_log":
        w.add_tensor(f"blk.{layer}.ssm_a", np.ascontiguousarray(-np.exp(t)))
    elif rest == f"{mixer}.D":
        w.add_tensor(f"blk.{layer}.ssm_d", np.ascontiguousarray(t))
    else:
        mod, suffix = rest.rsplit(".", 1)
        if mod == f"{mixer}.conv1d" and suffix == "weight":
            t = t.reshape(t.shape[0], t.shape[2])
        w.add_tensor(f"blk.{layer}.{names[mod]}.{suffix}", np.ascontiguousarray(t))


def write_gguf_jamba(model, path: Path):
    """As llama.cpp's converter writes JambaForCausalLM (conversion/jamba.py: JambaModel): head_count_kv per
    layer (0 on the Mamba layers), feed_forward_length = intermediate_size, the ssm.* sizes, expert_count /
    expert_used_count; the experts stacked as ffn_{gate,up,down}_exps with ffn_gate_inp on their layers, the
    dense MLP as ffn_gate / ffn_up / ffn_down elsewhere; the mixer as mamba's plus ssm_dt_norm / ssm_b_norm /
    ssm_c_norm; q/k unpermuted (no rotary)."""
    import gguf
    import numpy as np
    c = model.config
    w = gguf.GGUFWriter(str(path), "jamba")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv([c.num_key_value_heads if t == "attention" else 0 for t in c.layers_block_type])
    w.add_ssm_conv_kernel(c.mamba_d_conv)
    w.add_ssm_inner_size(c.mamba_expand * c.hidden_size)
    w.add_ssm_state_size(c.mamba_d_state)
    w.add_ssm_time_step_rank(c.mamba_dt_rank)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_expert_count(c.num_experts)
    w.add_expert_used_count(c.num_experts_per_tok)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_test_vocab(w, c.vocab_size)
    names = {"input_layernorm": "attn_norm", "pre_ff_layernorm": "ffn_norm", "mamba.in_proj": "ssm_in",
             "mamba.conv1d": "ssm_conv1d", "mamba.x_proj": "ssm_x", "mamba.dt_proj": "ssm_dt", "mamba.out_proj": "ssm_out",
             "mamba.dt_layernorm": "ssm_dt_norm", "mamba.b_layernorm": "ssm_b_norm", "mamba.c_layernorm": "ssm_c_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "feed_forward.router": "ffn_gate_inp", "feed_forward.gate_proj": "ffn_gate",
             "feed_forward.up_proj": "ffn_up", "feed_forward.down_proj": "ffn_down"}
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.float32).numpy()
        name = name.replace("model.final_layernorm.", "model.norm.")
        if _add_global_tensor(w, name, t, c.tie_word_embeddings, "model.norm.weight", "output_norm"):
            continue
        _, _, layer, rest = name.split(".", 3)
        if rest.startswith("feed_forward.") and _add_fused_experts(w, layer, rest[len("feed_forward."):], t):
            continue
        _add_mamba1_layer_tensor(w, layer, rest, t, names, "mamba")
    _finish(w)


def write_gguf_bloom(model, path: Path):
    """As convert_hf_to_gguf.py's BloomModel: query_key_value reordered to all q, k, v; the
    context length is seq_length or, without it, n_embed; the tied head written out as output."""
    import gguf
    c = model.config
    w = gguf.GGUFWriter(str(path), "bloom")
    n_embd, n_head = c.hidden_size, c.n_head
    w.add_context_length(getattr(c, "seq_length", None) or n_embd)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(4 * n_embd)
    w.add_block_count(c.n_layer)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_eps(c.layer_norm_epsilon)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_test_vocab(w, c.vocab_size)
    names = {"input_layernorm": "attn_norm", "self_attention.query_key_value": "attn_qkv",
             "self_attention.dense": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.dense_h_to_4h": "ffn_up", "mlp.dense_4h_to_h": "ffn_down"}
    glob = {"transformer.word_embeddings.weight": "token_embd.weight",
            "transformer.word_embeddings_layernorm.weight": "token_embd_norm.weight",
            "transformer.word_embeddings_layernorm.bias": "token_embd_norm.bias",
            "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias"}
    _add_block_tensors(w, model, glob, names, "self_attention.query_key_value",
                       lambda t: _qkv_per_head_to_contiguous(t, n_head), skip=("lm_head.weight",),
                       also_output="token_embd.weight")
    _finish(w)


def write_gguf_neox(model, path: Path):
    """As convert_hf_to_gguf.py's GPTNeoXModel: query_key_value reordered from per head
    (q k v of each head) to all q, all k, all v."""
    import gguf
    c = model.config
    w = gguf.GGUFWriter(str(path), "gptneox")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    hd = c.hidden_size // c.num_attention_heads
    w.add_rope_dimension_count(int(c.rope_parameters.get("partial_rotary_factor", 1.0) * hd))
    w.add_head_count(c.num_attention_heads)
    w.add_parallel_residual(c.use_parallel_residual)
    w.add_layer_norm_eps(c.layer_norm_eps)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_test_vocab(w, c.vocab_size)
    n_head = c.num_attention_heads
    names = {"input_layernorm": "attn_norm", "attention.query_key_value": "attn_qkv", "attention.dense": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.dense_h_to_4h": "ffn_up", "mlp.dense_4h_to_h": "ffn_down"}
    glob = {"gpt_neox.embed_in.weight": "token_embd.weight", "gpt_neox.final_layer_norm.weight": "output_norm.weight",
            "gpt_neox.final_layer_norm.bias": "output_norm.bias", "embed_out.weight": "output.weight",
            "lm_head.weight": "output.weight"}
    _add_block_tensors(w, model, glob, names, "attention.query_key_value",
                       lambda t: _qkv_per_head_to_contiguous(t, n_head))
    _finish(w)


def write_gguf_falcon(model, path: Path):
    """As convert_hf_to_gguf.py's FalconModel: query_key_value regrouped from per key/value
    group (its query heads, its k, its v) to all q, all k, all v (n_head_kv from num_kv_heads,
    1 without it: falcon-7b's multi-query layout is one group), the new architecture's
    ln_attn as attn_norm_2 and ln_mlp as attn_norm, falcon-7b's one norm as attn_norm. (The
    converter writes feed_forward_length as 4 x hidden, which real Falcons have; this one
    writes the model's own, which llama.cpp checks against the tensors.)"""
    import gguf
    c = model.config
    w = gguf.GGUFWriter(str(path), "falcon")
    n_head = c.num_attention_heads
    n_kv = c.num_kv_heads if c.new_decoder_architecture else 1
    hd = c.hidden_size // n_head
    w.add_context_length(2048)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.ffn_hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_eps(c.layer_norm_epsilon)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_test_vocab(w, c.vocab_size)
    names = {"input_layernorm": "attn_norm", "ln_mlp": "attn_norm", "ln_attn": "attn_norm_2",
             "self_attention.query_key_value": "attn_qkv", "self_attention.dense": "attn_output",
             "mlp.dense_h_to_4h": "ffn_up", "mlp.dense_4h_to_h": "ffn_down"}
    glob = {"transformer.word_embeddings.weight": "token_embd.weight", "transformer.ln_f.weight": "output_norm.weight",
            "transformer.ln_f.bias": "output_norm.bias"}
    def regroup(t):
        qkv = t.view(n_kv, n_head // n_kv + 2, hd, t.shape[1])
        return torch.cat((qkv[:, :-2].reshape(n_head * hd, -1), qkv[:, [-2]].reshape(n_kv * hd, -1),
                          qkv[:, [-1]].reshape(n_kv * hd, -1)))
    # (lm_head is tied: llama.cpp falls back to token_embd)
    _add_block_tensors(w, model, glob, names, "self_attention.query_key_value", regroup, skip=("lm_head.weight",))
    _finish(w)


def write_gguf_phi2(model, path: Path, fused_qkv: bool = False):
    """As convert_hf_to_gguf.py's Phi2Model: the tensors as they are (q, k, v separate), the
    head's bias as output.bias, rope.dimension_count int(factor * hidden) // heads, head_count_kv
    = head_count, no BOS added. (The converter writes feed_forward_length as 4 x hidden, which
    real Phis have; this one writes the model's own, which llama.cpp checks against the
    tensors.) fused_qkv: q, k and v concatenated into attn_qkv, as GGUFs made from the original
    microsoft/phi-2 checkpoint (its Wqkv) hold them."""
    import gguf
    import numpy as np
    c = model.config
    w = gguf.GGUFWriter(str(path), "phi2")
    n_embd, n_head = c.hidden_size, c.num_attention_heads
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_eps(c.layer_norm_eps)
    w.add_rope_dimension_count(int(c.rope_parameters["partial_rotary_factor"] * n_embd) // n_head)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_test_vocab(w, c.vocab_size)
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.dense": "attn_output", "mlp.fc1": "ffn_up",
             "mlp.fc2": "ffn_down"}
    glob = {"model.embed_tokens.weight": "token_embd.weight", "model.final_layernorm.weight": "output_norm.weight",
            "model.final_layernorm.bias": "output_norm.bias", "lm_head.weight": "output.weight",
            "lm_head.bias": "output.bias"}
    sd = model.state_dict()
    for name, t in sd.items():
        t = t.detach().to(torch.float32)
        if name in glob:
            out = glob[name]
        else:
            _, _, layer, rest = name.split(".", 3)
            mod, suffix = rest.rsplit(".", 1)
            if fused_qkv and mod in ("self_attn.k_proj", "self_attn.v_proj"):
                continue
            if fused_qkv and mod == "self_attn.q_proj":
                p = f"model.layers.{layer}.self_attn."
                t = torch.cat([sd[p + m + "." + suffix].to(torch.float32) for m in ("q_proj", "k_proj", "v_proj")])
                out = f"blk.{layer}.attn_qkv.{suffix}"
            else:
                out = f"blk.{layer}.{names[mod]}.{suffix}"
        w.add_tensor(out, np.ascontiguousarray(t.numpy()))
    _finish(w)


def write_gguf_mpt(model, path: Path):
    """As llama.cpp's converter writes MptForCausalLM (conversion/mpt.py: MPTModel): context_length
    max_seq_len, feed_forward_length 4 x d_model, layer_norm_epsilon 1e-5, attention.clamp_kqv when
    clip_qkv is set, attention.max_alibi_bias; the tensors under the shared names, Wqkv as attn_qkv,
    the LayerNorms without biases, the tied head left out."""
    import gguf
    import numpy as np
    c = model.config
    a = c.attn_config
    w = gguf.GGUFWriter(str(path), "mpt")
    w.add_context_length(c.max_seq_len)
    w.add_embedding_length(c.d_model)
    w.add_block_count(c.n_layers)
    w.add_feed_forward_length(4 * c.d_model)
    w.add_head_count(c.n_heads)
    w.add_layer_norm_eps(1e-5)
    if a.clip_qkv is not None:
        w.add_clamp_kqv(a.clip_qkv)
    w.add_max_alibi_bias(a.alibi_bias_max)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_test_vocab(w, c.vocab_size)
    names = {"norm_1": "attn_norm", "attn.Wqkv": "attn_qkv", "attn.out_proj": "attn_output", "norm_2": "ffn_norm",
             "ffn.up_proj": "ffn_up", "ffn.down_proj": "ffn_down"}
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.float32).numpy()
        if name == "lm_head.weight":
            continue  # tied
        glob = {"transformer.wte.weight": "token_embd.weight", "transformer.norm_f.weight": "output_norm.weight"}
        if name in glob:
            w.add_tensor(glob[name], np.ascontiguousarray(t))
            continue
        _, _, layer, rest = name.split(".", 3)
        mod, suffix = rest.rsplit(".", 1)
        w.add_tensor(f"blk.{layer}.{names[mod]}.{suffix}", np.ascontiguousarray(t))
    _finish(w)


def write_gguf_layernorm_llama(model, arch: str, path: Path):
    """As convert_hf_to_gguf.py writes command-r (CommandR2Model: logit_scale, the weights as
    they are: llama.cpp's command-r rotates adjacent pairs, as Cohere does), stablelm (StableLMModel: rope.dimension_count
    int(factor * head_dim), use_parallel_residual, layer_norm_epsilon; the parallel block has
    no ffn_norm) and starcoder2 (the base TextModel's keys: no sliding window, the tied head
    left out): the tensors under the shared names, biases included, rotary rows unpermuted."""
    import gguf
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    hd = c.hidden_size // c.num_attention_heads
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    if arch == "stablelm":
        w.add_rope_dimension_count(int(c.rope_parameters["partial_rotary_factor"] * hd))
        w.add_parallel_residual(c.use_parallel_residual)
        w.add_layer_norm_eps(c.layer_norm_eps)
    elif arch == "nemotron":  # as NemotronModel: LayerNorm eps, partial rotary; its norms stored as 1 + w
        w.add_layer_norm_eps(c.norm_eps)
        w.add_rope_dimension_count(int(c.rope_parameters["partial_rotary_factor"] * c.hidden_size) //
                                   c.num_attention_heads)
    elif arch in ("command-r", "cohere2"):  # as CommandR2Model / Cohere2Model: the logit scale (and window)
        w.add_logit_scale(c.logit_scale)
        w.add_layer_norm_eps(c.layer_norm_eps)
        if arch == "cohere2":
            w.add_sliding_window(c.sliding_window)
    else:
        w.add_layer_norm_eps(c.norm_epsilon)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_test_vocab(w, c.vocab_size)
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    glob = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "model.norm.bias": "output_norm.bias", "lm_head.weight": "output.weight"}
    skip = ("lm_head.weight",) if c.tie_word_embeddings else ()
    if arch == "nemotron":  # (NemotronModel.modify_tensors: the LayerNorm1P weights as 1 + w)
        import copy
        model = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("norm.weight"):
                    p.add_(1.0)
    if getattr(c, "qk_layernorm", False):  # StableLMModel stacks the per-head norms into attn_q_norm / attn_k_norm
        import numpy as np
        sd = model.state_dict()
        per_head = [n for n in sd if ".q_layernorm.norms." in n or ".k_layernorm.norms." in n]
        skip = tuple(skip) + tuple(per_head)
        for layer in range(c.num_hidden_layers):
            for which, heads in (("q", c.num_attention_heads), ("k", c.num_key_value_heads)):
                stacked = torch.stack([sd[f"model.layers.{layer}.self_attn.{which}_layernorm.norms.{h}.weight"]
                                       for h in range(heads)]).to(torch.float32)
                w.add_tensor(f"blk.{layer}.attn_{which}_norm.weight", np.ascontiguousarray(stacked.numpy()))
    _add_block_tensors(w, model, glob, names, None, None, skip=skip)
    _finish(w)


def _add_block_tensors(w, model, glob, names, qkv_module, qkv_fn, skip=(), also_output=None):
    """The model's tensors under llama.cpp's names, float32, in state-dict order: `glob` maps
    whole-model names, `names` maps a block's module (after "<prefix>.h.N.") to its GGUF name;
    the fused q/k/v goes through qkv_fn (the converter's reorder). `also_output`: a global
    tensor written a second time as output.weight (the tied head llama.cpp's bloom expects)."""
    import numpy as np
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.float32)
        if name in skip:
            continue
        if name in glob:
            out = glob[name]
            if out == also_output:
                w.add_tensor("output.weight", np.ascontiguousarray(t.numpy()))
        else:
            _, _, layer, rest = name.split(".", 3)
            mod, suffix = rest.rsplit(".", 1)
            if mod == qkv_module:
                t = qkv_fn(t)
            out = f"blk.{layer}.{names[mod]}.{suffix}"
        w.add_tensor(out, np.ascontiguousarray(t.numpy()))


def _add_global_tensor(w, name: str, t, tied: bool, final_norm: str, final_norm_gguf: str) -> bool:
    """The whole-model tensors under llama.cpp's names: the embeddings, the final norm
    (`final_norm` -> `final_norm_gguf`), the head unless tied (then left out). False for others."""
    import numpy as np
    out = {"lm_head.weight": None if tied else "output.weight", "model.embed_tokens.weight": "token_embd.weight",
           final_norm: final_norm_gguf + ".weight"}
    if name not in out:
        return False
    if out[name]:
        w.add_tensor(out[name], np.ascontiguousarray(t))
    return True


def _add_fused_experts(w, layer, rest: str, t) -> bool:
    """transformers' fused experts (`rest` after the MLP module's name) as llama.cpp's 3-D exps
    tensors: experts.gate_up_proj (E, 2F, C), gate rows then up rows, into ffn_gate_exps and
    ffn_up_exps; experts.down_proj (E, C, F) as ffn_down_exps. False for any other tensor."""
    import numpy as np
    if rest == "experts.gate_up_proj":
        F = t.shape[1] // 2
        w.add_tensor(f"blk.{layer}.ffn_gate_exps.weight", np.ascontiguousarray(t[:, :F]))
        w.add_tensor(f"blk.{layer}.ffn_up_exps.weight", np.ascontiguousarray(t[:, F:]))
        return True
    if rest == "experts.down_proj":
        w.add_tensor(f"blk.{layer}.ffn_down_exps.weight", np.ascontiguousarray(t))
        return True
    return False


def _add_test_vocab(w, V: int):
    """The fixtures' stand-in vocabulary: <unk> <s> </s> and byte tokens, no BOS added."""
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(V - 3)])
    w.add_token_scores([0.0] * V)
    w.add_token_types([2, 3, 3] + [6] * (V - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)


def _finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _qkv_per_head_to_contiguous(t, n_head: int):
    """A per-head fused query_key_value (weight or bias) as llama.cpp's gptneox/bloom
    converters lay it out: all q rows, then all k, then all v."""
    q = t.reshape(n_head, 3, t.shape[0] // (3 * n_head), *t.shape[1:])
    return torch.cat([q[:, i].reshape(-1, *t.shape[1:]) for i in range(3)], dim=0)


def write_gguf_gpt2(model, path: Path, starcoder: bool = False):
    """As convert_hf_to_gguf.py's GPT2Model: Conv1D weights transposed to (out, in). With `starcoder`, as
    its StarCoderModel writes GPTBigCodeForCausalLM (conversion/starcoder.py): nn.Linear weights as they
    are, feed_forward_length 4 x n_embd, head_count_kv 1 (multi-query)."""
    import gguf
    import numpy as np
    c = model.config
    if starcoder:
        assert c.multi_query and (c.n_inner or 4 * c.n_embd) == 4 * c.n_embd, "the converter's starcoder form"
    w = gguf.GGUFWriter(str(path), "starcoder" if starcoder else "gpt2")
    w.add_context_length(c.n_positions)
    w.add_embedding_length(c.n_embd)
    w.add_feed_forward_length(4 * c.n_embd if starcoder else c.n_inner or 4 * c.n_embd)
    w.add_block_count(c.n_layer)
    w.add_head_count(c.n_head)
    if starcoder:
        w.add_head_count_kv(1)
    w.add_layer_norm_eps(c.layer_norm_epsilon)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_test_vocab(w, c.vocab_size)
    names = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.float32)
        if name == "lm_head.weight":
            continue  # tied
        glob = {"transformer.wte.weight": "token_embd.weight", "transformer.wpe.weight": "position_embd.weight",
                "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias"}
        if name in glob:
            out = glob[name]
        else:
            _, _, layer, rest = name.split(".", 3)
            mod, suffix = rest.rsplit(".", 1)
            if suffix == "weight" and mod in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj") and not starcoder:
                t = t.t()
            out = f"blk.{layer}.{names[mod]}.{suffix}"
        w.add_tensor(out, np.ascontiguousarray(t.numpy()))
    _finish(w)


def write_gguf_qwen35(model, path: Path, arch: str = "qwen35"):
    """As llama.cpp's converter writes Qwen3.5 (conversion/qwen.py: Qwen3NextModel,
    _LinearAttentionVReorderBase, Qwen3_5TextModel): the (1 + w) RMSNorms' weights as 1 + w
    (not the DeltaNet's gated norm), A_log as ssm_a = -exp(A_log), dt_bias as ssm_dt.bias, the
    conv taps squeezed to (channels, kernel), the DeltaNet's value heads reordered from grouped
    by key head to tiled, every full_attention_interval-th layer attending."""
    import gguf
    import numpy as np
    c = model.config
    hd = c.head_dim
    Hk, Hv, dk, dv = c.linear_num_key_heads, c.linear_num_value_heads, c.linear_key_head_dim, c.linear_value_head_dim
    assert dk == dv, "llama.cpp's qwen35 graph takes key and value heads of one size"
    kinds = c.layer_types
    interval = kinds.index("full_attention") + 1
    assert all((t == "full_attention") == ((i + 1) % interval == 0) for i, t in enumerate(kinds)), kinds
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    if getattr(c, "intermediate_size", None):  # (Qwen3.5-MoE's config has none: the key is left out)
        w.add_feed_forward_length(c.intermediate_size)
    if arch in ("qwen35moe", "qwen3next"):  # as Qwen2MoeModel writes them
        w.add_expert_count(c.num_experts)
        w.add_expert_used_count(c.num_experts_per_tok)
        w.add_expert_feed_forward_length(c.moe_intermediate_size)
        w.add_expert_shared_feed_forward_length(c.shared_expert_intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(hd)
    w.add_value_length(hd)
    rp = c.rope_parameters
    w.add_rope_dimension_count(int(hd * rp.get("partial_rotary_factor", 0.25)))
    if arch != "qwen3next":  # (Qwen3-Next's rotary is the plain one)
        w.add_rope_dimension_sections(list(rp.get("mrope_section", [11, 11, 10])) + [0])
    w.add_rope_freq_base(rp["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_ssm_conv_kernel(c.linear_conv_kernel_dim)
    w.add_ssm_state_size(dk)
    w.add_ssm_group_count(Hk)
    w.add_ssm_time_step_rank(Hv)
    w.add_ssm_inner_size(dv * Hv)
    w.add_full_attention_interval(interval)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_test_vocab(w, c.vocab_size)
    R = Hv // Hk

    def tiled(t, dim, block):  # value heads grouped by key head -> tiled over the key heads
        if arch == "qwen3next":  # (Qwen3NextModel keeps them grouped)
            return np.ascontiguousarray(t)
        shape = list(t.shape)
        t = t.reshape(shape[:dim] + [Hk, R, block] + shape[dim + 1:])
        return np.ascontiguousarray(np.swapaxes(t, dim, dim + 1)).reshape(shape)

    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
             "linear_attn.in_proj_qkv": "attn_qkv", "linear_attn.in_proj_z": "attn_gate",
             "linear_attn.in_proj_b": "ssm_beta", "linear_attn.in_proj_a": "ssm_alpha",
             "linear_attn.norm": "ssm_norm", "linear_attn.out_proj": "ssm_out", "linear_attn.conv1d": "ssm_conv1d",
             "mlp.gate": "ffn_gate_inp", "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
             "mlp.shared_expert.up_proj": "ffn_up_shexp", "mlp.shared_expert.down_proj": "ffn_down_shexp",
             "mlp.shared_expert_gate": "ffn_gate_inp_shexp"}
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.float32).numpy()
        if name.endswith("norm.weight") and not name.endswith("linear_attn.norm.weight"):
            t = t + 1.0
        if _add_global_tensor(w, name, t, c.tie_word_embeddings, "model.norm.weight", "output_norm"):
            continue
        _, _, layer, rest = name.split(".", 3)
        if _add_fused_experts(w, layer, rest.removeprefix("mlp."), t):
            continue
        if rest == "mlp.shared_expert_gate.weight":  # (1, C): one row of n_embd
            t = t.reshape(-1)
        if rest == "linear_attn.A_log":
            w.add_tensor(f"blk.{layer}.ssm_a", tiled(-np.exp(t), 0, 1))
            continue
        if rest == "linear_attn.dt_bias":
            w.add_tensor(f"blk.{layer}.ssm_dt.bias", tiled(t, 0, 1))
            continue
        mod, suffix = rest.rsplit(".", 1)
        if mod == "linear_attn.in_proj_qkvz":  # per key head (q, k, v, z) rows -> attn_qkv (all q, k, v), attn_gate
            G = 2 * dk + 2 * R * dv
            g = t.reshape(Hk, G, -1)
            q, k, v, z = g[:, :dk], g[:, dk:2 * dk], g[:, 2 * dk:2 * dk + R * dv], g[:, 2 * dk + R * dv:]
            w.add_tensor(f"blk.{layer}.attn_qkv.weight",
                         np.ascontiguousarray(np.concatenate([x.reshape(-1, t.shape[1]) for x in (q, k, v)], axis=0)))
            w.add_tensor(f"blk.{layer}.attn_gate.weight", np.ascontiguousarray(z.reshape(-1, t.shape[1])))
            continue
        if mod == "linear_attn.in_proj_ba":  # (unchanged: per key head its b then its a)
            w.add_tensor(f"blk.{layer}.ssm_ba.weight", np.ascontiguousarray(t))
            continue
        if mod == "linear_attn.conv1d":
            t = t.reshape(t.shape[0], t.shape[2])
            t = np.concatenate([t[:2 * Hk * dk], tiled(t[2 * Hk * dk:], 0, dv)], axis=0)
        elif mod == "linear_attn.in_proj_qkv":
            t = np.concatenate([t[:2 * Hk * dk], tiled(t[2 * Hk * dk:], 0, dv)], axis=0)
        elif mod == "linear_attn.in_proj_z":
            t = tiled(t, 0, dv)
        elif mod in ("linear_attn.in_proj_b", "linear_attn.in_proj_a"):
            t = tiled(t, 0, 1)
        elif mod == "linear_attn.out_proj":
            t = tiled(t, 1, dv)
        w.add_tensor(f"blk.{layer}.{names[mod]}.{suffix}", np.ascontiguousarray(t))
    _finish(w)


def write_gguf_granitehybrid(model, path: Path):
    """As llama.cpp's converter writes Granite 4.0 (conversion/granite.py: GraniteHybridModel, with
    Mamba2Model's tensors): head_count_kv one value per layer, 0 on the Mamba layers; the ssm.* sizes
    (time_step_rank = the heads); granite's four multipliers; feed_forward_length the HF
    intermediate_size, expert_count / expert_used_count as configured and the shared_mlp's width as
    expert_shared_feed_forward_length; rope.scaling.finetuned false without positions (the converter
    writes false for every hybrid: our _moe fixture rotates, which llama.cpp's loader honours with
    true) and the context then 2**20; q/k rows permuted as its llama converter does; ssm_a =
    -exp(A_log) and ssm_d as (heads, 1), ssm_norm as (groups, inner / groups), the conv taps squeezed;
    shared_mlp.input_linear split into ffn_gate / ffn_up (_shexp beside experts)."""
    import gguf
    import numpy as np
    c = model.config
    bamba = c.model_type == "bamba"
    if bamba:  # (BambaForCausalLM: the rotary on, rope.dimension_count from attn_rotary_emb, no multipliers)
        mamba = [i not in (c.attn_layer_indices or []) for i in range(c.num_hidden_layers)]
    else:
        mamba = [t in ("mamba", "linear_attention") for t in c.layer_types]
    rope = bamba or c.position_embedding_type == "rope"
    moe = getattr(c, "num_local_experts", 0) > 0
    w = gguf.GGUFWriter(str(path), "granitehybrid")
    w.add_context_length(c.max_position_embeddings if rope else 2 ** 20)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv([0 if m else c.num_key_value_heads for m in mamba])
    w.add_rope_dimension_count(getattr(c, "attn_rotary_emb", None) or c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_rope_scaling_finetuned(rope)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    if not bamba:
        w.add_attention_scale(c.attention_multiplier)
        w.add_embedding_scale(c.embedding_multiplier)
        w.add_residual_scale(c.residual_multiplier)
        w.add_logit_scale(c.logits_scaling)
        w.add_expert_count(c.num_local_experts)
        w.add_expert_used_count(c.num_experts_per_tok)
        w.add_expert_shared_feed_forward_length(c.shared_intermediate_size)
    w.add_ssm_conv_kernel(c.mamba_d_conv)
    w.add_ssm_state_size(c.mamba_d_state)
    w.add_ssm_group_count(c.mamba_n_groups)
    w.add_ssm_inner_size(c.mamba_expand * c.hidden_size)
    w.add_ssm_time_step_rank(c.mamba_n_heads)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_test_vocab(w, c.vocab_size)

    def permute(t, n_head):  # (LlamaModel.permute)
        return t.reshape(n_head, 2, t.shape[0] // n_head // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)
    shexp = "_shexp" if moe else ""
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "mamba.in_proj": "ssm_in", "mamba.conv1d": "ssm_conv1d", "mamba.norm": "ssm_norm",
             "mamba.out_proj": "ssm_out", "shared_mlp.output_linear": "ffn_down" + shexp,
             "pre_ff_layernorm": "ffn_norm", "feed_forward.gate_proj": "ffn_gate", "feed_forward.up_proj": "ffn_up",
             "feed_forward.down_proj": "ffn_down"}
    ng, inner = c.mamba_n_groups, c.mamba_expand * c.hidden_size
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.float32).numpy()
        if _add_global_tensor(w, name, t, c.tie_word_embeddings,
                              "model.final_layernorm.weight" if bamba else "model.norm.weight", "output_norm"):
            continue
        _, _, layer, rest = name.split(".", 3)
        if _add_fused_experts(w, layer, rest.removeprefix("block_sparse_moe."), t):
            continue
        if rest == "block_sparse_moe.router.weight":
            w.add_tensor(f"blk.{layer}.ffn_gate_inp.weight", np.ascontiguousarray(t))
            continue
        if rest == "mamba.A_log":
            w.add_tensor(f"blk.{layer}.ssm_a", np.ascontiguousarray(-np.exp(t).reshape(-1, 1)))
            continue
        if rest == "mamba.D":
            w.add_tensor(f"blk.{layer}.ssm_d", np.ascontiguousarray(t.reshape(-1, 1)))
            continue
        if rest == "mamba.dt_bias":
            w.add_tensor(f"blk.{layer}.ssm_dt.bias", np.ascontiguousarray(t))
            continue
        if rest == "shared_mlp.input_linear.weight":
            F = t.shape[0] // 2
            w.add_tensor(f"blk.{layer}.ffn_gate{shexp}.weight", np.ascontiguousarray(t[:F]))
            w.add_tensor(f"blk.{layer}.ffn_up{shexp}.weight", np.ascontiguousarray(t[F:]))
            continue
        mod, suffix = rest.rsplit(".", 1)
        if mod == "mamba.conv1d" and suffix == "weight":
            t = t.reshape(t.shape[0], t.shape[2])
        elif mod == "mamba.norm":
            t = t.reshape(ng, inner // ng)
        elif mod == "self_attn.q_proj":
            t = permute(t, c.num_attention_heads)
        elif mod == "self_attn.k_proj":
            t = permute(t, c.num_key_value_heads)
        w.add_tensor(f"blk.{layer}.{names[mod]}.{suffix}", np.ascontiguousarray(t))
    _finish(w)


def write_gguf_lfm2(model, path: Path, arch: str = "lfm2"):
    """As llama.cpp's converter writes LFM2 (conversion/lfm2.py: LFM2Model): head_count_kv one
    value per layer, 0 on the short-conv layers; shortconv.l_cache; feed_forward_length the MLP's
    adjusted width; the conv taps squeezed to (channels, taps), float32; the final norm
    (embedding_norm) as token_embd_norm; the tied head left out. lfm2moe (LFM2MoeModel): the
    dense lead, expert keys with sigmoid gating, the router as ffn_gate_inp, expert_bias as
    exp_probs_b.bias, the experts stacked as ffn_{gate,up,down}_exps."""
    import gguf
    import numpy as np
    c = model.config
    moe = arch == "lfm2moe"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(model.model.layers[0].feed_forward.w1.out_features)
    if moe:
        w.add_expert_count(c.num_experts)
        w.add_expert_used_count(c.num_experts_per_tok)
        w.add_expert_feed_forward_length(c.moe_intermediate_size)
        w.add_leading_dense_block_count(c.num_dense_layers)
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv([c.num_key_value_heads if t != "conv" else 0 for t in c.layer_types])
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_shortconv_l_cache(c.conv_L_cache)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_test_vocab(w, c.vocab_size)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.out_proj": "attn_output", "self_attn.q_layernorm": "attn_q_norm",
             "self_attn.k_layernorm": "attn_k_norm", "feed_forward.w1": "ffn_gate", "feed_forward.w3": "ffn_up",
             "feed_forward.w2": "ffn_down", "operator_norm": "attn_norm", "ffn_norm": "ffn_norm",
             "conv.conv": "shortconv.conv", "conv.in_proj": "shortconv.in_proj", "conv.out_proj": "shortconv.out_proj"}
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.float32).numpy()
        if _add_global_tensor(w, name, t, c.tie_word_embeddings, "model.embedding_norm.weight", "token_embd_norm"):
            continue
        _, _, layer, rest = name.split(".", 3)
        if _add_fused_experts(w, layer, rest.removeprefix("feed_forward."), t):
            continue
        if rest == "feed_forward.expert_bias":
            w.add_tensor(f"blk.{layer}.exp_probs_b.bias", np.ascontiguousarray(t))
            continue
        if rest == "feed_forward.gate.weight":
            w.add_tensor(f"blk.{layer}.ffn_gate_inp.weight", np.ascontiguousarray(t))
            continue
        mod, suffix = rest.rsplit(".", 1)
        if mod == "conv.conv":
            t = t.reshape(t.shape[0], t.shape[2])
        w.add_tensor(f"blk.{layer}.{names[mod]}.{suffix}", np.ascontiguousarray(t))
    _finish(w)


def write_gguf_gemma4(model, path: Path):
    """As convert_hf_to_gguf.py's Gemma4Model (gguf-py 0.19) writes a Gemma 4 language model: the
    full layers' geometry under the plain keys and the sliding ones' under _swa, key/value heads
    and MLP widths per layer where they differ, the proportional rope as rope_freqs (1 for each
    rotated pair, 1e30 for the others), plain norm weights, layer_scalar as layer_output_scale,
    the router's scales as ffn_gate_inp.scale / ffn_down_exps.scale, the experts fused."""
    import gguf
    import numpy as np
    c = model.config
    L = c.num_hidden_layers
    sd = model.state_dict()
    # The full layers' geometry as the Hub's config.json states it (global_head_dim,
    # num_global_key_value_heads), which transformers 5.23 saves as per_layer_config: read
    # from the layers themselves.
    def geometry(kind):
        for i, t in enumerate(c.layer_types):
            k = sd.get(f"model.layers.{i}.self_attn.k_proj.weight")
            if t == kind and k is not None:
                hd = sd[f"model.layers.{i}.self_attn.q_proj.weight"].shape[0] // c.num_attention_heads
                return hd, k.shape[0] // hd
        sys.exit(f"write_gguf_gemma4: no {kind} layer with keys")
    head_dim, kv_slide = geometry("sliding_attention")
    global_head_dim, kv_full = geometry("full_attention")
    w = gguf.GGUFWriter(str(path), "gemma4")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(L)
    shared = c.num_kv_shared_layers or 0
    if c.use_double_wide_mlp:
        w.add_feed_forward_length([c.intermediate_size if il < L - shared else 2 * c.intermediate_size
                                   for il in range(L)])
    else:
        w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    if kv_full != kv_slide:  # (the converter: whenever num_global_key_value_heads is set)
        w.add_head_count_kv([kv_slide if t == "sliding_attention" else kv_full for t in c.layer_types])
    else:
        w.add_head_count_kv(kv_slide)
    w.add_key_length(global_head_dim)
    w.add_value_length(global_head_dim)
    w.add_key_length_swa(head_dim)
    w.add_value_length_swa(head_dim)
    w.add_rope_dimension_count(global_head_dim)
    w.add_rope_dimension_count_swa(head_dim)
    rp = c.rope_parameters
    w.add_rope_freq_base(rp["full_attention"]["rope_theta"])
    w.add_rope_freq_base_swa(rp["sliding_attention"]["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_sliding_window(c.sliding_window)
    w.add_sliding_window_pattern([t == "sliding_attention" for t in c.layer_types])
    w.add_shared_kv_layers(shared)
    w.add_embedding_length_per_layer_input(c.hidden_size_per_layer_input or 0)
    if c.final_logit_softcapping:
        w.add_final_logit_softcapping(c.final_logit_softcapping)
    if c.enable_moe_block:
        w.add_expert_count(c.num_experts)
        w.add_expert_used_count(c.top_k_experts)
        w.add_expert_feed_forward_length(c.moe_intermediate_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_test_vocab(w, c.vocab_size)
    assert rp["full_attention"]["rope_type"] == "proportional"
    n_rot = int(global_head_dim * rp["full_attention"]["partial_rotary_factor"] / 2)
    w.add_tensor("rope_freqs.weight", np.array([1.0] * n_rot + [1e30] * (global_head_dim // 2 - n_rot), dtype=np.float32))
    glob = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "model.embed_tokens_per_layer.weight": "per_layer_token_embd.weight",
            "model.per_layer_model_projection.weight": "per_layer_model_proj.weight",
            "model.per_layer_projection_norm.weight": "per_layer_proj_norm.weight"}
    names = {"self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
             "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight", "input_layernorm.weight": "attn_norm.weight",
             "post_attention_layernorm.weight": "post_attention_norm.weight",
             "pre_feedforward_layernorm.weight": "ffn_norm.weight",
             "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
             "pre_feedforward_layernorm_2.weight": "pre_ffw_norm_2.weight",
             "post_feedforward_layernorm_1.weight": "post_ffw_norm_1.weight",
             "post_feedforward_layernorm_2.weight": "post_ffw_norm_2.weight",
             "per_layer_input_gate.weight": "inp_gate.weight", "per_layer_projection.weight": "proj.weight",
             "post_per_layer_input_norm.weight": "post_norm.weight", "layer_scalar": "layer_output_scale.weight",
             "router.proj.weight": "ffn_gate_inp.weight", "router.scale": "ffn_gate_inp.scale",
             "router.per_expert_scale": "ffn_down_exps.scale", "experts.gate_up_proj": "ffn_gate_up_exps.weight",
             "experts.down_proj": "ffn_down_exps.weight"}
    for name, t in sd.items():
        t = t.detach().to(torch.float32).numpy()
        if name == "lm_head.weight":
            assert c.tie_word_embeddings  # (the converter writes no output.weight: Gemma 4 ties its head)
            continue
        if name in glob:
            w.add_tensor(glob[name], np.ascontiguousarray(t))
            continue
        _, _, layer, rest = name.split(".", 3)
        if rest not in names:
            sys.exit(f"write_gguf_gemma4: no GGUF name for {name}")
        w.add_tensor(f"blk.{layer}.{names[rest]}", np.ascontiguousarray(t))
    _finish(w)


def write_gguf_deepseek2(model, path: Path, legacy: bool = False):
    """As convert_hf_to_gguf.py's DeepseekV2Model writes DeepSeek-V2 / V3: llama.cpp's MLA form
    (head_count_kv 1, key_length kv_lora_rank + rope dims, value_length kv_lora_rank, the per-head
    sizes under key_length_mla / value_length_mla), kv_b_proj split per head into attn_k_b
    (transposed: (heads, kv_lora_rank, nope)) and attn_v_b ((heads, v, kv_lora_rank)), no q/k row
    permutation (llama.cpp's deepseek2 rotates adjacent pairs), experts stacked, the score bias as
    exp_probs_b.bias, 0.1 x mscale_all_dim as yarn_log_multiplier.
    legacy: the form of the converter before llama.cpp's MLA split (early 2025): head_count_kv the
    heads, key_length / value_length the per-head sizes, no *_mla keys, kv_b_proj whole (attn_kv_b)."""
    import gguf
    import numpy as np
    c = model.config
    H, nope, rope, v, kvr = (c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim,
                             c.kv_lora_rank)
    w = gguf.GGUFWriter(str(path), "deepseek2")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(H)
    w.add_head_count_kv(H if legacy else 1)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    rp = c.rope_parameters
    w.add_rope_freq_base(rp["rope_theta"])
    w.add_expert_count(c.n_routed_experts)
    w.add_expert_used_count(c.num_experts_per_tok)
    if getattr(c, "n_group", None) is not None:
        w.add_expert_group_count(c.n_group)
        w.add_expert_group_used_count(c.topk_group)
    sigmoid = c.model_type == "deepseek_v3"
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID if sigmoid else gguf.ExpertGatingFuncType.SOFTMAX)
    if rp.get("rope_type") == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rp["factor"])
        w.add_rope_scaling_orig_ctx_len(rp["original_max_position_embeddings"])
        if "beta_fast" in rp:
            w.add_rope_scaling_yarn_beta_fast(rp["beta_fast"])
        if "beta_slow" in rp:
            w.add_rope_scaling_yarn_beta_slow(rp["beta_slow"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_leading_dense_block_count(c.first_k_dense_replace)
    w.add_vocab_size(c.vocab_size)
    if c.q_lora_rank is not None:
        w.add_q_lora_rank(c.q_lora_rank)
    w.add_kv_lora_rank(kvr)
    if legacy:
        w.add_key_length(nope + rope)
        w.add_value_length(v)
    else:
        w.add_key_length(kvr + rope)
        w.add_value_length(kvr)
        w.add_key_length_mla(nope + rope)
        w.add_value_length_mla(v)
    w.add_expert_feed_forward_length(c.moe_intermediate_size)
    w.add_expert_shared_count(c.n_shared_experts)
    w.add_expert_weights_scale(c.routed_scaling_factor)
    if getattr(c, "norm_topk_prob", False) and sigmoid:
        w.add_expert_weights_norm(True)
    w.add_rope_dimension_count(rope)
    if rp.get("rope_type") == "yarn" and rp.get("mscale_all_dim"):
        w.add_rope_scaling_yarn_log_mul(0.1 * rp["mscale_all_dim"])
    _add_test_vocab(w, c.vocab_size)
    names = {"self_attn.q_proj": "attn_q", "self_attn.q_a_proj": "attn_q_a", "self_attn.q_a_layernorm": "attn_q_a_norm",
             "self_attn.q_b_proj": "attn_q_b", "self_attn.kv_a_proj_with_mqa": "attn_kv_a_mqa",
             "self_attn.kv_a_layernorm": "attn_kv_a_norm", "self_attn.o_proj": "attn_output",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "mlp.gate": "ffn_gate_inp",
             "mlp.shared_experts.gate_proj": "ffn_gate_shexp", "mlp.shared_experts.up_proj": "ffn_up_shexp",
             "mlp.shared_experts.down_proj": "ffn_down_shexp"}
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.float32).numpy()
        if name == "lm_head.weight":
            w.add_tensor("output.weight", t)
            continue
        if name == "model.embed_tokens.weight":
            w.add_tensor("token_embd.weight", t)
            continue
        if name == "model.norm.weight":
            w.add_tensor("output_norm.weight", t)
            continue
        _, _, layer, rest = name.split(".", 3)
        mod, suffix = rest.rsplit(".", 1)
        if mod == "mlp.experts" and suffix == "gate_up_proj":  # (E, 2F, C): gate rows, then up rows
            F = t.shape[1] // 2
            w.add_tensor(f"blk.{layer}.ffn_gate_exps.weight", np.ascontiguousarray(t[:, :F]))
            w.add_tensor(f"blk.{layer}.ffn_up_exps.weight", np.ascontiguousarray(t[:, F:]))
            continue
        if mod == "mlp.experts" and suffix == "down_proj":
            w.add_tensor(f"blk.{layer}.ffn_down_exps.weight", np.ascontiguousarray(t))
            continue
        if mod == "mlp.gate" and suffix == "e_score_correction_bias":
            w.add_tensor(f"blk.{layer}.exp_probs_b.bias", np.ascontiguousarray(t))
            continue
        if mod == "self_attn.kv_b_proj" and legacy:
            w.add_tensor(f"blk.{layer}.attn_kv_b.weight", np.ascontiguousarray(t))
            continue
        if mod == "self_attn.kv_b_proj":  # per head [k_nope | v] rows -> attn_k_b (transposed), attn_v_b
            kv = t.reshape(H, nope + v, kvr)
            w.add_tensor(f"blk.{layer}.attn_k_b.weight", np.ascontiguousarray(kv[:, :nope].transpose(0, 2, 1)))
            w.add_tensor(f"blk.{layer}.attn_v_b.weight", np.ascontiguousarray(kv[:, nope:]))
            continue
        w.add_tensor(f"blk.{layer}.{names[mod]}.{suffix}", np.ascontiguousarray(t))
    _finish(w)


def write_gguf(model, arch: str, path: Path, mxfp4_experts: bool = False):
    if arch in ("qwen35", "qwen35moe", "qwen3next"):
        return write_gguf_qwen35(model, path, arch)
    if arch == "deepseek2":
        return write_gguf_deepseek2(model, path)
    if arch == "gemma4":
        return write_gguf_gemma4(model, path)
    if arch in ("lfm2", "lfm2moe"):
        return write_gguf_lfm2(model, path, arch)
    if arch == "granitehybrid":
        return write_gguf_granitehybrid(model, path)
    if arch in ("nemotron_h", "nemotron_h_moe"):
        return write_gguf_nemotron_h(model, path)
    if arch == "mamba2":
        return write_gguf_mamba2(model, path)
    if arch == "mamba":
        return write_gguf_mamba(model, path)
    if arch == "jamba":
        return write_gguf_jamba(model, path)
    import gguf
    import numpy as np
    c = model.config

    def add_expert(name, t):
        """A 3-D expert tensor as stored: float32, or (mxfp4_experts) llama.cpp's MXFP4 blocks
        made by gguf-py's own quantizer."""
        t = np.ascontiguousarray(t, dtype=np.float32)
        if not mxfp4_experts:
            w.add_tensor(name, t)
        else:
            q = gguf.quants.quantize(t, gguf.GGMLQuantizationType.MXFP4)
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.MXFP4)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    # (Llama4Model: the dense MLPs' width; the experts' below)
    w.add_feed_forward_length(c.intermediate_size_mlp if arch == "llama4" else c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    w.add_key_length(hd)
    w.add_value_length(hd)
    rp = c.rope_parameters
    # convert_hf_to_gguf.py's Phi3MiniModel: int(partial_rotary_factor * hidden) // heads
    w.add_rope_dimension_count(int(rp.get("partial_rotary_factor", 1.0) * c.hidden_size) // c.num_attention_heads
                               if arch == "phi3" else int(hd * rp.get("partial_rotary_factor", 1.0))
                               if arch in ("glm4", "glm4moe", "minimax-m2") else hd)
    if arch == "olmo2" and isinstance(rp, dict) and "full_attention" in rp:  # OLMo 3, as Olmo2Model converts it
        w.add_sliding_window(c.sliding_window)
        w.add_sliding_window_pattern([t == "sliding_attention" for t in c.layer_types])
        rp = rp["full_attention"]
    if arch == "gemma3":  # one rotary per layer type: the global one is the main one
        w.add_sliding_window(c.sliding_window)
        w.add_sliding_window_pattern([t == "sliding_attention" for t in c.layer_types])
        w.add_rope_freq_base_swa(rp["sliding_attention"]["rope_theta"])
        rp = rp["full_attention"]
    if arch in ("hunyuan-dense", "hunyuan-moe") and rp.get("alpha"):  # as convert_hf_to_gguf.py: the stretched base
        rp = {"rope_type": "default", "rope_theta": rp["rope_theta"] * rp["alpha"] ** (hd / (hd - 2))}
    w.add_rope_freq_base(rp["rope_theta"])
    rope_freqs = None
    if rp.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rp["factor"])
    elif rp.get("rope_type") == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rp["factor"])
        w.add_rope_scaling_orig_ctx_len(rp["original_max_position_embeddings"])
    elif rp.get("rope_type") == "llama3":  # as convert_hf_to_gguf.py's LlamaModel: rope_freqs.weight
        import math
        hd_ = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        freqs = 1.0 / (rp["rope_theta"] ** (torch.arange(0, hd_, 2, dtype=torch.float32) / hd_))
        factor, lo, hi, old = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"], rp["original_max_position_embeddings"]
        out = []
        for f in freqs.tolist():
            wl = 2 * math.pi / f
            if wl < old / hi:
                out.append(1.0)
            elif wl > old / lo:
                out.append(factor)
            else:
                sm = (old / wl - lo) / (hi - lo)
                out.append(1 / ((1 - sm) / factor + sm))
        rope_freqs = np.array(out, dtype=np.float32)
    if arch == "olmo":  # as convert_hf_to_gguf.py's OlmoModel: LayerNorm eps 1e-5, the clamp
        w.add_layer_norm_eps(1e-5)
        if c.clip_qkv is not None:
            w.add_clamp_kqv(c.clip_qkv)
    else:
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    if arch in ("granite", "granitemoe"):  # as convert_hf_to_gguf.py's GraniteModel (GraniteMoeModel derives from it)
        w.add_attention_scale(c.attention_multiplier)
        w.add_embedding_scale(c.embedding_multiplier)
        w.add_residual_scale(c.residual_multiplier)
        w.add_logit_scale(c.logits_scaling)
    rope_factors = None
    if arch == "phi3":  # as Phi3MiniModel: window 0 = none, the original context, longrope as tensors
        import math
        w.add_sliding_window(c.sliding_window or 0)
        orig = c.original_max_position_embeddings
        w.add_rope_scaling_orig_ctx_len(orig)
        if rp.get("long_factor"):
            scale = c.max_position_embeddings / orig
            w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0)
            rope_factors = (np.array(rp["long_factor"], dtype=np.float32), np.array(rp["short_factor"], dtype=np.float32))
    moe = hasattr(c, "num_experts_per_tok")
    if moe:  # as convert_hf_to_gguf.py's TextModel / Qwen2MoeModel
        w.add_expert_count(getattr(c, "num_local_experts", None) or c.num_experts)
        w.add_expert_used_count(c.num_experts_per_tok)
        if getattr(c, "moe_intermediate_size", None):
            w.add_expert_feed_forward_length(c.moe_intermediate_size)
        if getattr(c, "shared_expert_intermediate_size", None):
            w.add_expert_shared_feed_forward_length(c.shared_expert_intermediate_size)
    if arch == "mistral3":  # as convert_hf_to_gguf.py's Ministral3Model (a LlamaModel)
        w.add_rope_scaling_yarn_beta_fast(rp["beta_fast"])
        w.add_rope_scaling_yarn_beta_slow(rp["beta_slow"])
        w.add_rope_scaling_yarn_log_mul(rp["mscale_all_dim"])
        w.add_attn_temperature_scale(rp["llama_4_scaling_beta"])
    if arch == "ernie4_5-moe":  # as convert_hf_to_gguf.py's Ernie4_5MoeModel (the shared width as it is)
        w.add_interleave_moe_layer_step(c.moe_layer_interval)
        w.add_leading_dense_block_count(c.moe_layer_start_index)
        w.add_expert_shared_count(c.moe_num_shared_experts)
        w.add_expert_shared_feed_forward_length(c.moe_intermediate_size * c.moe_num_shared_experts)
    if arch == "llama4":  # as convert_hf_to_gguf.py's Llama4Model
        w.add_expert_feed_forward_length(c.intermediate_size)
        w.add_interleave_moe_layer_step(c.interleave_moe_layer_step)
    if arch == "hunyuan-moe":  # as convert_hf_to_gguf.py's HunYuanMoEModel
        w.add_expert_feed_forward_length(c.intermediate_size)
        w.add_expert_shared_feed_forward_length(c.intermediate_size)
    if arch == "minimax-m2":  # as convert_hf_to_gguf.py's MiniMaxM2Model (TextModel: gating from scoring_func)
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        w.add_expert_feed_forward_length(c.intermediate_size)
    if arch in ("glm4moe", "dots1"):  # as convert_hf_to_gguf.py's Glm4MoeModel / Dots1Model (no MTP block in these files)
        w.add_expert_shared_count(c.n_shared_experts)
        w.add_leading_dense_block_count(c.first_k_dense_replace)
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        w.add_expert_weights_scale(c.routed_scaling_factor)
        w.add_expert_weights_norm(c.norm_topk_prob)
        w.add_expert_group_count(c.n_group)
        w.add_expert_group_used_count(c.topk_group)
    if arch == "apertus":  # as convert_hf_to_gguf.py's ApertusModel: xIELU's parameters per layer, as stored
        acts = [layer.mlp.act_fn for layer in model.model.layers]
        w.add_xielu_alpha_p([float(a.alpha_p.item()) for a in acts])
        w.add_xielu_alpha_n([float(a.alpha_n.item()) for a in acts])
        w.add_xielu_beta([float(a.beta.item()) for a in acts])
        w.add_xielu_eps([float(a.eps.item()) for a in acts])
    if arch == "gpt-oss":  # as convert_hf_to_gguf.py's GptOssModel (llama.cpp slides on even layers)
        w.add_sliding_window(c.sliding_window)
        w.add_expert_feed_forward_length(c.intermediate_size)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(c.attn_logit_softcapping)
        w.add_final_logit_softcapping(c.final_logit_softcapping)
        w.add_sliding_window(c.sliding_window)
    _add_test_vocab(w, c.vocab_size)

    def permute(t, n_head):  # llama.cpp convert_hf_to_gguf's LlamaModel.permute
        return t.reshape(n_head, 2, t.shape[0] // n_head // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up",
             # mixture of experts (llama.cpp's names; the 3-D experts are split below)
             "mlp.gate": "ffn_gate_inp", "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
             "mlp.shared_expert.up_proj": "ffn_up_shexp", "mlp.shared_expert.down_proj": "ffn_down_shexp",
             "mlp.shared_expert_gate": "ffn_gate_inp_shexp", "block_sparse_moe.router": "ffn_gate_inp"}
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs)
    if rope_factors is not None:
        w.add_tensor("rope_factors_long.weight", rope_factors[0])
        w.add_tensor("rope_factors_short.weight", rope_factors[1])
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.float32).numpy()
        if name == "lm_head.weight":
            if c.tie_word_embeddings:
                continue
            out = "output.weight"
        elif name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        elif arch == "gpt-oss" and ".mlp.experts." in name:
            # (E, C, 2F) gate/up interleaved and (E, F, C), with biases: llama.cpp's 3-D (E, out, in)
            # gate / up / down exps and their (E, out) biases, as GptOssModel splits them
            layer = name.split(".")[2]
            if name.endswith("gate_up_proj"):
                t = t.transpose(0, 2, 1)
                add_expert(f"blk.{layer}.ffn_gate_exps.weight", t[:, 0::2])
                add_expert(f"blk.{layer}.ffn_up_exps.weight", t[:, 1::2])
            elif name.endswith("gate_up_proj_bias"):
                w.add_tensor(f"blk.{layer}.ffn_gate_exps.bias", np.ascontiguousarray(t[:, 0::2]))
                w.add_tensor(f"blk.{layer}.ffn_up_exps.bias", np.ascontiguousarray(t[:, 1::2]))
            elif name.endswith("down_proj"):
                add_expert(f"blk.{layer}.ffn_down_exps.weight", t.transpose(0, 2, 1))
            else:
                w.add_tensor(f"blk.{layer}.ffn_down_exps.bias", np.ascontiguousarray(t))
            continue
        elif arch == "llama4" and ".feed_forward.experts." in name:
            # (E, C, 2F) gate | up and (E, F, C): Llama4Model transposes and splits them
            layer = name.split(".")[2]
            if name.endswith("gate_up_proj"):
                t = t.transpose(0, 2, 1)
                F = t.shape[1] // 2
                w.add_tensor(f"blk.{layer}.ffn_gate_exps.weight", np.ascontiguousarray(t[:, :F]))
                w.add_tensor(f"blk.{layer}.ffn_up_exps.weight", np.ascontiguousarray(t[:, F:]))
            else:
                w.add_tensor(f"blk.{layer}.ffn_down_exps.weight", np.ascontiguousarray(t.transpose(0, 2, 1)))
            continue
        elif name.endswith(".mlp.experts.gate_up_proj") or name.endswith(".block_sparse_moe.experts.gate_up_proj"):
            # (E, 2F, C): gate rows, then up rows (Granite MoE's module tree: block_sparse_moe)
            layer = name.split(".")[2]
            F = t.shape[1] // 2
            w.add_tensor(f"blk.{layer}.ffn_gate_exps.weight", np.ascontiguousarray(t[:, :F]))
            w.add_tensor(f"blk.{layer}.ffn_up_exps.weight", np.ascontiguousarray(t[:, F:]))
            continue
        elif name.endswith(".mlp.experts.down_proj") or name.endswith(".block_sparse_moe.experts.down_proj"):  # (E, C, F)
            w.add_tensor(f"blk.{name.split('.')[2]}.ffn_down_exps.weight", np.ascontiguousarray(t))
            continue
        elif arch == "apertus" and ".mlp.act_fn." in name:  # (the metadata above)
            continue
        else:
            _, _, layer, rest = name.split(".", 3)
            mod, suffix = rest.rsplit(".", 1)
            if arch == "apertus":  # (ApertusModel: its norms' names; q/k not permuted, undo_permute False)
                mod = {"attention_layernorm": "input_layernorm", "feedforward_layernorm": "post_attention_layernorm"}.get(mod, mod)
            if mod == "mlp.shared_expert_gate":  # (1, C): llama.cpp's is one row of n_embd
                t = t.reshape(-1)
            if arch in ("llama", "granite", "granitemoe", "smollm3", "olmo", "arcee", "mistral3") and mod == "self_attn.q_proj":
                t = permute(t, c.num_attention_heads)
            if arch in ("llama", "granite", "granitemoe", "smollm3", "olmo", "arcee", "mistral3") and mod == "self_attn.k_proj":
                t = permute(t, c.num_key_value_heads)
            gname = names.get(mod)
            if arch == "ernie4_5-moe":  # (Ernie4_5MoeModel: the shared experts; the score bias (1, E) as it is)
                gname = {"mlp.shared_experts.gate_proj": "ffn_gate_shexp", "mlp.shared_experts.up_proj": "ffn_up_shexp",
                         "mlp.shared_experts.down_proj": "ffn_down_shexp"}.get(mod, gname)
                if suffix == "e_score_correction_bias":
                    gname, suffix = "exp_probs_b", "bias"
            if arch == "seed_oss":  # (llama.cpp's seed_oss: the MLP's input norm)
                gname = {"post_attention_layernorm": "post_attention_norm"}.get(mod, gname)
            if arch == "minimax-m2" and suffix == "e_score_correction_bias":  # (on the MoE block: mlp.e_score_correction_bias)
                gname, suffix = "exp_probs_b", "bias"
            if arch == "dots1":  # (Dots1Model: the shared experts, the router's score bias)
                gname = {"mlp.shared_experts.gate_proj": "ffn_gate_shexp", "mlp.shared_experts.up_proj": "ffn_up_shexp",
                         "mlp.shared_experts.down_proj": "ffn_down_shexp"}.get(mod, gname)
                if mod == "mlp.gate" and suffix == "e_score_correction_bias":
                    gname, suffix = "exp_probs_b", "bias"
            if arch == "glm4moe":  # (Glm4MoeModel: the shared experts, the router's score bias)
                gname = {"post_attention_layernorm": "post_attention_norm", "mlp.shared_experts.gate_proj": "ffn_gate_shexp",
                         "mlp.shared_experts.up_proj": "ffn_up_shexp",
                         "mlp.shared_experts.down_proj": "ffn_down_shexp"}.get(mod, gname)
                if mod == "mlp.gate" and suffix == "e_score_correction_bias":
                    gname, suffix = "exp_probs_b", "bias"
            if arch == "glm4":  # convert_hf_to_gguf.py's Glm4Model names
                gname = {"post_self_attn_layernorm": "post_attention_norm",
                         "post_mlp_layernorm": "post_ffw_norm"}.get(mod, gname)
            if arch in ("hunyuan-dense", "hunyuan-moe"):  # (HunYuanMoEModel: also the router and the shared MLP)
                gname = {"self_attn.query_layernorm": "attn_q_norm", "self_attn.key_layernorm": "attn_k_norm",
                         "mlp.gate.wg": "ffn_gate_inp", "mlp.shared_mlp.gate_proj": "ffn_gate_shexp",
                         "mlp.shared_mlp.up_proj": "ffn_up_shexp", "mlp.shared_mlp.down_proj": "ffn_down_shexp"}.get(mod, gname)
            if arch == "llama4":  # (Llama4Model: feed_forward, its router and shared expert)
                gname = names.get(mod.replace("feed_forward.router", "mlp.gate").replace("feed_forward.", "mlp."), gname)
            if arch == "gpt-oss":  # GptOssModel's names
                gname = {"post_attention_layernorm": "post_attention_norm", "mlp.router": "ffn_gate_inp",
                         "self_attn.sinks": "attn_sinks"}.get(mod, gname)
                if mod == "self_attn.sinks" or (mod == "self_attn" and suffix == "sinks"):
                    gname, suffix = "attn_sinks", "weight"
            if arch in ("olmo2", "exaone4"):  # llama.cpp's olmo2 / exaone4 name their two norms these
                gname = {"post_attention_layernorm": "post_attention_norm",
                         "post_feedforward_layernorm": "post_ffw_norm"}.get(mod, gname)
            if arch in ("gemma2", "gemma3"):  # convert_hf_to_gguf.py's Gemma2/3 norm names
                gname = {"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
                         "post_feedforward_layernorm": "post_ffw_norm"}.get(mod, gname)
            out = f"blk.{layer}.{gname}.{suffix}"
        if arch in ("gemma", "gemma2", "gemma3") and name.endswith("norm.weight"):
            t = t + 1.0  # llama.cpp's GemmaModel stores 1 + w (convert_hf_to_gguf.py)
        w.add_tensor(out, np.ascontiguousarray(t))
    _finish(w)


# The families with an adapter on PEFT's default target modules too (default_adapter/).
# (PEFT 0.21 has no default target modules for starcoder2.)
DEFAULT_TARGET_FAMILIES = ("llama", "gpt2", "gpt_neox", "opt", "bloom", "falcon", "falcon_mq", "phi", "stablelm",
                           "gptj", "gpt_bigcode")

# The families whose bitsandbytes checkpoints are fixtures: one of each lineage, every
# block form of the announcement's families.
BNB_FAMILIES = ("llama", "qwen3", "gemma2", "phi3", "phi", "gpt2", "gpt_neox", "opt", "opt_350m", "bloom", "falcon",
                "falcon_mq", "falcon_alibi", "stablelm", "starcoder2",
                "granite", "olmo2", "gptj", "cohere", "smollm3", "cohere2", "olmo", "arcee", "nemotron",
                "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "olmo3", "exaone4", "glm4", "cohere_qk", "stablelm_qk",
                "gemma3", "gpt_oss", "ministral3", "qwen3_5_text", "gemma4_text", "gemma4_moe", "gemma4_e", "glm4_moe",
                "ernie4_5_moe", "seed_oss", "deepseek_v3", "deepseek_v2", "granitemoe", "dots1", "minimax_m2", "llama4_text", "lfm2", "lfm2_moe",
                "granitemoehybrid", "granitemoehybrid_moe", "bamba", "mamba2", "nemotron_h", "nemotron_h_moe", "gpt_bigcode", "mpt", "apertus",
                # (not mamba: transformers' MambaMixer multiplies by dt_proj.weight, which bitsandbytes leaves
                # packed -- it cannot run a quantized MambaForCausalLM; FalconMambaMixer calls the module then)
                "falcon_mamba", "jamba")


def write_bnb4_adapter(out: Path, prompt, targets):
    """PEFT's adapter on `targets` (r 4, alpha 8, B drawn N(0, 0.05^2)) over the bnb4/ checkpoint as
    transformers loads it (config._is_quantized: the quantized model's code path), saved as
    bnb4_adapter/; returns the prompt logits of that PeftModel. (Falcon-Mamba: its mixer runs dt_proj
    as a module, with the adapter, only when quantized.)"""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    import bitsandbytes as bnb
    use_generic_cpu_dequantize()
    m = AutoModelForCausalLM.from_pretrained(out / "bnb4", device_map="cpu", dtype=torch.float32).eval()
    for mod in m.modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            mod.support_avx512bf16_for_cpu = False
    torch.manual_seed(5)
    pm = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM"))
    gb = torch.Generator().manual_seed(13)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gb))
    pm.eval()
    pm.save_pretrained(out / "bnb4_adapter")
    (out / "bnb4_adapter" / "README.md").unlink(missing_ok=True)
    with torch.no_grad():
        return pm(prompt).logits[0].float().contiguous()


def write_bnb_checkpoints(out: Path, prompt, attn: str = "eager", moe: bool = False, auto=None):
    """transformers loads the float32 directory with bitsandbytes (4-bit NF4 with double
    quantization and float32 compute; LLM.int8) on CPU and saves it with save_pretrained, as
    a user's pre-quantized checkpoint is made; returns the prompt logits of each quantized
    model (the 8-bit one in eval mode: threshold 6 with outlier columns)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    auto = auto or AutoModelForCausalLM
    use_generic_cpu_dequantize()
    cfgs = {"bnb4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                       bnb_4bit_compute_dtype=torch.float32),
            "bnb8": BitsAndBytesConfig(load_in_8bit=True)}
    logits = {}
    # transformers 5.23 leaves Falcon's FalconLinear (an nn.Linear subclass) dense under
    # bitsandbytes — it warns "no linear modules were found" (naming eetq) and saves float32
    # weights beside a quantization_config — where 4.x, which wrote the Falcon checkpoints on
    # the hub, quantized them. Built as plain nn.Linear (the same product), the model is
    # quantized and saved as those checkpoints are.
    import transformers.models.falcon.modeling_falcon as modeling_falcon
    falcon_linear = modeling_falcon.FalconLinear
    modeling_falcon.FalconLinear = torch.nn.Linear
    try:
        for name, qc in cfgs.items():
            m = auto.from_pretrained(out, quantization_config=qc, device_map="cpu", dtype=torch.float32,
                                                     attn_implementation=attn).eval()
            # bitsandbytes >= 0.48 on a CPU with AVX512-BF16 repacks each Linear4bit on its first
            # forward and multiplies in bfloat16 whatever the compute dtype (and fails on rows
            # that are not whole 64-blocks); off, it takes the canonical path it takes on a GPU
            # or any other CPU (dequantize to the compute dtype + linear), the fixtures' numbers.
            import bitsandbytes as bnb
            for mod in m.modules():
                if isinstance(mod, bnb.nn.Linear4bit):
                    mod.support_avx512bf16_for_cpu = False
            if moe and name == "bnb8":
                continue  # (LLM.int8 of the experts has no bitsandbytes reference here)
            m.save_pretrained(out / name, safe_serialization=True)
            if moe:  # the experts as qlora quantizes them (experts_roundtrip), after the save
                experts_roundtrip(m, True)
            with torch.no_grad():
                logits[f"{name}_logits"] = m(prompt).logits[0].float().contiguous()
            (out / name / "generation_config.json").unlink(missing_ok=True)
    finally:
        modeling_falcon.FalconLinear = falcon_linear
    return logits


def mxfp4_pack(w):
    """(E, R, C) float -> MXFP4 blocks (E, R, C/32, 16) uint8 and scales (E, R, C/32) uint8:
    each group of 32 gets the power of two 2^e that brings its largest magnitude within 6, and
    each value the nearest FP4 (E2M1) code."""
    vals = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    E, R, C = w.shape
    g = w.reshape(E, R, C // 32, 32).to(torch.float32)
    amax = g.abs().amax(-1).clamp(min=1e-30)
    e = torch.ceil(torch.log2(amax / 6.0)).clamp(-127, 127)
    x = g / torch.exp2(e)[..., None]
    idx = (x.abs()[..., None] - vals).abs().argmin(-1)
    codes = (idx + 8 * (x < 0)).to(torch.uint8)
    blocks = (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()
    return blocks, (e + 127).to(torch.uint8).contiguous()


def write_fused_experts(out: Path, model, prompt):
    """fused/: the same model with each layer's experts stored as transformers 5 holds them
    (mlp.experts.gate_up_proj (E, 2F, C), down_proj (E, C, F): its state_dict as it is, the form
    of Qwen's own Qwen3.5-MoE files), which save_pretrained splits per expert. transformers
    loads it back to the same logits (checked), the reference being the model's own."""
    import shutil
    d = out / "fused"
    d.mkdir(exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in sd), "no fused experts in the state_dict"
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(out / "config.json", d / "config.json")
    back = auto_class_for_dir(d).from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        diff = float((back(prompt).logits[0] - model(prompt).logits[0]).abs().max())
    if diff > 1e-6:
        sys.exit(f"transformers on fused/ disagrees with the model ({diff})")


def auto_class_for_dir(d: Path):
    import transformers
    cfg = json.loads((d / "config.json").read_text())
    return transformers.AutoModelForImageTextToText if "text_config" in cfg else transformers.AutoModelForCausalLM


def write_mxfp4(out: Path, model, prompt):
    """The model with its experts in MXFP4 (gpt-oss's checkpoint form): the files written by
    hand (mxfp4_pack), the reference computed by transformers loading them (it dequantizes
    MXFP4 on a CPU), checked against the same model with the experts dequantized by
    transformers' own convert_moe_packed_tensors."""
    import copy
    import shutil
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors
    d = out / "mxfp4"
    d.mkdir(exist_ok=True)
    sd = load_file(str(out / "model.safetensors"))
    ref = copy.deepcopy(model)
    new = {}
    for k, v in sd.items():
        if k.endswith(("experts.gate_up_proj", "experts.down_proj")):
            blocks, scales = mxfp4_pack(v.transpose(1, 2).contiguous())  # (E, out, in) rows, as OpenAI stores them
            new[k + "_blocks"], new[k + "_scales"] = blocks, scales
            deq = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
            with torch.no_grad():
                ref.get_parameter(k).copy_(deq)
        else:
            new[k] = v
    save_file(new, str(d / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn",
                                  "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (d / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    with torch.no_grad():
        want = ref(prompt).logits[0].contiguous()
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        got = m(prompt).logits[0].float().contiguous()
    diff = float((got - want).abs().max())
    print(f"gpt_oss: transformers on the MXFP4 files vs convert_moe_packed_tensors: max |dlogit| {diff:.2e}")
    if diff > 1e-5:
        sys.exit(f"gpt_oss: transformers' MXFP4 load disagrees with its own dequantizer ({diff})")
    return want


def llama_cpp_logits(path: Path, prompt):
    import numpy as np
    from llama_cpp import Llama
    llm = Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, type_k=0, type_v=0,
                flash_attn=False, n_threads=2)
    llm.eval(prompt)
    return np.array(llm.scores[: len(prompt)], dtype=np.float32)


def curve_float64(family: str, out: Path, ids, labels):
    """The same 10 AdamW steps with the saved model and initial adapter in float64: where the
    float32 curve itself drifts with rounding (the gated DeltaNet fixtures: transformers'
    float32 and float64 curves part by 1.5e-3 at step 10), the truth both float32
    implementations are held to."""
    from peft import PeftModel
    # (the experts' grouped_mm takes no float64: their plain loop)
    extra = {"experts_implementation": "eager"} if is_moe(family) else {}
    m = auto_class(family).from_pretrained(out, dtype=torch.float64, attn_implementation=attn_impl(family), **extra)
    pm = PeftModel.from_pretrained(m, out / "initial_adapter", is_trainable=True)
    pm.train()
    return adamw_curve(pm, ids, labels)


def adamw_curve(pm, ids, labels):
    """The loss before each of CURVE_STEPS torch AdamW steps (lr CURVE_LR, no weight decay) on the
    adapter's parameters, on one batch."""
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=CURVE_LR, betas=(0.9, 0.999),
                            eps=1e-8, weight_decay=0.0)
    curve = []
    for _ in range(CURVE_STEPS):
        opt.zero_grad()
        step_loss = pm(input_ids=ids, labels=labels).loss
        curve.append(float(step_loss.item()))
        step_loss.backward()
        opt.step()
    return curve


def build(family: str):
    import copy

    from peft import LoraConfig, get_peft_model

    out = OUT / family
    out.mkdir(parents=True, exist_ok=True)
    model = make_model(family)
    model.save_pretrained(out, safe_serialization=True)
    for extra in ("generation_config.json",):
        (out / extra).unlink(missing_ok=True)
    if FAMILIES[family][1].get("_outer_untied_by_file"):
        cj = json.loads((out / "config.json").read_text())
        del cj["tie_word_embeddings"]
        (out / "config.json").write_text(json.dumps(cj, indent=2, sort_keys=True) + "\n")

    g = torch.Generator().manual_seed(7)
    V = COMMON["vocab_size"]
    prompt = torch.randint(3, V, (1, PROMPT_LEN), generator=g)
    with torch.no_grad():
        logits = model(prompt).logits[0].contiguous()
        gen = model.generate(prompt[:, :4], max_new_tokens=GREEDY, do_sample=False, use_cache=True,
                             eos_token_id=None, pad_token_id=0)
    greedy = gen[0, 4:].tolist()
    reset_rope_state(model)
    if is_wrapper(family):
        # The saved files, as a user's, load back to the same model (file-form names, tying).
        back = auto_class(family).from_pretrained(out, dtype=torch.float32, attn_implementation=attn_impl(family)).eval()
        with torch.no_grad():
            d = float((back(prompt).logits[0] - logits).abs().max())
        if d > 1e-6:
            sys.exit(f"{family}: transformers reloading the saved directory disagrees ({d})")

    nf4 = copy.deepcopy(model)
    nf4_roundtrip(nf4)
    with torch.no_grad():
        nf4_logits = nf4(prompt).logits[0].contiguous()

    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=FAMILIES[family][1].get("_targets", "all-linear"),
                      target_parameters=FAMILIES[family][1].get("_target_parameters"), task_type="CAUSAL_LM")
    torch.manual_seed(5)
    pm = get_peft_model(copy.deepcopy(model), lcfg)
    gb = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gb))
    pm.save_pretrained(out / "initial_adapter")
    # PEFT writes target_modules from a set (hash order): sort it so reruns write the same bytes.
    ac = out / "initial_adapter" / "adapter_config.json"
    acj = json.loads(ac.read_text())
    for key in ("target_modules", "target_parameters"):
        if isinstance(acj.get(key), list):
            acj[key] = sorted(acj[key])
    ac.write_text(json.dumps(acj, indent=2, sort_keys=True) + "\n")
    pm.eval()
    with torch.no_grad():
        peft_logits = pm(prompt).logits[0].contiguous()

    def extra_adapter(cfg, seed, name):
        """PEFT's adapter `cfg` on a copy of the model, every B drawn 0.05 N(0, 1) (seed), saved
        under out/name with target_modules sorted (PEFT writes a set): its prompt logits."""
        am = get_peft_model(copy.deepcopy(model), cfg)
        gs = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pname, p in am.named_parameters():
                if "lora_B" in pname:
                    p.copy_(0.05 * torch.randn(p.shape, generator=gs))
        am.save_pretrained(out / name)
        cpath = out / name / "adapter_config.json"
        cj = json.loads(cpath.read_text())
        cj["target_modules"] = sorted(cj["target_modules"])
        cpath.write_text(json.dumps(cj, indent=2, sort_keys=True) + "\n")
        am.eval()
        with torch.no_grad():
            return am(prompt).logits[0].contiguous()

    # PEFT's own default target modules for the model type (LoraConfig without
    # target_modules: gpt2's c_attn, query_key_value for gpt_neox/bloom/falcon, q/v for opt).
    default_logits = None
    if family in DEFAULT_TARGET_FAMILIES:
        default_logits = extra_adapter(LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM"), 13,
                                       "default_adapter")
    # A vision-language model's adapter from PEFT's all-linear, which adapts the vision tower
    # too: text-only runs leave those modules out (qlora loads it, and refuses to merge it).
    vision_logits = None
    if is_wrapper(family):
        vision_logits = extra_adapter(LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                 target_modules=FAMILIES[family][1].get("_vision_targets", "all-linear"),
                                                 task_type="CAUSAL_LM"), 17, "vision_adapter")

    ids = torch.randint(3, V, (BATCH, SEQ), generator=g)
    labels = ids.clone()
    labels[0, :3] = -100
    labels[1, 10:13] = -100
    pm.train()
    loss = pm(input_ids=ids, labels=labels).loss
    loss.backward()
    grads = {}
    for name, p in pm.named_parameters():
        if p.requires_grad:
            key = name.replace(".default", "")
            grads[key] = p.grad.detach().contiguous().clone()
    save_file(grads, str(out / "grads.safetensors"))
    # A 10-step loss curve: torch.optim.AdamW (lr 1e-3, no weight decay) on the same batch,
    # from the initial adapter, the loss before each step.
    curve = adamw_curve(pm, ids, labels)
    curve64 = curve_float64(family, out, ids, labels) if FAMILIES[family][1].get("_curve_f64") else None
    all_logits = {"logits": logits, "nf4_logits": nf4_logits, "peft_logits": peft_logits}
    if default_logits is not None:
        all_logits["peft_default_logits"] = default_logits
    if vision_logits is not None:
        all_logits["vision_peft_logits"] = vision_logits
    if family == "gpt_oss":
        all_logits["mxfp4_logits"] = write_mxfp4(out, model, prompt)
    if family in ("qwen3_5_moe", "qwen3_5_moe_gguf"):
        write_fused_experts(out, model, prompt)
    if family in BNB_FAMILIES:
        all_logits.update(write_bnb_checkpoints(out, prompt, attn_impl(family), is_moe(family), auto_class(family)))
    if "_bnb4_adapter_targets" in FAMILIES[family][1]:
        all_logits["bnb4_adapter_logits"] = write_bnb4_adapter(out, prompt, FAMILIES[family][1]["_bnb4_adapter_targets"])
    if "_long" in FAMILIES[family][1]:
        n = FAMILIES[family][1]["_long"]
        long_prompt = torch.randint(3, V, (1, n), generator=torch.Generator().manual_seed(23))
        with torch.no_grad():
            all_logits["long_last_logits"] = model(long_prompt).logits[0, -1].contiguous()
        all_logits["long_prompt"] = long_prompt[0].to(torch.float32).contiguous()  # (token ids, exact in float32)
    save_file(all_logits, str(out / "logits.safetensors"))
    ref = {
        "family": family,
        "model_type": model.config.model_type,
        "prompt": prompt[0].tolist(),
        "greedy_prompt_len": 4,
        "greedy": greedy,
        "ids": ids.tolist(),
        "labels": labels.tolist(),
        "loss": float(loss.item()),
        "r": 4,
        "lora_alpha": 8,
        "curve": curve,
        "curve_adamw": {"lr": CURVE_LR, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
        **({"curve_float64": curve64} if curve64 is not None else {}),
        "transformers": __import__("transformers").__version__,
        "peft": __import__("peft").__version__,
    }
    if family in GGUF_ARCH:
        if GGUF_ARCH[family] == "gpt2":
            write_gguf_gpt2(model, out / "model.gguf")
        elif GGUF_ARCH[family] == "starcoder":
            write_gguf_gpt2(model, out / "model.gguf", starcoder=True)
        elif GGUF_ARCH[family] == "mpt":
            write_gguf_mpt(model, out / "model.gguf")
        elif GGUF_ARCH[family] == "gptneox":
            write_gguf_neox(model, out / "model.gguf")
        elif GGUF_ARCH[family] == "bloom":
            write_gguf_bloom(model, out / "model.gguf")
        elif GGUF_ARCH[family] == "falcon":
            write_gguf_falcon(model, out / "model.gguf")
        elif GGUF_ARCH[family] == "phi2":
            write_gguf_phi2(model, out / "model.gguf")
        elif GGUF_ARCH[family] in ("stablelm", "starcoder2", "command-r", "cohere2", "nemotron"):
            write_gguf_layernorm_llama(model, GGUF_ARCH[family], out / "model.gguf")
        else:
            write_gguf(model, GGUF_ARCH[family], out / "model.gguf")
        ll = llama_cpp_logits(out / "model.gguf", prompt[0].tolist())
        want = logits
        if GGUF_ARCH[family] == "phi3" and model.config.sliding_window:
            # llama.cpp reads phi3's attention.sliding_window and then switches it off ("Phi SWA is
            # currently disabled", llama-model.cpp): compare it with transformers without the window.
            nowin = copy.deepcopy(model)
            nowin.config.sliding_window = None
            with torch.no_grad():
                want = nowin(prompt).logits[0].contiguous()
            print(f"{family}: llama.cpp ignores phi3's sliding window; checked against transformers without it")
        diff = float(abs(ll - want.numpy()).max())
        print(f"{family}: llama.cpp on model.gguf vs transformers: max |dlogit| {diff:.2e}")
        # ggml's CPU GELU reads an fp16 table (GGML_GELU_FP16), so gemma's MLP is only
        # fp16-exact in llama.cpp: measured 5e-3 on logits up to 16.
        # (gpt2's tanh GELU goes through the same fp16 table in llama.cpp)
        tol = 1e-2 if family.startswith(("gemma", "gpt2", "gpt_bigcode", "mpt", "gpt_neox", "bloom", "falcon", "phi", "starcoder2")) else 1e-3
        if family.startswith("gemma4"):
            # Gemma 4 has GELUs in every MLP and per-layer-input gate: held instead to transformers
            # with ggml's float16 GELU (tools/ggml_gelu.py), at float32 precision; gemma4_e, whose
            # logits amplify rounding (its float32 and float64 curves part, test_families.cpp),
            # moves 4.3e-2 with that GELU alone.
            from ggml_gelu import with_ggml_gelu
            with torch.no_grad():
                want16 = with_ggml_gelu(model)(prompt).logits[0].contiguous()
            d16 = float(abs(ll - want16.numpy()).max())
            print(f"{family}: llama.cpp on model.gguf vs transformers with ggml's float16 GELU: max |dlogit| {d16:.2e}")
            if d16 > 3e-3:
                sys.exit(f"{family}: llama.cpp disagrees with transformers (ggml's GELU) on the GGUF ({d16})")
            ref["gguf_llama_cpp_max_abs_diff_ggml_gelu"] = d16
            tol = 5e-2
        if family == "bamba":
            # llama.cpp's converter permutes Bamba's q/k rows over the whole head for its NORM rope, but
            # Bamba rotates half of each head (transformers: rotate_half on the first half): llama.cpp then
            # pairs the wrong dims. Measured here: the same GGUF with only each head's rotated rows
            # permuted gives transformers' logits in llama.cpp (the check below). The fixture keeps the
            # converter's form, which files in the wild have and qlora reads and writes; its llama.cpp
            # difference is recorded, not held to a tolerance.
            import numpy as np

            def rotated_slice_only(w, n_head, rot):
                hd = w.shape[0] // n_head
                w = w.reshape(n_head, hd, *w.shape[1:]).copy()
                w[:, :rot] = w[:, :rot].reshape(n_head, 2, rot // 2, *w.shape[2:]).swapaxes(1, 2).reshape(
                    n_head, rot, *w.shape[2:])
                return w.reshape(n_head * hd, *w.shape[2:])

            def unpermute(w, n):  # (LlamaModel.permute's inverse)
                return w.reshape(n, w.shape[0] // n // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
            sliced = copy.deepcopy(model)
            c = model.config
            with torch.no_grad():
                for li in c.attn_layer_indices:
                    for nm, n in (("q_proj", c.num_attention_heads), ("k_proj", c.num_key_value_heads)):
                        lin = getattr(sliced.model.layers[li].self_attn, nm)
                        w = lin.weight.numpy()
                        lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(
                            unpermute(rotated_slice_only(w, n, c.attn_rotary_emb), n))))
            write_gguf(sliced, GGUF_ARCH[family], Path("/tmp") / "bamba_rotated_slice.gguf")
            ds = float(abs(llama_cpp_logits(Path("/tmp") / "bamba_rotated_slice.gguf", prompt[0].tolist()) -
                           want.numpy()).max())
            Path("/tmp/bamba_rotated_slice.gguf").unlink()
            print(f"{family}: llama.cpp on the converter's form differs by {diff:.2e} (its whole-head q/k permutation); "
                  f"with only the rotated rows permuted: {ds:.2e}")
            if ds > tol:
                sys.exit(f"{family}: llama.cpp disagrees with transformers even with the rotated rows permuted ({ds})")
            ref["gguf_llama_cpp_max_abs_diff_rotated_slice_permuted"] = ds
            tol = float("inf")
        if diff > tol:
            sys.exit(f"{family}: llama.cpp disagrees with transformers on the GGUF ({diff})")
        ref["gguf_llama_cpp_max_abs_diff"] = diff
        if family == "gpt_oss_gguf":  # its experts in llama.cpp's MXFP4 (gguf-py's quantizer), and llama.cpp's logits on it
            write_gguf(model, "gpt-oss", out / "model_mxfp4.gguf", mxfp4_experts=True)
            lm = llama_cpp_logits(out / "model_mxfp4.gguf", prompt[0].tolist())
            # and transformers with the experts gguf-py's own dequantize makes of that file
            import gguf
            import numpy as np
            rd = gguf.GGUFReader(str(out / "model_mxfp4.gguf"))
            tens = {t.name: t for t in rd.tensors}
            deq = copy.deepcopy(model)
            with torch.no_grad():
                for i, layer in enumerate(deq.model.layers):
                    ex = layer.mlp.experts
                    def dq(n):
                        t = tens[f"blk.{i}.{n}.weight"]
                        return torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
                    g, u, dn = dq("ffn_gate_exps"), dq("ffn_up_exps"), dq("ffn_down_exps")  # (E, F, C) (E, F, C) (E, C, F)
                    gu = torch.empty(g.shape[0], 2 * g.shape[1], g.shape[2])
                    gu[:, 0::2], gu[:, 1::2] = g, u
                    ex.gate_up_proj.copy_(gu.transpose(1, 2))
                    ex.down_proj.copy_(dn.transpose(1, 2))
                deq_logits = deq(prompt).logits[0].contiguous()
            save_file({"logits": torch.from_numpy(lm).contiguous(), "transformers_gguf_dequantized_logits": deq_logits},
                      str(out / "gguf_mxfp4_llama_cpp_logits.safetensors"))
            print(f"{family}: llama.cpp on model_mxfp4.gguf vs transformers on gguf-py's dequantization of it: "
                  f"max |dlogit| {float(abs(lm - deq_logits.numpy()).max()):.2e}")
            print(f"{family}: llama.cpp on model_mxfp4.gguf vs transformers (float experts): "
                  f"max |dlogit| {float(abs(lm - want.numpy()).max()):.2e}")
        if GGUF_ARCH[family] == "deepseek2":  # the older form too (attn_kv_b whole, no MLA keys)
            write_gguf_deepseek2(model, out / "model_legacy.gguf", legacy=True)
            ld = float(abs(llama_cpp_logits(out / "model_legacy.gguf", prompt[0].tolist()) - want.numpy()).max())
            print(f"{family}: llama.cpp on model_legacy.gguf vs transformers: max |dlogit| {ld:.2e}")
            if ld > tol:
                sys.exit(f"{family}: llama.cpp disagrees with transformers on the legacy deepseek2 GGUF ({ld})")
            ref["gguf_legacy_llama_cpp_max_abs_diff"] = ld
        if GGUF_ARCH[family] == "phi2":  # the fused-Wqkv layout too
            write_gguf_phi2(model, out / "model_fused_qkv.gguf", fused_qkv=True)
            fd = float(abs(llama_cpp_logits(out / "model_fused_qkv.gguf", prompt[0].tolist()) - want.numpy()).max())
            print(f"{family}: llama.cpp on model_fused_qkv.gguf vs transformers: max |dlogit| {fd:.2e}")
            if fd > tol:
                sys.exit(f"{family}: llama.cpp disagrees with transformers on the fused-qkv GGUF ({fd})")
            ref["gguf_fused_qkv_llama_cpp_max_abs_diff"] = fd
    if family == "gpt2":
        # The original hub checkpoints were saved from GPT2Model: no "transformer." prefix.
        import shutil
        from safetensors.torch import load_file as _lf
        base = out / "base_names"
        base.mkdir(exist_ok=True)
        shutil.copy(out / "config.json", base / "config.json")
        sd = _lf(str(out / "model.safetensors"))
        save_file({k.removeprefix("transformer."): v.contiguous() for k, v in sd.items()}, str(base / "model.safetensors"),
                  metadata={"format": "pt"})
    (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"{family}: loss {loss.item():.5f}, greedy {greedy[:8]}..., "
          f"max|logit| {logits.abs().max():.2f}, nf4 shift {(nf4_logits - logits).abs().max():.3f}")


def main():
    fams = sys.argv[1:] or list(FAMILIES)
    for f in fams:
        if f not in FAMILIES:
            sys.exit(f"unknown family {f!r} (known: {', '.join(FAMILIES)})")
        build(f)


if __name__ == "__main__":
    main()
