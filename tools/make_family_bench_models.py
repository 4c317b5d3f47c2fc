#!/usr/bin/env python3
"""Medium-sized random models of each family, for measuring memory and speed where the tiny
test fixtures are all process baseline (bench/memory_validate_families.sh). Not committed:
they are written under models/ (git-ignored), ~100-150 MB each in float32.

    .refenv/bin/python tools/make_family_bench_models.py [FAMILY ...]

Each is transformers' own random init of that architecture (so every checkpoint and config
detail is the family's), with hidden 512, 8 layers, vocab 8192, and a byte-level BPE
tokenizer.json of exactly 8192 tokens trained on Tiny Shakespeare (so that generated ids
decode). Random weights: for memory and speed only, never for quality.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "models"

COMMON = dict(vocab_size=8192, bos_token_id=1, eos_token_id=2, pad_token_id=0)
FAMILIES = {
    "llama": ("LlamaConfig", dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                                  num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                                  num_key_value_heads=4, head_dim=128, max_position_embeddings=2048,
                                  tie_word_embeddings=True)),
    "gemma2": ("Gemma2Config", dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                                    num_key_value_heads=4, head_dim=64, max_position_embeddings=2048,
                                    sliding_window=256)),
    "phi3": ("Phi3Config", dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                                num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=False)),
    "gpt2": ("GPT2Config", dict(n_embd=512, n_layer=8, n_head=8, n_positions=2048)),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=8,
                                       num_attention_heads=8, max_position_embeddings=2048)),
    "opt_350m": ("OPTConfig", dict(hidden_size=512, ffn_dim=2048, num_hidden_layers=8, num_attention_heads=8,
                                   word_embed_proj_dim=256, do_layer_norm_before=False,
                                   max_position_embeddings=2048)),
    "bloom": ("BloomConfig", dict(hidden_size=512, n_layer=8, n_head=8)),
    "falcon": ("FalconConfig", dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_kv_heads=2,
                                    new_decoder_architecture=True, ffn_hidden_size=2048, bias=False)),
    # Mixture of experts: 8 experts of 704, 2 per token (OLMoE's and Mixtral's routing).
    "mixtral": ("MixtralConfig", dict(hidden_size=512, intermediate_size=704, num_hidden_layers=8,
                                      num_attention_heads=8, num_key_value_heads=4, num_local_experts=8,
                                      num_experts_per_tok=2, max_position_embeddings=2048, tie_word_embeddings=False)),
    "olmoe": ("OlmoeConfig", dict(hidden_size=512, intermediate_size=704, num_hidden_layers=8, num_attention_heads=8,
                                  num_key_value_heads=8, num_experts=8, num_experts_per_tok=2,
                                  max_position_embeddings=2048, tie_word_embeddings=False)),
    # gpt-oss's block at that size: 8 experts of 704, 2 per token, sinks, windows of 128 on
    # alternate layers, yarn (GptOssConfig's default rotary, original context 4096).
    "gpt_oss": ("GptOssConfig", dict(hidden_size=512, intermediate_size=704, num_hidden_layers=8, num_attention_heads=8,
                                     num_key_value_heads=4, head_dim=64, num_local_experts=8, num_experts_per_tok=2,
                                     max_position_embeddings=131072, tie_word_embeddings=False)),
    # Qwen3.5's language model at that size: 6 gated DeltaNet layers (4 key and 4 value heads of
    # 128, Qwen3.5-0.8B's per-head sizes) and 2 gated-attention layers (8 heads of 128, 2
    # key/value heads, a quarter of each head rotated), every fourth layer full.
    "qwen3_5_text": ("Qwen3_5TextConfig", dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                                               num_attention_heads=8, num_key_value_heads=2, head_dim=128,
                                               linear_num_key_heads=4, linear_num_value_heads=4,
                                               linear_key_head_dim=128, linear_value_head_dim=128,
                                               max_position_embeddings=2048, tie_word_embeddings=True)),
    # Qwen3.5-0.8B's own block shapes (hidden 1024, 24 layers: 18 DeltaNet with 16 key and 16 value
    # heads of 128, 6 gated-attention with 8 heads of 256 / 2 KV heads, ffn 3584) with the bench
    # vocabulary of 8192 instead of its 248320: ~0.5B parameters, ~2 GB in float32.
    "qwen3_5_0_8b": ("Qwen3_5TextConfig", dict(hidden_size=1024, intermediate_size=3584, num_hidden_layers=24,
                                               num_attention_heads=8, num_key_value_heads=2, head_dim=256,
                                               linear_num_key_heads=16, linear_num_value_heads=16,
                                               linear_key_head_dim=128, linear_value_head_dim=128,
                                               max_position_embeddings=4096, tie_word_embeddings=True)),
    # GLM-4.5's block at that size: the first layer dense (1408), the other 7 eight experts of 352 in
    # 2 groups (top 2 of the best group, routed_scaling_factor 2.5) plus a shared expert; q/k/v
    # biases, half-rotary heads of 64.
    "glm4_moe": ("Glm4MoeConfig", dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                                       num_attention_heads=8, num_key_value_heads=4, head_dim=64, attention_bias=True,
                                       n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
                                       moe_intermediate_size=352, n_shared_experts=1, first_k_dense_replace=1,
                                       routed_scaling_factor=2.5, max_position_embeddings=2048,
                                       tie_word_embeddings=False)),
    # DeepSeek-V3's block at that size: latent attention (q rank 192, kv rank 128, 8 heads of 48 + 16
    # rotary dims, values of 48, adjacent-pair rotary), layer 0 dense (1408), the other 7 eight
    # experts of 352 in 2 groups behind the sigmoid router (top 2, x 2.5) plus a shared expert.
    "deepseek_v3": ("DeepseekV3Config", dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                                             num_attention_heads=8, num_key_value_heads=8, q_lora_rank=192,
                                             kv_lora_rank=128, qk_nope_head_dim=48, qk_rope_head_dim=16,
                                             v_head_dim=48, n_routed_experts=8, num_experts_per_tok=2, n_group=2,
                                             topk_group=1, moe_intermediate_size=352, n_shared_experts=1,
                                             first_k_dense_replace=1, routed_scaling_factor=2.5,
                                             max_position_embeddings=2048, tie_word_embeddings=False)),
    # DeepSeek-V2-Lite's form at that size: no query latent (one q_proj), the same kv latent, the
    # float32 softmax router (greedy, top 2 of 8, not renormalized) plus two shared experts.
    "deepseek_v2": ("DeepseekV2Config", dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                                             num_attention_heads=8, num_key_value_heads=8, q_lora_rank=None,
                                             kv_lora_rank=128, qk_nope_head_dim=48, qk_rope_head_dim=16,
                                             v_head_dim=48, n_routed_experts=8, num_experts_per_tok=2,
                                             topk_method="greedy", moe_intermediate_size=352, n_shared_experts=2,
                                             first_k_dense_replace=1, routed_scaling_factor=1.0,
                                             max_position_embeddings=2048, tie_word_embeddings=False)),
    # Granite MoE's block at that size (granite-3.0-1b-a400m's multipliers): every layer 8 experts of
    # 352 (top 2), Granite's embedding / attention / residual / logit multipliers, tied head.
    "granitemoe": ("GraniteMoeConfig", dict(hidden_size=512, intermediate_size=352, num_hidden_layers=8,
                                            num_attention_heads=8, num_key_value_heads=4, num_local_experts=8,
                                            num_experts_per_tok=2, embedding_multiplier=12.0,
                                            attention_multiplier=0.015625, residual_multiplier=0.22,
                                            logits_scaling=6.0, max_position_embeddings=2048,
                                            tie_word_embeddings=True)),
    # MiniMax-M2's block at that size: heads of 64 with q/k norms over all heads, half of each rotated,
    # every layer 8 experts of 352 (top 2) behind the sigmoid router with its score bias.
    "minimax_m2": ("MiniMaxM2Config", dict(hidden_size=512, intermediate_size=352, num_hidden_layers=8,
                                           num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                                           num_local_experts=8, num_experts_per_tok=2, rotary_dim=32,
                                           max_position_embeddings=2048, tie_word_embeddings=False)),
    # dots.llm1's block at that size: Qwen3's attention (heads of 64, q/k norms, MHA as released), layer 0
    # dense (1408), the other 7 eight experts of 352 (top 2 of the sigmoid router, x 2.5) plus a shared one.
    "dots1": ("Dots1Config", dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                                  num_key_value_heads=8, head_dim=64, n_routed_experts=8, num_experts_per_tok=2,
                                  moe_intermediate_size=352, n_shared_experts=1, first_k_dense_replace=1,
                                  routed_scaling_factor=2.5, norm_topk_prob=True, sliding_window=None,
                                  max_position_embeddings=2048, tie_word_embeddings=False)),
    # Hunyuan-A13B's block at that size: q/k norms after the rotary, every layer 8 experts of 352 (top 2)
    # behind an nn.Linear softmax router, plus a shared MLP of 352.
    "hunyuan_v1_moe": ("HunYuanMoEV1Config", dict(hidden_size=512, intermediate_size=352, num_hidden_layers=8,
                                                  num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                                                  num_experts=8, moe_topk=2, max_position_embeddings=2048,
                                                  tie_word_embeddings=False)),
    # Llama 4's block at that size: rotary on adjacent pairs (llama3-scaled, as Scout) with chunked
    # attention and weightless q/k norms on three layers of four, NoPE with the temperature on the
    # fourth; every second layer 8 experts of 352 (top 1, sigmoid weights on the inputs) plus the
    # shared expert, the others a dense MLP of 1408 (Maverick's interleave).
    "llama4_text": ("Llama4TextConfig", dict(hidden_size=512, intermediate_size=352, intermediate_size_mlp=1408,
                                             num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                                             head_dim=64, num_local_experts=8, num_experts_per_tok=1,
                                             interleave_moe_layer_step=2, attention_chunk_size=8192,
                                             rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                                              "factor": 16.0, "low_freq_factor": 1.0,
                                                              "high_freq_factor": 1.0,
                                                              "original_max_position_embeddings": 8192},
                                             max_position_embeddings=2048, tie_word_embeddings=False)),
    # ERNIE-4.5-21B-A3B's block at that size: layer 0 dense (1408), the other 7 eight experts of 352
    # (top 2 of the biased softmax) plus two shared ones, adjacent-pair rotary, tied head.
    "ernie4_5_moe": ("Ernie4_5_MoeConfig", dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                                               num_attention_heads=8, num_key_value_heads=4, head_dim=64, use_bias=False,
                                               moe_num_experts=8, moe_k=2, moe_intermediate_size=352,
                                               moe_num_shared_experts=2, moe_layer_start_index=1,
                                               max_position_embeddings=2048, tie_word_embeddings=True)),
    # Gemma 4's dense block at that size: 8 layers, the 6th and the last full attention with heads
    # of 128 (two key/value heads whose values are the key projection), the others sliding (128
    # positions) with heads of 64; GeGLU MLP of 1408, tied head.
    "gemma4_text": ("Gemma4TextConfig", dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                                             num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                                             global_head_dim=128, num_global_key_value_heads=2, attention_k_eq_v=True,
                                             hidden_size_per_layer_input=0, num_kv_shared_layers=0,
                                             enable_moe_block=False, sliding_window=128, final_logit_softcapping=30.0,
                                             max_position_embeddings=2048, tie_word_embeddings=True)),
    # Gemma 4 E2B's block shapes at the bench size: 8 layers (the 5th and the last full attention),
    # per-layer inputs of 64 per layer, the last 3 layers attending over layers 4's / 5's keys and
    # values with MLPs twice as wide (E2B: hidden 1536, 35 layers, 20 shared, 256 per layer).
    "gemma4_e": ("Gemma4TextConfig", dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                                          num_attention_heads=8, num_key_value_heads=1, head_dim=64,
                                          global_head_dim=128, hidden_size_per_layer_input=64,
                                          vocab_size_per_layer_input=8192, num_kv_shared_layers=3,
                                          use_double_wide_mlp=True, enable_moe_block=False, sliding_window=128,
                                          final_logit_softcapping=30.0, max_position_embeddings=2048,
                                          layer_types=["sliding_attention"] * 4 + ["full_attention"] +
                                                      ["sliding_attention"] * 2 + ["full_attention"],
                                          tie_word_embeddings=True)),
    # LFM2's block at that size: LFM2-350M / 1.2B's first 8 layers' pattern (short-conv layers with
    # 3 taps, attention on layers 2, 5 and 7 with per-head q/k norms), the MLP 2/3 of 2112 rounded
    # to 128 (1408), tied head.
    "lfm2": ("Lfm2Config", dict(hidden_size=512, intermediate_size=2112, block_multiple_of=128, num_hidden_layers=8,
                                num_attention_heads=8, num_key_value_heads=4, conv_L_cache=3,
                                layer_types=["conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv",
                                             "full_attention"],
                                max_position_embeddings=2048, tie_word_embeddings=True)),
    # LFM2-MoE (LFM2-8B-A1B) at that size: the same layer pattern, the first 2 layers' MLP dense
    # (1408), the others 8 experts of 352 routing 2 behind the sigmoid router with its bias.
    "lfm2_moe": ("Lfm2MoeConfig", dict(hidden_size=512, intermediate_size=1408, moe_intermediate_size=352,
                                       num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                                       num_experts=8, num_experts_per_tok=2, num_dense_layers=2, conv_L_cache=3,
                                       layer_types=["conv", "conv", "full_attention", "conv", "conv", "full_attention",
                                                    "conv", "full_attention"],
                                       max_position_embeddings=2048, tie_word_embeddings=True)),
    # Granite 4.0-H (granite-4.0-h-350m's block) at that size: Mamba2 layers (16 heads of 64, one group,
    # a state of 128, 4 taps) with attention on 1 layer of 8 (the released models' ratio) without
    # positions, the shared_mlp 1408 wide, granite-4.0-h-350m's multipliers, tied head.
    "granitemoehybrid": ("GraniteMoeHybridConfig", dict(hidden_size=512, shared_intermediate_size=1408,
                                                        intermediate_size=1408, num_hidden_layers=8,
                                                        num_attention_heads=8, num_key_value_heads=4,
                                                        num_local_experts=0, position_embedding_type="nope",
                                                        layer_types=["mamba"] * 5 + ["attention"] + ["mamba"] * 2,
                                                        mamba_n_heads=16, mamba_n_groups=1, mamba_d_state=128,
                                                        mamba_d_conv=4, mamba_expand=2, embedding_multiplier=12.0,
                                                        attention_multiplier=0.015625, residual_multiplier=0.246,
                                                        logits_scaling=3.0, max_position_embeddings=2048,
                                                        tie_word_embeddings=True)),
    # Mamba2 (Mamba-Codestral's block) at that size: 8 layers of norm -> Mamba2 mixer (16 heads of 64 in 8
    # groups, state 128, 4 taps) -> residual; no attention, no MLP.
    "mamba2": ("Mamba2Config", dict(hidden_size=512, num_hidden_layers=8, num_heads=16, head_dim=64, state_size=128,
                                    n_groups=8, conv_kernel=4, expand=2, tie_word_embeddings=True)),
    # Falcon-Mamba (falcon-mamba-7b's block) at that size: 8 layers of norm -> Mamba mixer (1024 channels,
    # state 16, 4 taps, time_step_rank 32, weightless dt / B / C norms) -> residual; untied head.
    "falcon_mamba": ("FalconMambaConfig", dict(hidden_size=512, num_hidden_layers=8, state_size=16, expand=2,
                                               conv_kernel=4, tie_word_embeddings=False)),
    # Jamba (Jamba Mini 1.5's block) at that size: 8 layers -- attention (8 heads, 2 key/value heads of 64, no
    # positions) on layer 4, Mamba (1024 channels, state 16, dt rank 32, dt / B / C norms) elsewhere; experts
    # on every second layer from 1 (8 of 1024, top 2), a dense SwiGLU MLP of 1024 on the others; untied.
    "jamba": ("JambaConfig", dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8,
                                  num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, expert_layer_period=2,
                                  expert_layer_offset=1, attn_layer_period=8, attn_layer_offset=4, mamba_d_state=16,
                                  mamba_d_conv=4, mamba_expand=2, use_mamba_kernels=False, max_position_embeddings=2048,
                                  tie_word_embeddings=False)),
    # MPT (MPT-7B's block) at that size: 8 layers, 8 heads, ALiBi, LayerNorms without biases, fused Wqkv,
    # the exact GELU MLP 4 x 512, no biases, tied head.
    "mpt": ("MptConfig", dict(d_model=512, n_heads=8, n_layers=8, max_seq_len=2048, tie_word_embeddings=True)),
    # Apertus-8B's block at that size: 8 layers, 8 heads of 64 with 2 key/value heads, q/k norms, an xIELU
    # MLP 3.5x wide (Apertus-8B: 21504 / 4096), the llama3 rotary; untied head.
    "apertus": ("ApertusConfig", dict(hidden_size=512, intermediate_size=1792, num_hidden_layers=8,
                                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048,
                                      tie_word_embeddings=False)),
    # Nemotron-H (Nemotron Nano 2's block) at that size: 12 layers of one branch each, Mamba2 (16 heads of
    # 64 in 8 groups, state 128, 4 taps), attention without positions (8 heads, 2 key/value heads of 64) or
    # a relu^2 MLP 1536 wide, in Nemotron Nano 2's proportions (M-M-M*-M-M-: half Mamba, one attention
    # layer of 12); untied head.
    "nemotron_h": ("NemotronHConfig", dict(hidden_size=512, intermediate_size=1536, num_attention_heads=8,
                                           num_key_value_heads=2, head_dim=64,
                                           layers_block_type=["mamba", "mlp", "mamba", "mlp", "mamba", "full_attention",
                                                              "mlp", "mamba", "mlp", "mamba", "mlp", "mamba"],
                                           mamba_num_heads=16, mamba_head_dim=64, n_groups=8, ssm_state_size=128,
                                           conv_kernel=4, max_position_embeddings=2048, tie_word_embeddings=False)),
    # Nemotron 3 Nano 30B-A3B's block at that size: its first 12 layers (MEMEM*EMEMEM: Mamba2, MoE and one
    # attention layer), 32 ungated relu^2 experts of 352 routing 6 beside a shared expert of 704 (Nano: 128
    # of 1856 routing 6 beside 3712 at hidden 2688), one router group, routed_scaling_factor 2.5.
    "nemotron_h_moe": ("NemotronHConfig", dict(hidden_size=512, intermediate_size=352, num_attention_heads=8,
                                               num_key_value_heads=2, head_dim=64,
                                               layers_block_type=["mamba", "moe", "mamba", "moe", "mamba",
                                                                  "full_attention", "moe", "mamba", "moe", "mamba",
                                                                  "moe", "mamba"],
                                               mamba_num_heads=16, mamba_head_dim=64, n_groups=8, ssm_state_size=128,
                                               conv_kernel=4, max_position_embeddings=2048, tie_word_embeddings=False,
                                               n_routed_experts=32, num_experts_per_tok=6, moe_intermediate_size=352,
                                               moe_shared_expert_intermediate_size=704, n_group=1, topk_group=1,
                                               routed_scaling_factor=2.5, norm_topk_prob=True)),
    # Granite 4.0-H with experts (granite-4.0-h-tiny's block) at that size: the same layers, 16 experts
    # of 256 routing 4 beside a shared_mlp of 512 (h-tiny: 64 of 512 routing 6 beside 1024 at hidden 1536).
    "granitemoehybrid_moe": ("GraniteMoeHybridConfig", dict(hidden_size=512, shared_intermediate_size=512,
                                                            intermediate_size=256, num_local_experts=16,
                                                            num_experts_per_tok=4, num_hidden_layers=8,
                                                            num_attention_heads=8, num_key_value_heads=4,
                                                            position_embedding_type="nope",
                                                            layer_types=["mamba"] * 5 + ["attention"] + ["mamba"] * 2,
                                                            mamba_n_heads=16, mamba_n_groups=1, mamba_d_state=128,
                                                            mamba_d_conv=4, mamba_expand=2, embedding_multiplier=12.0,
                                                            attention_multiplier=0.015625, residual_multiplier=0.246,
                                                            logits_scaling=3.0, max_position_embeddings=2048,
                                                            tie_word_embeddings=True)),
}


def tokenizer():
    import os
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    data = Path(os.environ.get("QLORA_DATA_DIR", ROOT.parent / "shared" / "data")) / "text" / "tinyshakespeare.txt"
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    V = COMMON["vocab_size"]
    tr = trainers.BpeTrainer(vocab_size=V, special_tokens=["<pad>", "<s>", "</s>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    t.train_from_iterator([data.read_text()], tr)
    n = t.get_vocab_size()
    t.add_tokens([f"<unused{i}>" for i in range(V - n)])  # (exactly the model's vocabulary)
    assert t.get_vocab_size() == V, t.get_vocab_size()
    return t


def build(family: str, tok):
    import transformers
    cls, kw = FAMILIES[family]
    cfg = getattr(transformers, cls)(**{**COMMON, **kw})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    out = OUT / f"bench-{family}"
    model.save_pretrained(out, safe_serialization=True)
    tok.save(str(out / "tokenizer.json"))
    n = sum(p.numel() for p in model.parameters())
    print(f"{family}: {n / 1e6:.1f} M parameters -> {out}")


def main():
    fams = sys.argv[1:] or list(FAMILIES)
    tok = tokenizer()
    for f in fams:
        if f not in FAMILIES:
            sys.exit(f"unknown family {f!r} (known: {', '.join(FAMILIES)})")
        build(f, tok)


if __name__ == "__main__":
    main()
