#include "model/block_program.h"

#include <algorithm>

#include "base/error.h"
#include "model/ops.h"

namespace qlora {

int BlockProgram::buffer(std::string name, int64_t width, bool training_only, bool probs) {
  BlockBuffer b;
  b.name = std::move(name);
  b.width = width;
  b.training_only = training_only;
  b.probs = probs;
  buffers_.push_back(std::move(b));
  return static_cast<int>(buffers_.size()) - 1;
}

// The op builders: each appends one op (rounding its output where the compute dtype asks).
void BlockProgram::add_norm(int out, int in, NormRole role, int64_t rows, int64_t width, int rstd) {
  BlockOp o{BlockOpKind::Norm};
  o.out = out;
  o.in0 = in;
  o.aux = rstd;
  o.norm = role;
  o.rows_per_token = rows;
  o.width = width;
  op(o);  // rmsnorm_forward rounds its own output
}

void BlockProgram::add_linear(int out, int in, int which) {
  BlockOp o{BlockOpKind::Linear};
  o.out = out;
  o.in0 = in;
  o.linear = which;
  o.round = true;  // the LoRA sum, as PEFT adds it to the bf16/fp16 base output
  op(o);
}

void BlockProgram::add_rope(int buf, int64_t heads, bool query) {
  BlockOp o{BlockOpKind::Rope};
  o.out = o.in0 = buf;
  o.heads = heads;
  o.head_dim = geometry_.head_dim;
  o.query = query;
  o.width = geometry_.rope_dims;
  o.round = true;
  op(o);
}

void BlockProgram::add_concat(int out, int a, int b, int64_t groups, int64_t wa, int64_t wb, bool broadcast) {
  BlockOp o{BlockOpKind::Concat};
  o.out = out;
  o.in0 = a;
  o.in1 = b;
  o.groups = groups;
  o.width = wa;
  o.width1 = wb;
  o.broadcast = broadcast;
  op(o);  // (copies of rounded values)
}

// DeepSeek-V2 / V3's multi-head latent attention (ModelSpec::mla), from the normed input h:
//   q = q_b(norm(q_a(h))) (or q_proj(h)), its last rotary dims of each head rotated;
//   c | k_rot = kv_a(h); k_rot rotated (one head); kv = kv_b(norm(c)), per head k_nope | v;
//   k = per head k_nope | k_rot; v = per head v | zeros (to the query/key head size).
void BlockProgram::build_latent_qkv(int q, int k, int v, int h) {
  const ModelSpec& s = spec_;
  const int64_t H = s.n_heads, HS = s.head_dim, dn = s.mla_nope_dim, dr = s.rope_dims(), dv = s.mla_v_dim,
                RKV = s.mla_kv_rank, RQ = s.mla_q_rank;
  const int kva = buffer("kv_a", RKV + dr);
  if (RQ > 0) {
    const int qa = buffer("q_a", RQ), qan = buffer("q_a_normed", RQ);
    add_linear(qa, h, 0);  // (with kv_a: one group over h)
    add_linear(kva, h, 1);
    add_norm(qan, qa, NormRole::QLatent, 1, RQ, buffer("rstd_q_a", 1, true));
    add_linear(q, qan, kMlaQbLinear);
  } else {
    add_linear(q, h, 0);
    add_linear(kva, h, 1);
  }
  const int c = buffer("kv_latent", RKV), kr = buffer("k_rot", dr), cn = buffer("kv_latent_normed", RKV);
  add_slice(c, kva, 0, RKV);
  add_slice(kr, kva, RKV, dr);
  add_norm(cn, c, NormRole::KvLatent, 1, RKV, buffer("rstd_kv_a", 1, true));
  const int kvb = buffer("kv_b", H * (dn + dv)), kn = buffer("k_nope", H * dn), vh = buffer("v_heads", H * dv);
  add_linear(kvb, cn, 2);
  add_slice(kn, kvb, 0, dn, H, dn + dv);
  add_slice(vh, kvb, dn, dv, H, dn + dv);
  add_rope(q, H);  // (each head's last dr dims)
  ops_.back().offset = dn;
  ops_.back().head_dim = HS;
  ops_.back().width = dr;
  add_rope(kr, 1);
  ops_.back().head_dim = dr;
  ops_.back().width = dr;
  add_concat(k, kn, kr, H, dn, dr, /*broadcast=*/true);
  add_concat(v, vh, -1, H, dv, HS - dv, false);
}

void BlockProgram::add_slice(int out, int in, int64_t offset, int64_t width, int64_t groups, int64_t stride) {
  BlockOp o{BlockOpKind::Slice};
  o.out = out;
  o.in0 = in;
  o.offset = offset;
  o.width = width;
  o.groups = groups;
  o.group_stride = stride;
  op(o);
}

void BlockProgram::add_residual(int out, int a, int b) {
  BlockOp o{BlockOpKind::Residual};
  o.out = out;
  o.in0 = a;
  o.in1 = b;
  o.round = !spec_.residual_fp32;
  op(o);
}

void BlockProgram::add_scale(int out, int in, float factor) {
  BlockOp o{BlockOpKind::Scale};
  o.out = out;
  o.in0 = in;
  o.factor = factor;
  o.round = true;
  op(o);
}

void BlockProgram::add_clamp(int out, int in, float limit) {
  BlockOp o{BlockOpKind::Clamp};
  o.out = out;
  o.in0 = in;
  o.factor = limit;
  o.round = true;
  op(o);
}

void BlockProgram::add_attention(int out, int q, int k, int v) {
  BlockOp o{BlockOpKind::Attention};
  o.out = out;
  o.in0 = q;
  o.in1 = k;
  o.in2 = v;
  o.heads = geometry_.heads;
  o.kv_heads = geometry_.kv_heads;
  o.head_dim = geometry_.head_dim;
  o.aux = buffer("probabilities", 0, true, true);
  o.round = true;
  op(o);
}

void BlockProgram::add_act(int out, int in) {
  BlockOp o{BlockOpKind::Act};
  o.out = out;
  o.in0 = in;
  o.round = true;
  op(o);
}

// OPT's post-norm block (do_layer_norm_before false: opt-350m): the branches read the
// stream itself and the norms follow the residual adds,
//   x_mid = norm_in(x_in + o_proj(attention(q, k, v of x_in)))
//   x_out = norm_post(x_mid + down(act(up(x_mid)))).
// (separate q/k/v, a plain MLP, no rotary: the only post-norm family there is)
void BlockProgram::build_post_norm() {
  const ModelSpec& s = spec_;
  if (s.fused_qkv || s.mlp != MlpKind::Plain || s.positional == PositionalKind::Rotary)
    fail("BlockProgram", "post-norm blocks are built for separate q/k/v, a plain MLP and no rotary (OPT)");
  const int64_t C = s.hidden, F = s.ffn, QD = s.q_dim(), KVD = s.kv_dim();
  const int64_t stat = s.norm == NormKind::LayerNorm ? 2 : 1;
  const int q = buffer("q", QD), k = buffer("k", KVD), v = buffer("v", KVD);
  add_linear(q, input_, 0);
  add_linear(k, input_, 1);
  add_linear(v, input_, 2);
  const int att = buffer("attention", QD);
  add_attention(att, q, k, v);
  const int attn_out = buffer("o_proj", C);
  add_linear(attn_out, att, 3);
  const int sum1 = buffer("x_attn_sum", C);
  add_residual(sum1, input_, attn_out);
  const int xmid = buffer("x_mid", C);
  add_norm(xmid, sum1, NormRole::Input, 1, C, buffer("rstd_attn", stat, true));
  const int up = buffer("up", F), act = buffer("act", F);
  add_linear(up, xmid, 5);
  add_act(act, up);
  const int mlp_out = buffer("down_proj", C);
  add_linear(mlp_out, act, 6);
  const int sum2 = buffer("x_mlp_sum", C);
  add_residual(sum2, xmid, mlp_out);
  output_ = buffer("x_out", C);
  add_norm(output_, sum2, NormRole::PostAttention, 1, C, buffer("rstd_mlp", stat, true));
}

// The gated DeltaNet (Qwen3.5's linear_attn), from the normed input h to `out`:
//   qkv = silu(conv1d(in_proj_qkv h)), z = in_proj_z h, b = in_proj_b h, a = in_proj_a h,
//   core = delta_rule(qkv, b, a), out = out_proj(norm(core) * silu(z)).
void BlockProgram::add_gather(int out, int in, std::vector<int32_t> columns) {
  BlockOp o{BlockOpKind::Gather};
  o.out = out;
  o.in0 = in;
  o.gather = static_cast<int>(gathers_.size());
  gathers_.push_back(std::move(columns));
  op(o);
}

void BlockProgram::build_delta_net(int out, int h) {
  const ModelSpec& s = spec_;
  const int qkv = buffer("la_qkv_proj", s.la_conv_dim()), z = buffer("la_z", s.la_value_dim()),
            b = buffer("la_b", s.la_v_heads), a = buffer("la_a", s.la_v_heads);
  if (s.la_fused_qkvz) {  // Qwen3-Next: per key head [q | k | its values' v | z] and [b | a]
    const int64_t dk = s.la_k_dim, dv = s.la_v_dim, Hk = s.la_k_heads, R = s.la_v_heads / Hk;
    const int64_t G = 2 * dk + 2 * R * dv;  // one key head's columns of in_proj_qkvz
    const int qkvz = buffer("la_qkvz_proj", Hk * G), ba = buffer("la_ba_proj", 2 * s.la_v_heads);
    add_linear(qkvz, h, 7);
    add_linear(ba, h, 9);
    std::vector<int32_t> cq, cz, cb, ca;
    for (int part = 0; part < 3; ++part)  // all q, then all k, then all v (value heads grouped)
      for (int64_t k = 0; k < Hk; ++k) {
        const int64_t off = part == 0 ? 0 : part == 1 ? dk : 2 * dk, n = part < 2 ? dk : R * dv;
        for (int64_t i = 0; i < n; ++i) cq.push_back(static_cast<int32_t>(k * G + off + i));
      }
    for (int64_t k = 0; k < Hk; ++k) {
      for (int64_t i = 0; i < R * dv; ++i) cz.push_back(static_cast<int32_t>(k * G + 2 * dk + R * dv + i));
      for (int64_t r = 0; r < R; ++r) {
        cb.push_back(static_cast<int32_t>(k * 2 * R + r));
        ca.push_back(static_cast<int32_t>(k * 2 * R + R + r));
      }
    }
    add_gather(qkv, qkvz, std::move(cq));
    add_gather(z, qkvz, std::move(cz));
    add_gather(b, ba, std::move(cb));
    add_gather(a, ba, std::move(ca));
  } else {
    add_linear(qkv, h, 7);
    add_linear(z, h, 8);
    add_linear(b, h, 9);
    add_linear(a, h, 10);
  }
  const int conv = buffer("la_conv", s.la_conv_dim());
  BlockOp c{BlockOpKind::CausalConv};
  c.out = conv;
  c.in0 = qkv;
  c.round = true;
  op(c);
  const int core = buffer("la_core", s.la_value_dim());
  BlockOp d{BlockOpKind::DeltaRule};
  d.out = core;
  d.in0 = conv;
  d.in1 = b;
  d.in2 = a;
  d.round = true;
  op(d);
  const int normed = buffer("la_normed", s.la_value_dim());
  BlockOp n{BlockOpKind::GatedNorm};
  n.out = normed;
  n.in0 = core;
  n.in1 = z;
  n.aux = buffer("rstd_la", s.la_v_heads, true);
  n.rows_per_token = s.la_v_heads;
  n.width = s.la_v_dim;
  op(n);  // (rounds its own output)
  add_linear(out, normed, 11);
}

// LFM2's short conv (Lfm2ShortConv), from the normed input h to `out`:
//   B | C | x = in_proj h, out = out_proj(C * conv(B * x)), conv the causal depthwise conv1d
// (no activation), each product rounded to the compute dtype as transformers' are.
void BlockProgram::build_short_conv(int out, int h) {
  const int64_t C = spec_.hidden;
  const int bcx = buffer("sc_bcx", 3 * C), b = buffer("sc_b", C), c = buffer("sc_c", C), x = buffer("sc_x", C);
  add_linear(bcx, h, 7);
  add_slice(b, bcx, 0, C);
  add_slice(c, bcx, C, C);
  add_slice(x, bcx, 2 * C, C);
  auto mul = [&](int o, int in0, int in1) {
    BlockOp m{BlockOpKind::Mul};
    m.out = o;
    m.in0 = in0;
    m.in1 = in1;
    m.round = true;
    op(m);
  };
  const int bx = buffer("sc_bx", C), conv = buffer("sc_conv", C), y = buffer("sc_y", C);
  mul(bx, b, x);
  BlockOp cv{BlockOpKind::CausalConv};
  cv.out = conv;
  cv.in0 = bx;
  cv.round = true;
  op(cv);
  mul(y, c, conv);
  add_linear(out, y, 11);
}

// Mamba2's mixer (GraniteMoeHybridMambaLayer's torch path), from the normed input h to `out`:
//   z | xBC | dt = in_proj h, xBC = silu(conv1d(xBC) + bias), y = scan(x | B | C, dt),
//   out = out_proj(norm(y * silu(z))).
void BlockProgram::build_mamba2(int out, int h) {
  const ModelSpec& s = spec_;
  const int64_t VD = s.la_value_dim(), CD = s.la_conv_dim(), H = s.la_v_heads;
  const int proj = buffer("ssm_in_proj", VD + CD + H), z = buffer("ssm_z", VD), xbc = buffer("ssm_xbc", CD),
            dt = buffer("ssm_dt", H);
  add_linear(proj, h, 7);
  add_slice(z, proj, 0, VD);
  add_slice(xbc, proj, VD, CD);
  add_slice(dt, proj, VD + CD, H);
  const int conv = buffer("ssm_conv", CD);
  BlockOp c{BlockOpKind::CausalConv};
  c.out = conv;
  c.in0 = xbc;
  c.round = true;
  op(c);
  const int y = buffer("ssm_y", VD);
  BlockOp sc{BlockOpKind::SsmScan};
  sc.out = y;
  sc.in0 = conv;
  sc.in1 = dt;
  op(sc);  // (float32: transformers hands the norm the scan's float32 output)
  const int normed = buffer("ssm_normed", VD);
  BlockOp n{BlockOpKind::SsmNorm};
  n.out = normed;
  n.in0 = y;
  n.in1 = z;
  n.aux = buffer("rstd_ssm", s.la_k_heads, true);
  n.rows_per_token = s.la_k_heads;
  n.width = VD / s.la_k_heads;
  op(n);  // (rounds its own output)
  add_linear(out, normed, 11);
}

void BlockProgram::build_mamba1(int out, int h) {
  const ModelSpec& s = spec_;
  const int64_t D = s.la_value_dim(), N = s.la_k_dim, R = s.la_dt_rank;
  const int proj = buffer("ssm_in_proj", 2 * D), x = buffer("ssm_x", D), z = buffer("ssm_z", D);
  add_linear(proj, h, 7);
  add_slice(x, proj, 0, D);
  add_slice(z, proj, D, D);
  const int conv = buffer("ssm_conv", D);
  BlockOp c{BlockOpKind::CausalConv};
  c.out = conv;
  c.in0 = x;
  c.round = true;
  op(c);
  const int dbc = buffer("ssm_dbc", R + 2 * N);
  add_linear(dbc, conv, 9);  // x_proj
  int dtr = buffer("ssm_dt_raw", R), bc = buffer("ssm_bc", 2 * N);
  add_slice(dtr, dbc, 0, R);
  add_slice(bc, dbc, R, 2 * N);
  if (s.la_bcdt_norm) {  // (Falcon-Mamba, Jamba: dt, B and C each through an RMSNorm)
    auto unit_norm = [&](int in, const char* name, int64_t rows, int64_t width) {
      BlockOp n{BlockOpKind::SsmBcdtNorm};
      n.out = buffer(name, rows * width);
      n.in0 = in;
      n.aux = buffer(std::string("rstd_") + name, rows, true);
      n.rows_per_token = rows;
      n.width = width;
      op(n);  // (rounds its own output)
      return n.out;
    };
    dtr = unit_norm(dtr, "ssm_dt_normed", 1, R);
    bc = unit_norm(bc, "ssm_bc_normed", 2, N);
  }
  const int dt = buffer("ssm_dt", D);
  add_linear(dt, dtr, 10);  // dt_proj (its bias included)
  const int y = buffer("ssm_y", D);
  BlockOp sc{BlockOpKind::Ssm1Scan};
  sc.out = y;
  sc.in0 = conv;
  sc.in1 = dt;
  sc.in2 = bc;
  op(sc);  // (float32)
  const int gated = buffer("ssm_gated", D);
  BlockOp g{BlockOpKind::GatedAct};  // silu(z) * y (spec.mlp is SwiGLU)
  g.out = gated;
  g.in0 = z;
  g.in1 = y;
  g.round = true;
  op(g);
  add_linear(out, gated, 11);
}

BlockProgram BlockProgram::for_spec(const ModelSpec& s) {
  BlockProgram p;
  p.spec_ = s;
  if (s.positional == PositionalKind::Alibi) p.alibi_ = alibi_bias_for(s);
  const int64_t C = s.hidden, F = s.ffn;
  p.geometry_ = s.attention_geometry(false);
  // Per-row statistics a norm keeps for its backward: rstd, or LayerNorm's mean and rstd.
  const int64_t stat = s.norm == NormKind::LayerNorm ? 2 : 1;
  p.input_ = p.buffer("x_in", C);
  if (s.post_norm) {
    p.build_post_norm();
    p.finish();
    return p;
  }
  // --- attention: x_mid = x_in + o_proj(attention(rope(q), rope(k), v)) of norm(x_in)
  if (s.single_branch()) p.part_ = BranchPart::Mixer;
  int h1 = p.input_;  // (OLMo 2: the branches read the stream itself)
  if (s.pre_norms) {
    h1 = p.buffer("h_attn", C);
    p.add_norm(h1, p.input_, NormRole::Input, 1, C, p.buffer("rstd_attn", stat, true));
  }
  // The attention section: once, or (Gemma 4) once per geometry, its ops marked with the
  // layers they run on, each writing the same branch output.
  struct Section {
    LayerMixer mixer;
    bool global;
  };
  std::vector<Section> sections = {{s.hybrid() ? LayerMixer::Attention : LayerMixer::All, false}};
  if (s.has_global_geometry()) sections = {{LayerMixer::SlidingAttention, false}, {LayerMixer::GlobalAttention, true}};
  int attn_out = -1;
  for (const Section& sec : sections) {
    p.mixer_ = sec.mixer;
    const ModelSpec::AttentionGeometry geo = s.attention_geometry(sec.global);
    p.geometry_ = geo;
    const std::string sfx = sec.global ? "_global" : "";
    auto buf = [&](const char* name, int64_t width, bool training_only = false) {
      return p.buffer(name + sfx, width, training_only);
    };
    const int64_t HS = geo.head_dim, QD = geo.q_dim(), KVD = geo.kv_dim(), NH = geo.heads, NKV = geo.kv_heads;
    const int q = buf("q", QD), k = buf("k", KVD), v = buf("v", KVD);
    // The projections' outputs: q, k, v themselves, or (qwen3, gemma3) the inputs of per-head
    // norms that sit between the projections and rotary.
    const bool qk_normed = s.qk_norm || s.qk_l2_norm;
    const int qproj = qk_normed ? buf("q_proj", QD) : q, kproj = qk_normed ? buf("k_proj", KVD) : k;
    int gate = -1;  // (attn_output_gate: the attention output's gate)
    if (s.mla()) {  // DeepSeek: q, k, v through the latents
      p.build_latent_qkv(q, k, v, h1);
    } else if (s.fused_qkv && s.qkv_grouped) {  // falcon (new architecture): per kv group, q heads | k | v
      const int qkv = buf("qkv_proj", QD + 2 * KVD);
      const int64_t group = NH / NKV, stride = (group + 2) * HS;
      p.add_linear(qkv, h1, 0);
      p.add_slice(qproj, qkv, 0, group * HS, NKV, stride);
      p.add_slice(kproj, qkv, group * HS, HS, NKV, stride);
      p.add_slice(v, qkv, (group + 1) * HS, HS, NKV, stride);
    } else if (s.fused_qkv && s.qkv_per_head) {  // gpt_neox: one Linear, per head its q | k | v
      const int qkv = buf("qkv_proj", QD + 2 * KVD);
      p.add_linear(qkv, h1, 0);
      p.add_slice(qproj, qkv, 0, HS, NH, 3 * HS);
      p.add_slice(kproj, qkv, HS, HS, NH, 3 * HS);
      p.add_slice(v, qkv, 2 * HS, HS, NH, 3 * HS);
    } else if (s.fused_qkv) {  // phi3: one Linear, its rows q | k | v
      const int qkv = buf("qkv_proj", QD + 2 * KVD);
      if (s.clip_qkv > 0.0f) {  // (MPT: the fused projection clamped to [-clip, clip])
        const int raw = buf("qkv_raw", QD + 2 * KVD);
        p.add_linear(raw, h1, 0);
        p.add_clamp(qkv, raw, s.clip_qkv);
      } else {
        p.add_linear(qkv, h1, 0);
      }
      p.add_slice(qproj, qkv, 0, QD);
      p.add_slice(kproj, qkv, QD, KVD);
      p.add_slice(v, qkv, QD + KVD, KVD);
    } else if (s.clip_qkv > 0.0f) {  // OLMo: each projection clamped to [-clip, clip]
      const int qr = buf("q_raw", QD), kr = buf("k_raw", KVD), vr = buf("v_raw", KVD);
      p.add_linear(qr, h1, 0);
      p.add_linear(kr, h1, 1);
      p.add_linear(vr, h1, 2);
      p.add_clamp(qproj, qr, s.clip_qkv);
      p.add_clamp(kproj, kr, s.clip_qkv);
      p.add_clamp(v, vr, s.clip_qkv);
    } else if (s.attn_output_gate) {  // Qwen3.5: q_proj's rows per head, the query then its gate
      const int qg = buf("q_gate_proj", 2 * QD);
      gate = buf("attn_gate", QD);
      p.add_linear(qg, h1, 0);
      p.add_linear(kproj, h1, 1);
      p.add_linear(v, h1, 2);
      p.add_slice(qproj, qg, 0, HS, NH, 2 * HS);
      p.add_slice(gate, qg, HS, HS, NH, 2 * HS);
    } else if (s.v_norm) {  // Gemma 4: the values through an RMSNorm without weight, per head
      const int vproj = geo.k_eq_v ? kproj : buf("v_proj", KVD);  // (k_eq_v: the keys' projection)
      p.add_linear(qproj, h1, 0);
      p.kv_only_ = true;  // (not on the shared-KV layers)
      p.add_linear(kproj, h1, 1);
      if (!geo.k_eq_v) p.add_linear(vproj, h1, 2);
      p.add_norm(v, vproj, NormRole::VHead, NKV, HS, buf("rstd_v", NKV, true));
      p.kv_only_ = false;
    } else {
      p.add_linear(qproj, h1, 0);
      p.add_linear(kproj, h1, 1);
      p.add_linear(v, h1, 2);
    }
    if (s.qk_norm && s.qk_norm_head_weights) {  // Command R+: per head, each head's own weights
      const int qu = buf("q_unit", QD), ku = buf("k_unit", KVD);
      p.add_norm(qu, qproj, NormRole::Unit, NH, HS, buf("rstd_q", stat * NH, true));
      p.add_norm(ku, kproj, NormRole::Unit, NKV, HS, buf("rstd_k", stat * NKV, true));
      const std::pair<int, int> scaled[2] = {{q, qu}, {k, ku}};
      for (int i = 0; i < 2; ++i) {
        BlockOp o{BlockOpKind::ScaleColumns};
        o.out = scaled[i].first;
        o.in0 = scaled[i].second;
        o.norm = i == 0 ? NormRole::QHead : NormRole::KHead;
        o.round = true;
        p.op(o);
      }
    } else if (s.qk_norm && s.qk_norm_full) {  // OLMo 2: over all of q, and all of k
      p.add_norm(q, qproj, NormRole::QHead, 1, QD, buf("rstd_q", 1, true));
      p.add_norm(k, kproj, NormRole::KHead, 1, KVD, buf("rstd_k", 1, true));
    } else if (s.qk_l2_norm) {
      // Llama 4: rotary on the projections (the temperature on the NoPE layers' queries), then on
      // the layers that rotate a weightless norm per head; the others take q and k as they are
      p.add_rope(qproj, NH, /*query=*/true);
      p.add_rope(kproj, NKV);
      p.mixer_ = LayerMixer::RotaryLayers;
      p.add_norm(q, qproj, NormRole::VHead, NH, HS, buf("rstd_q", NH, true));
      p.add_norm(k, kproj, NormRole::VHead, NKV, HS, buf("rstd_k", NKV, true));
      p.mixer_ = LayerMixer::NopeLayers;
      p.add_scale(q, qproj, 1.0f);  // (a copy: the values are rounded already)
      p.add_scale(k, kproj, 1.0f);
      p.mixer_ = sec.mixer;
    } else if (s.qk_norm && s.qk_norm_after_rope) {  // Hunyuan: rotary on the projections, then the norms
      p.add_rope(qproj, NH, /*query=*/true);
      p.add_rope(kproj, NKV);
      p.add_norm(q, qproj, NormRole::QHead, NH, HS, buf("rstd_q", NH, true));
      p.add_norm(k, kproj, NormRole::KHead, NKV, HS, buf("rstd_k", NKV, true));
    } else if (s.qk_norm) {
      p.add_norm(q, qproj, NormRole::QHead, NH, HS, buf("rstd_q", NH, true));
      p.kv_only_ = s.v_norm;
      p.add_norm(k, kproj, NormRole::KHead, NKV, HS, buf("rstd_k", NKV, true));
      p.kv_only_ = false;
    }
    if (s.positional == PositionalKind::Rotary && !s.qk_norm_after_rope && !s.qk_l2_norm && !s.mla()) {
      p.add_rope(q, NH, /*query=*/true);
      p.kv_only_ = s.v_norm;
      p.add_rope(k, NKV);
      p.kv_only_ = false;
    }
    int att = buf("attention", QD);
    p.add_attention(att, q, k, v);
    if (gate >= 0) {  // attention * sigmoid(gate)
      const int gated = buf("attention_gated", QD);
      BlockOp o{BlockOpKind::OutputGate};
      o.out = gated;
      o.in0 = att;
      o.in1 = gate;
      o.round = true;
      p.op(o);
      att = gated;
    }
    if (s.mla() && s.mla_v_dim < HS) {  // (the values' padding cut off)
      const int values = buf("attention_values", NH * s.mla_v_dim);
      p.add_slice(values, att, 0, s.mla_v_dim, NH, HS);
      att = values;
    }
    if (attn_out < 0) attn_out = p.buffer("o_proj", C);
    p.add_linear(attn_out, att, 3);
  }
  p.mixer_ = LayerMixer::All;
  p.geometry_ = s.attention_geometry(false);
  if (s.hybrid()) {  // the linear-attention layers' branch writes the same output
    p.mixer_ = LayerMixer::Linear;
    if (s.la_short_conv) p.build_short_conv(attn_out, h1);
    else if (s.la_mamba2) p.build_mamba2(attn_out, h1);
    else if (s.la_mamba1) p.build_mamba1(attn_out, h1);
    else p.build_delta_net(attn_out, h1);
    p.mixer_ = LayerMixer::All;
  }
  if (s.sandwich_norms) {  // gemma2/3: the branch output is normalized before the residual add
    const int normed = p.buffer("o_normed", C);
    p.add_norm(normed, attn_out, NormRole::PostAttention, 1, C, p.buffer("rstd_o", stat, true));
    attn_out = normed;
  }
  if (s.residual_multiplier != 1.0f) {  // granite: residual + attention * m
    const int scaled = p.buffer("o_scaled", C);
    p.add_scale(scaled, attn_out, s.residual_multiplier);
    attn_out = scaled;
  }
  // The MLP reads x_mid = x_in + attention (sequential), or x_in itself (parallel residual).
  int xmid = p.input_;
  if (!s.parallel_residual) {
    xmid = p.buffer("x_mid", C);
    p.add_residual(xmid, p.input_, attn_out);
  }
  if (s.single_branch()) {  // (Nemotron-H's MLP layers: x_mid = x_in, the MLP's norm the layer's one norm)
    p.part_ = BranchPart::NoMixer;
    p.add_scale(xmid, p.input_, 1.0f);
    p.part_ = BranchPart::Mlp;
  }
  if (s.no_mlp) {  // (Mamba2ForCausalLM: the block ends at the mixer's residual add)
    p.output_ = xmid;
    p.finish();
    return p;
  }
  // --- MLP: x_out = x_mid + down(act(gate(h)) * up(h)), or down(act(up(h))), h = norm(x_mid)
  int h2 = h1;  // (falcon-7b: the MLP reads the attention's normed input)
  if (!s.pre_norms) {
    h2 = xmid;
  } else if (!s.shared_branch_norm) {
    h2 = p.buffer("h_mlp", C);
    p.add_norm(h2, xmid, s.sandwich_norms ? NormRole::PreFfn : NormRole::PostAttention, 1, C,
               p.buffer("rstd_mlp", stat, true));
  }
  // The dense MLP of h2 (gate/up/down; MoE: the shared expert), its output's buffer.
  // (MLPs of different widths -- Gemma 4's double-wide ones, GLM-4.5's shared experts beside
  // dense layers: the buffers take the widest layer's width, and each layer its own)
  const int64_t Fmax = s.max_layer_ffn();
  bool per_layer_mlp = false;
  for (int64_t l = 0; l < s.n_layers; ++l) per_layer_mlp = per_layer_mlp || s.layer_ffn(l) != F;
  auto mlp_buffer = [&](const char* name) {
    const int b = p.buffer(name, Fmax);
    p.buffers_[static_cast<size_t>(b)].per_layer_mlp = per_layer_mlp;
    return b;
  };
  auto dense_mlp = [&](const char* out_name) {
    const int up = mlp_buffer("up"), act = mlp_buffer("act");
    if (s.mlp == MlpKind::Plain) {
      p.add_linear(up, h2, 5);
      p.add_act(act, up);
    } else {
      const int gate = mlp_buffer("gate");
      if (s.fused_gate_up) {  // phi3: one Linear, its rows gate | up
        const int gate_up = p.buffer("gate_up_proj", 2 * F);
        p.add_linear(gate_up, h2, 4);
        p.add_slice(gate, gate_up, 0, F);
        p.add_slice(up, gate_up, F, F);
      } else {
        p.add_linear(gate, h2, 4);
        p.add_linear(up, h2, 5);
      }
      BlockOp o{BlockOpKind::GatedAct};
      o.out = act;
      o.in0 = gate;
      o.in1 = up;
      o.round = true;
      p.op(o);
    }
    const int down = p.buffer(out_name, C);
    p.add_linear(down, act, 6);
    return down;
  };
  int mlp_out = -1;
  if (s.moe_gemma4) {  // Gemma 4: norm1(dense MLP) + norm2(experts of norm(x_mid), routed by x_mid)
    const int dense = dense_mlp("down_proj");
    const int d1 = p.buffer("down_normed_1", C);
    p.add_norm(d1, dense, NormRole::PostFfn1, 1, C, p.buffer("rstd_down_1", stat, true));
    const int h3 = p.buffer("h_experts", C);
    p.add_norm(h3, xmid, NormRole::PreFfn2, 1, C, p.buffer("rstd_experts_in", stat, true));
    const int experts = p.buffer("moe_out", C);
    BlockOp o{BlockOpKind::Moe};
    o.out = experts;
    o.in0 = h3;
    o.in2 = xmid;
    o.round = true;
    p.op(o);
    const int d2 = p.buffer("moe_normed", C);
    p.add_norm(d2, experts, NormRole::PostFfn2, 1, C, p.buffer("rstd_moe", stat, true));
    mlp_out = p.buffer("mlp_moe_sum", C);
    p.add_residual(mlp_out, d1, d2);
  } else if (s.moe()) {  // the routed experts (+ the shared expert's output, scaled by its gate)
    int shared = s.shared_expert ? dense_mlp("shared_expert") : -1;
    if (!s.shared_expert && s.has_dense_mlp_layers()) {  // (LFM2-MoE: dense layers, no shared expert)
      p.mixer_ = LayerMixer::DenseMlpLayers;
      shared = dense_mlp("dense_mlp");
      p.mixer_ = LayerMixer::All;
    }
    mlp_out = p.buffer("moe_out", C);
    BlockOp o{BlockOpKind::Moe};
    o.out = mlp_out;
    o.in0 = h2;
    o.in1 = s.shared_expert ? shared : -1;
    o.round = true;
    if (s.has_dense_mlp_layers()) p.mixer_ = LayerMixer::MoeLayers;
    p.op(o);
    if (s.has_dense_mlp_layers()) {  // (GLM-4.5's, LFM2-MoE's dense layers: the gate/up/down's output as it is)
      BlockOp c{BlockOpKind::Scale};
      c.out = mlp_out;
      c.in0 = shared;
      c.factor = 1.0f;
      p.mixer_ = LayerMixer::DenseMlpLayers;
      p.op(c);
    }
    p.mixer_ = LayerMixer::All;
  } else {
    mlp_out = dense_mlp("down_proj");
  }
  if (s.sandwich_norms) {
    const int normed = p.buffer("down_normed", C);
    p.add_norm(normed, mlp_out, NormRole::PostFfn, 1, C, p.buffer("rstd_down", stat, true));
    mlp_out = normed;
  }
  if (s.residual_multiplier != 1.0f) {  // granite: residual + mlp * m
    const int scaled = p.buffer("down_scaled", C);
    p.add_scale(scaled, mlp_out, s.residual_multiplier);
    mlp_out = scaled;
  }
  // (Gemma 4: the block's sum, then its per-layer input branch, then times the layer's scalar)
  const int sum = s.layer_scalar ? p.buffer("x_sum", C) : -1;
  const int sum_ple = s.ple() ? p.buffer("x_sum_ple", C) : -1;
  p.output_ = p.buffer("x_out", C);
  const int last = s.layer_scalar ? sum : p.output_;
  if (s.parallel_residual) {  // gpt_neox: (mlp + attention) + x, in that order
    const int branches = p.buffer("branches", C);
    p.add_residual(branches, mlp_out, attn_out);
    p.add_residual(last, branches, p.input_);
  } else {
    p.add_residual(last, xmid, mlp_out);
  }
  if (s.single_branch()) {  // (Nemotron-H's mixer layers: the block ends at x_mid)
    p.part_ = BranchPart::NoMlp;
    p.add_scale(last, xmid, 1.0f);
    p.part_ = BranchPart::Both;
  }
  if (s.ple()) {  // x + norm(proj(gelu_tanh(gate(x)) * per-layer inputs))
    const int64_t P = s.ple_dim;
    const int g = p.buffer("ple_gate", P), a = p.buffer("ple_act", P), m = p.buffer("ple_mul", P),
              pr = p.buffer("ple_proj", C), n = p.buffer("ple_normed", C);
    p.add_linear(g, sum, kPleGateLinear);
    p.add_act(a, g);
    BlockOp o{BlockOpKind::PleMul};
    o.out = m;
    o.in0 = a;
    o.round = true;
    p.op(o);
    p.add_linear(pr, m, kPleProjLinear);
    p.add_norm(n, pr, NormRole::PostPle, 1, C, p.buffer("rstd_ple", stat, true));
    p.add_residual(sum_ple, sum, n);
  }
  if (s.layer_scalar) {
    BlockOp o{BlockOpKind::Scale};
    o.out = p.output_;
    o.in0 = s.ple() ? sum_ple : sum;
    o.layer_factor = true;
    o.round = true;
    p.op(o);
  }
  p.finish();
  return p;
}

void BlockProgram::finish() {
  // A Rope op rotates columns [offset, offset + width) of each head: within the head.
  for (const BlockOp& o : ops_)
    if (o.kind == BlockOpKind::Rope && (o.width <= 0 || o.width % 2 != 0 || o.offset < 0 || o.offset + o.width > o.head_dim))
      fail("BlockProgram", "a rotary op of " + std::to_string(o.width) + " dims from column " + std::to_string(o.offset) +
                               " does not fit heads of " + std::to_string(o.head_dim));
  // What each op's backward reads (ops_backward.h): a norm its input and rstd, a Linear its
  // input (for LoRA's A gradient), attention q, k, v and the probabilities, a gated
  // activation both inputs. Rotary and residual adds read nothing.
  for (const BlockOp& o : ops_) {
    auto keep = [&](int b) {
      if (b >= 0) buffers_[static_cast<size_t>(b)].saved = true;
    };
    switch (o.kind) {
      case BlockOpKind::Norm: keep(o.in0); keep(o.aux); break;
      case BlockOpKind::Linear: keep(o.in0); break;
      case BlockOpKind::Attention: keep(o.in0); keep(o.in1); keep(o.in2); keep(o.aux); break;
      case BlockOpKind::GatedAct: keep(o.in0); keep(o.in1); break;
      case BlockOpKind::Act: keep(o.in0); break;
      case BlockOpKind::Clamp: keep(o.in0); break;
      case BlockOpKind::Moe: keep(o.in0); keep(o.in1); keep(o.in2); break;
      case BlockOpKind::CausalConv: keep(o.in0); break;
      case BlockOpKind::DeltaRule: keep(o.in0); keep(o.in1); keep(o.in2); break;
      case BlockOpKind::GatedNorm: keep(o.in0); keep(o.in1); keep(o.aux); break;
      case BlockOpKind::SsmScan: keep(o.in0); keep(o.in1); break;
      case BlockOpKind::SsmNorm: keep(o.in0); keep(o.in1); keep(o.aux); break;
      case BlockOpKind::Ssm1Scan: keep(o.in0); keep(o.in1); keep(o.in2); break;
      case BlockOpKind::SsmBcdtNorm: keep(o.in0); keep(o.aux); break;
      case BlockOpKind::OutputGate: keep(o.in0); keep(o.in1); break;
      case BlockOpKind::Mul: keep(o.in0); keep(o.in1); break;
      case BlockOpKind::Gather: break;  // (its backward reads the column list only)
      case BlockOpKind::PleMul: keep(o.in0); break;
      case BlockOpKind::ScaleColumns: break;  // (its backward reads the weights only)
      case BlockOpKind::Concat: break;
      case BlockOpKind::Rope:
      case BlockOpKind::Residual:
      case BlockOpKind::Slice:
      case BlockOpKind::Scale: break;
    }
  }
  // Inference slots: a buffer's life runs from the op that first writes it to the last op
  // that reads or writes it; a slot is reused once its buffer's life has ended before the
  // op that needs a new one (never by that op's own inputs).
  const int nb = static_cast<int>(buffers_.size());
  std::vector<int> first(static_cast<size_t>(nb), -1), last(static_cast<size_t>(nb), -1);
  for (int i = 0; i < static_cast<int>(ops_.size()); ++i) {
    const BlockOp& o = ops_[static_cast<size_t>(i)];
    for (int b : {o.out, o.in0, o.in1, o.in2}) {
      if (b < 0) continue;
      if (first[static_cast<size_t>(b)] < 0) first[static_cast<size_t>(b)] = i;
      last[static_cast<size_t>(b)] = i;
    }
  }
  // Inference runs the residual stream in place: the output may share the input's storage
  // only when nothing reads the input after the op that writes the output.
  const int writes_out = first[static_cast<size_t>(output_)];
  for (int i = writes_out + 1; i < static_cast<int>(ops_.size()); ++i) {
    const BlockOp& o = ops_[static_cast<size_t>(i)];
    if (o.in0 == input_ || o.in1 == input_ || o.in2 == input_)
      fail("BlockProgram", "the block reads its input after writing its output; inference runs it in place");
  }
  slots_.slot_of.assign(static_cast<size_t>(nb), -1);
  std::vector<int> slot_free_after;  // op index after which the slot is free
  for (int i = 0; i < static_cast<int>(ops_.size()); ++i) {
    const int b = ops_[static_cast<size_t>(i)].out;
    const BlockBuffer& buf = buffers_[static_cast<size_t>(b)];
    if (b == input_ || b == output_ || buf.training_only || slots_.slot_of[static_cast<size_t>(b)] >= 0) continue;
    int slot = -1;
    for (size_t j = 0; j < slot_free_after.size(); ++j)
      if (slot_free_after[j] < i) {
        slot = static_cast<int>(j);
        break;
      }
    if (slot < 0) {
      slot = static_cast<int>(slot_free_after.size());
      slot_free_after.push_back(0);
      slots_.slot_width.push_back(0);
    }
    slots_.slot_of[static_cast<size_t>(b)] = slot;
    slot_free_after[static_cast<size_t>(slot)] = last[static_cast<size_t>(b)];
    slots_.slot_width[static_cast<size_t>(slot)] = std::max(slots_.slot_width[static_cast<size_t>(slot)], buf.width);
  }
}

int64_t BlockProgram::floats(int b, int64_t T, int64_t Tk) const {
  const BlockBuffer& buf = buffers_.at(static_cast<size_t>(b));
  return buf.probs ? spec_.n_heads * T * Tk : buf.width * T;
}

int64_t BlockProgram::floats_on(int b, int64_t l, int64_t T, int64_t Tk) const {
  const BlockBuffer& buf = buffers_.at(static_cast<size_t>(b));
  if (buf.per_layer_mlp) return spec_.layer_ffn(l) * T;
  return floats(b, T, Tk);
}

int64_t BlockProgram::batch_floats(int b, int64_t tokens, int64_t probs_per_head) const {
  const BlockBuffer& buf = buffers_.at(static_cast<size_t>(b));
  return buf.probs ? spec_.n_heads * probs_per_head : buf.width * tokens;
}

int64_t BlockProgram::batch_floats_on(int b, int64_t l, int64_t tokens, int64_t probs_per_head) const {
  const BlockBuffer& buf = buffers_.at(static_cast<size_t>(b));
  if (buf.per_layer_mlp) return spec_.layer_ffn(l) * tokens;
  return batch_floats(b, tokens, probs_per_head);
}

int64_t BlockProgram::saved_floats(int64_t T, int64_t B) const {
  int64_t n = 0;
  for (int b = 0; b < static_cast<int>(buffers_.size()); ++b)
    if (buffers_[static_cast<size_t>(b)].saved && b != input_ && b != output_) n += batch_floats(b, B * T, B * T * T);
  return n;
}

bool BlockProgram::used_on(int b, int64_t l) const {
  for (const BlockOp& o : ops_)
    if (o.runs_on(spec_, l) && (o.out == b || o.in0 == b || o.in1 == b || o.in2 == b || o.aux == b)) return true;
  return false;
}

int64_t BlockProgram::saved_floats_on(int64_t l, int64_t T, int64_t B) const {
  int64_t n = 0;
  for (int b = 0; b < static_cast<int>(buffers_.size()); ++b)
    if (buffers_[static_cast<size_t>(b)].saved && b != input_ && b != output_ && used_on(b, l))
      n += batch_floats_on(b, l, B * T, B * T * T);
  return n;
}

int64_t BlockProgram::transient_floats(int64_t T, int64_t B) const {
  int64_t n = 0;
  for (int b = 0; b < static_cast<int>(buffers_.size()); ++b)
    if (!buffers_[static_cast<size_t>(b)].saved && b != input_ && b != output_) n += batch_floats(b, B * T, B * T * T);
  return n;
}

int64_t BlockProgram::gradient_floats(int64_t T, int64_t B) const {
  int64_t n = 0;
  for (int b = 0; b < static_cast<int>(buffers_.size()); ++b)
    if (has_grad(b) && b != output_) n += batch_floats(b, B * T, B * T * T);
  return n;
}

int64_t BlockProgram::inference_floats(int64_t T) const {
  int64_t n = 0;
  for (int64_t w : slots_.slot_width) n += w * T;
  return n;
}

}  // namespace qlora
