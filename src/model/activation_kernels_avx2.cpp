// AVX2 activation kernels, bit-identical to the scalar ones (activation_kernels.h).
//
// exp is glibc's expf (the Arm optimized-routines algorithm glibc ships since 2.28), four
// lanes of double at a time: with N = 32,
//   z = x * N/ln2;  k = round(z) (through the 1.5 * 2^52 shift);  r = z - k (one fused
//   operation, as glibc's FMA build contracts it);  s = 2^(k/N) from a table of 2^(i/N) with
//   k's high bits added to the exponent;  exp(x) ~ s * (C2 r + 1 + (C0 r + C1) r^2).
// The constants are glibc's (__exp2f_data: tab, invln2_scaled, shift, poly_scaled). Over
// every float x with |x| < 87 this gives exactly glibc's results (an exhaustive check,
// session 10); other lanes (large |x|, inf, NaN) go through std::exp.
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "model/activation_kernels.h"

namespace qlora::kernels {

namespace {

alignas(32) constexpr uint64_t kExpTab[32] = {
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51, 0x3fef72b83c7d517b,
    0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1, 0x3fef06fe0a31b715, 0x3feef1a7373aa9cb,
    0x3feedea64c123422, 0x3feece086061892d, 0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429,
    0x3feea47eb03a5585, 0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d, 0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069, 0x3fef5818dcfba487, 0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
};
constexpr double kInvLn2N = 0x1.71547652b82fep+0 * 32;
constexpr double kShift = 0x1.8p+52;
constexpr double kC0 = 0x1.c6af84b912394p-5 / 32 / 32 / 32;
constexpr double kC1 = 0x1.ebfce50fac4f3p-3 / 32 / 32;
constexpr double kC2 = 0x1.62e42ff0c52d6p-1 / 32;

// exp of four floats in double precision (glibc's steps), before the rounding to float.
inline __m256d exp4d(__m128 xf) {
  const __m256d xd = _mm256_cvtps_pd(xf);
  const __m256d inv = _mm256_set1_pd(kInvLn2N), shift = _mm256_set1_pd(kShift);
  const __m256d z = _mm256_mul_pd(inv, xd);
  __m256d kd = _mm256_add_pd(z, shift);
  const __m256i ki = _mm256_castpd_si256(kd);
  kd = _mm256_sub_pd(kd, shift);
  const __m256d r = _mm256_fmsub_pd(inv, xd, kd);  // glibc's FMA build: fma(InvLn2N, x, -kd)
  const __m256i idx = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
  __m256i t = _mm256_i64gather_epi64(reinterpret_cast<const long long*>(kExpTab), idx, 8);
  t = _mm256_add_epi64(t, _mm256_slli_epi64(ki, 52 - 5));
  const __m256d s = _mm256_castsi256_pd(t);
  const __m256d zz = _mm256_fmadd_pd(_mm256_set1_pd(kC0), r, _mm256_set1_pd(kC1));
  const __m256d r2 = _mm256_mul_pd(r, r);
  __m256d y = _mm256_fmadd_pd(_mm256_set1_pd(kC2), r, _mm256_set1_pd(1.0));
  y = _mm256_fmadd_pd(zz, r2, y);
  return _mm256_mul_pd(y, s);
}

// exp of four floats, as double before the final rounding to float.
inline __m128 exp4(__m128 xf) { return _mm256_cvtpd_ps(exp4d(xf)); }

// tanh of four floats' absolute values (each in [0, 9]), (1 - e) / (1 + e) with e = exp(-2a)
// kept in double: no cancellation in 1 - e at float precision.
inline __m128 tanh4_abs(__m128 a) {
  const __m256d e = exp4d(_mm_mul_ps(_mm_set1_ps(-2.0f), a));
  const __m256d one = _mm256_set1_pd(1.0);
  return _mm256_cvtpd_ps(_mm256_div_pd(_mm256_sub_pd(one, e), _mm256_add_pd(one, e)));
}

// exp of eight floats; false (nothing computed) when a lane needs glibc's special cases.
inline bool exp8(__m256 x, __m256* out) {
  const __m256 ax = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
  // Ordered compare: NaN lanes fail it too.
  if (_mm256_movemask_ps(_mm256_cmp_ps(ax, _mm256_set1_ps(87.0f), _CMP_LT_OQ)) != 0xff) return false;
  *out = _mm256_setr_m128(exp4(_mm256_castps256_ps128(x)), exp4(_mm256_extractf128_ps(x, 1)));
  return true;
}

// (-x: flips the sign bit. A function, not a namespace-scope constant: that would run AVX
// code while the program loads, on CPUs without it too.)
inline __m256 negate(__m256 x) { return _mm256_xor_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MIN))); }

void swiglu_forward_avx2(float* out, const float* gate, const float* up, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    __m256 e;
    if (!exp8(negate(g), &e)) {
      scalar_activation_kernels().swiglu_forward(out + i, gate + i, up + i, 8);
      continue;
    }
    const __m256 sg = _mm256_div_ps(one, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, sg), _mm256_loadu_ps(up + i)));
  }
  if (i < n) scalar_activation_kernels().swiglu_forward(out + i, gate + i, up + i, n - i);
}

void swiglu_backward_avx2(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                          int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    __m256 e;
    if (!exp8(negate(g), &e)) {
      scalar_activation_kernels().swiglu_backward(dgate + i, dup + i, dout + i, gate + i, up + i, 8);
      continue;
    }
    const __m256 sg = _mm256_div_ps(one, _mm256_add_ps(one, e));
    const __m256 silu = _mm256_mul_ps(g, sg);
    const __m256 d = _mm256_loadu_ps(dout + i);
    // dout * up * (sg * (1 + g * (1 - sg))), left to right as the scalar kernel
    const __m256 f = _mm256_mul_ps(sg, _mm256_add_ps(one, _mm256_mul_ps(g, _mm256_sub_ps(one, sg))));
    const __m256 dg = _mm256_mul_ps(_mm256_mul_ps(d, _mm256_loadu_ps(up + i)), f);
    _mm256_storeu_ps(dgate + i, _mm256_add_ps(_mm256_loadu_ps(dgate + i), dg));
    _mm256_storeu_ps(dup + i, _mm256_add_ps(_mm256_loadu_ps(dup + i), _mm256_mul_ps(d, silu)));
  }
  if (i < n) scalar_activation_kernels().swiglu_backward(dgate + i, dup + i, dout + i, gate + i, up + i, n - i);
}

void exp_avx2(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 e;
    if (exp8(_mm256_loadu_ps(x + i), &e))
      _mm256_storeu_ps(y + i, e);
    else
      for (int64_t k = i; k < i + 8; ++k) y[k] = std::exp(x[k]);
  }
  for (; i < n; ++i) y[i] = std::exp(x[i]);
}

void tanh_avx2(const float* x, float* y, int64_t n) {
  const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MIN));
  const __m256 small = _mm256_set1_ps(0.03125f), big = _mm256_set1_ps(9.0f);
  // tanh x = x - x^3/3 + 2x^5/15 - 17x^7/315 + 62x^9/2835 (|x| < 2^-5: the next term is < 1e-16 |x|)
  const __m256 c3 = _mm256_set1_ps(-1.0f / 3.0f), c5 = _mm256_set1_ps(2.0f / 15.0f), c7 = _mm256_set1_ps(-17.0f / 315.0f),
               c9 = _mm256_set1_ps(62.0f / 2835.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 a = _mm256_andnot_ps(sign, v);
    // (beyond 9, tanh is 1 in float; NaN lanes go to the scalar path through exp8)
    if (_mm256_movemask_ps(_mm256_cmp_ps(a, a, _CMP_UNORD_Q)) != 0) {  // (NaN lanes: glibc's)
      for (int64_t k = i; k < i + 8; ++k) y[k] = std::tanh(x[k]);
      continue;
    }
    const __m256 ac = _mm256_min_ps(a, big);
    __m256 t = _mm256_setr_m128(tanh4_abs(_mm256_castps256_ps128(ac)), tanh4_abs(_mm256_extractf128_ps(ac, 1)));
    const __m256 v2 = _mm256_mul_ps(v, v);
    __m256 p = _mm256_fmadd_ps(c9, v2, c7);
    p = _mm256_fmadd_ps(p, v2, c5);
    p = _mm256_fmadd_ps(p, v2, c3);
    const __m256 poly = _mm256_fmadd_ps(_mm256_mul_ps(p, v2), v, v);
    t = _mm256_or_ps(t, _mm256_and_ps(v, sign));  // (t >= 0: the sign of x)
    _mm256_storeu_ps(y + i, _mm256_blendv_ps(t, poly, _mm256_cmp_ps(a, small, _CMP_LT_OQ)));
  }
  for (; i < n; ++i) y[i] = std::tanh(x[i]);
}

// tools/fit_erf_coefficients.py: erf(x) = x A(x^2) for |x| < 1, B((|x| - 2.5) / 1.5) on [1, 4].
constexpr double kErfSmall[10] = {  // lowest degree first
    0x1.20dd750429b1cp+0,  -0x1.812746b02767fp-2, 0x1.ce2f2197da066p-4,  -0x1.b82ce160f9293p-6,
    0x1.565ba0a166084p-8,  -0x1.c02875666bf00p-11, 0x1.f94234f2cd9e2p-14, -0x1.f073fea80625ap-17,
    0x1.9af01c8d69d68p-20, -0x1.c1dc2ca85d1a9p-24,
};
constexpr double kErfLarge[19] = {  // lowest degree first
    0x1.ffcaa8f4bab47p-1,  0x1.ac44a232ddc00p-9,   -0x1.9180557b4be7ap-7, 0x1.cdba01e308643p-6,
    -0x1.659667325fd67p-5, 0x1.7c8c36d705b91p-5,   -0x1.0520bef307fd4p-5, 0x1.2fafcbd9783cbp-7,
    0x1.b593110222388p-8,  -0x1.3b4cb7ae3450ep-7,  0x1.2abf516109526p-8,  0x1.d0fd3c203ebdfp-12,
    -0x1.e7979ea8caacfp-10, 0x1.e1bfa4ff5c1fdp-11, 0x1.a4bad9af8aca9p-14, -0x1.34151caa2f8dcp-12,
    0x1.41b4b32c6402dp-14, 0x1.1449cccc344a1p-15,  -0x1.025b46b231011p-16,
};

// p(t) = sum c[i] t^i as four Horner chains in t^4 (P0(t^4) + t P1 + t^2 P2 + t^3 P3): a quarter of
// one chain's dependent multiply-adds, which bound a single Horner chain's speed here.
template <int N>
inline __m256d poly4(const double (&c)[N], __m256d t) {
  const __m256d t2 = _mm256_mul_pd(t, t), t4 = _mm256_mul_pd(t2, t2);
  __m256d p[4];
  for (int j = 0; j < 4; ++j) {
    int i = j + 4 * ((N - 1 - j) / 4);  // the chain's highest coefficient
    p[j] = _mm256_set1_pd(c[i]);
    for (i -= 4; i >= 0; i -= 4) p[j] = _mm256_fmadd_pd(p[j], t4, _mm256_set1_pd(c[i]));
  }
  return _mm256_fmadd_pd(_mm256_fmadd_pd(p[3], t, p[2]), t2, _mm256_fmadd_pd(p[1], t, p[0]));
}

// erf of four floats' absolute values (each in [0, 4]), in double, rounded to float.
inline __m128 erf4_abs(__m128 af) {
  const __m256d a = _mm256_cvtps_pd(af);
  const __m256d small = _mm256_mul_pd(a, poly4(kErfSmall, _mm256_mul_pd(a, a)));
  const __m256d t = _mm256_fmsub_pd(a, _mm256_set1_pd(1.0 / 1.5), _mm256_set1_pd(2.5 / 1.5));
  const __m256d large = poly4(kErfLarge, t);
  return _mm256_cvtpd_ps(_mm256_blendv_pd(small, large, _mm256_cmp_pd(a, _mm256_set1_pd(1.0), _CMP_GE_OQ)));
}

void erf_avx2(const float* x, float* y, int64_t n) {
  const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MIN));
  const __m256 four = _mm256_set1_ps(4.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 a = _mm256_andnot_ps(sign, v);
    if (_mm256_movemask_ps(_mm256_cmp_ps(a, a, _CMP_UNORD_Q)) != 0) {  // (NaN lanes: glibc's)
      for (int64_t k = i; k < i + 8; ++k) y[k] = std::erf(x[k]);
      continue;
    }
    const __m256 ac = _mm256_min_ps(a, four);  // (erf(4) rounds to 1 in float, as everything beyond)
    const __m256 e = _mm256_setr_m128(erf4_abs(_mm256_castps256_ps128(ac)), erf4_abs(_mm256_extractf128_ps(ac, 1)));
    _mm256_storeu_ps(y + i, _mm256_or_ps(e, _mm256_and_ps(v, sign)));  // (e >= 0: the sign of x)
  }
  for (; i < n; ++i) y[i] = std::erf(x[i]);
}

// expm1's series, x (1 + x/2! + x^2/3! + ... + x^11/12!): below |x| 1/2 the next term is < 2e-14 x.
constexpr double kExpm1Series[12] = {1.0,           1.0 / 2,         1.0 / 6,          1.0 / 24,
                                     1.0 / 120,     1.0 / 720,       1.0 / 5040,       1.0 / 40320,
                                     1.0 / 362880,  1.0 / 3628800,   1.0 / 39916800,   1.0 / 479001600};

// expm1 of four floats (each |x| < 87), in double, rounded to float.
inline __m128 expm1_4(__m128 xf) {
  const __m256d x = _mm256_cvtps_pd(xf);
  const __m256d series = _mm256_mul_pd(x, poly4(kExpm1Series, x));
  const __m256d viaexp = _mm256_sub_pd(exp4d(xf), _mm256_set1_pd(1.0));
  const __m256d ax = _mm256_andnot_pd(_mm256_set1_pd(-0.0), x);
  return _mm256_cvtpd_ps(_mm256_blendv_pd(series, viaexp, _mm256_cmp_pd(ax, _mm256_set1_pd(0.5), _CMP_GE_OQ)));
}

void expm1_avx2(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 a = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
    // (ordered compare: NaN lanes fail it too)
    if (_mm256_movemask_ps(_mm256_cmp_ps(a, _mm256_set1_ps(87.0f), _CMP_LT_OQ)) != 0xff) {
      for (int64_t k = i; k < i + 8; ++k) y[k] = std::expm1(x[k]);
      continue;
    }
    _mm256_storeu_ps(y + i, _mm256_setr_m128(expm1_4(_mm256_castps256_ps128(v)), expm1_4(_mm256_extractf128_ps(v, 1))));
  }
  for (; i < n; ++i) y[i] = std::expm1(x[i]);
}

// expm1 of eight floats, each in (-87, 0] after the caller's min with eps; false (nothing computed)
// when a lane is out of that range or NaN.
inline bool expm1_8_nonpositive(__m256 v, __m256* out) {
  if (_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(-87.0f), _CMP_GT_OQ)) != 0xff) return false;
  *out = _mm256_setr_m128(expm1_4(_mm256_castps256_ps128(v)), expm1_4(_mm256_extractf128_ps(v, 1)));
  return true;
}

void xielu_forward_avx2(const float* x, float* y, int64_t n, const float* c) {
  const __m256 c0 = _mm256_set1_ps(c[0]), c1 = _mm256_set1_ps(c[1]), c2 = _mm256_set1_ps(c[2]), c3 = _mm256_set1_ps(c[3]);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    __m256 e;
    if (!expm1_8_nonpositive(_mm256_min_ps(v, c3), &e)) {  // (very negative or NaN lanes: the scalar kernel)
      scalar_activation_kernels().xielu_forward(x + i, y + i, 8, c);
      continue;
    }
    const __m256 bx = _mm256_mul_ps(c2, v);
    const __m256 pos = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(c0, v), v), bx);
    const __m256 neg = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(e, v), c1), bx);
    _mm256_storeu_ps(y + i, _mm256_blendv_ps(neg, pos, _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ)));
  }
  if (i < n) scalar_activation_kernels().xielu_forward(x + i, y + i, n - i, c);
}

void xielu_backward_avx2(float* dx, const float* dout, const float* x, int64_t n, const float* c) {
  const __m256 c0 = _mm256_set1_ps(c[0]), c1 = _mm256_set1_ps(c[1]), c2 = _mm256_set1_ps(c[2]), c3 = _mm256_set1_ps(c[3]);
  const __m256 two = _mm256_set1_ps(2.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    __m256 e;
    if (!expm1_8_nonpositive(_mm256_min_ps(v, c3), &e)) {
      scalar_activation_kernels().xielu_backward(dx + i, dout + i, x + i, 8, c);
      continue;
    }
    const __m256 pos = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(two, c0), v), c2);
    const __m256 neg = _mm256_add_ps(_mm256_mul_ps(e, c1), c2);
    const __m256 flat = _mm256_sub_ps(c2, c1);
    __m256 dg = _mm256_blendv_ps(flat, neg, _mm256_cmp_ps(v, c3, _CMP_LT_OQ));
    dg = _mm256_blendv_ps(dg, pos, _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ));
    _mm256_storeu_ps(dx + i, _mm256_add_ps(_mm256_loadu_ps(dx + i), _mm256_mul_ps(_mm256_loadu_ps(dout + i), dg)));
  }
  if (i < n) scalar_activation_kernels().xielu_backward(dx + i, dout + i, x + i, n - i, c);
}

// log1p's series as 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ... + s^12/13): for |s| <= 3 - 2 sqrt 2
// (0.1716) the next term is below 2e-12 of the sum.
constexpr double kAtanhSeries[7] = {1.0, 1.0 / 3, 1.0 / 5, 1.0 / 7, 1.0 / 9, 1.0 / 11, 1.0 / 13};

// softplus of four floats, each in [-87, 20], in double, rounded to float: e = exp(x), then
// log1p(e) = 2 atanh(e / (2 + e)) while e <= sqrt 2 - 1, else log(1 + e) = k ln 2 + 2 atanh((m - 1) / (m + 1))
// with 1 + e = m 2^k, m in [sqrt 1/2, sqrt 2). (No cancellation either way: 1 + e rounds with
// an error of 2^-53 of a logarithm above 0.34.)
inline __m128 softplus4(__m128 xf) {
  const __m256d e = exp4d(xf), one = _mm256_set1_pd(1.0), two = _mm256_set1_pd(2.0);
  const __m256d s_small = _mm256_div_pd(e, _mm256_add_pd(two, e));
  const __m256d u = _mm256_add_pd(one, e);
  const __m256i bits = _mm256_castpd_si256(u);
  // (the biased exponent as a double: its bits under 2^52's, minus 2^52)
  const __m256d biased = _mm256_sub_pd(
      _mm256_castsi256_pd(_mm256_or_si256(_mm256_srli_epi64(bits, 52), _mm256_set1_epi64x(0x4330000000000000))),
      _mm256_set1_pd(0x1p52));
  __m256d m = _mm256_castsi256_pd(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi64x(0x000fffffffffffff)),
                                                  _mm256_set1_epi64x(0x3ff0000000000000)));
  __m256d k = _mm256_sub_pd(biased, _mm256_set1_pd(1023.0));
  const __m256d big = _mm256_cmp_pd(m, _mm256_set1_pd(1.4142135623730951), _CMP_GT_OQ);
  m = _mm256_blendv_pd(m, _mm256_mul_pd(m, _mm256_set1_pd(0.5)), big);
  k = _mm256_blendv_pd(k, _mm256_add_pd(k, one), big);
  const __m256d s_large = _mm256_div_pd(_mm256_sub_pd(m, one), _mm256_add_pd(m, one));
  const __m256d large_e = _mm256_cmp_pd(e, _mm256_set1_pd(0.41421356237309503), _CMP_GT_OQ);
  const __m256d s = _mm256_blendv_pd(s_small, s_large, large_e);
  const __m256d atanh2 = _mm256_mul_pd(_mm256_add_pd(s, s), poly4(kAtanhSeries, _mm256_mul_pd(s, s)));
  const __m256d kln2 = _mm256_and_pd(_mm256_mul_pd(k, _mm256_set1_pd(0.6931471805599453)), large_e);
  return _mm256_cvtpd_ps(_mm256_add_pd(kln2, atanh2));
}

void softplus_avx2(const float* x, float* y, int64_t n) {
  const __m256 lo = _mm256_set1_ps(-87.0f), hi = _mm256_set1_ps(20.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    // (ordered compare: NaN lanes fail it too; lanes below -87 take glibc's subnormal exp)
    if (_mm256_movemask_ps(_mm256_cmp_ps(v, lo, _CMP_GE_OQ)) != 0xff) {
      scalar_activation_kernels().softplus(x + i, y + i, 8);
      continue;
    }
    const __m256 c = _mm256_min_ps(v, hi);
    const __m256 sp = _mm256_setr_m128(softplus4(_mm256_castps256_ps128(c)), softplus4(_mm256_extractf128_ps(c, 1)));
    _mm256_storeu_ps(y + i, _mm256_blendv_ps(sp, v, _mm256_cmp_ps(v, hi, _CMP_GT_OQ)));
  }
  if (i < n) scalar_activation_kernels().softplus(x + i, y + i, n - i);
}

}  // namespace

const ActivationKernels& avx2_activation_kernels() {
  static const ActivationKernels k{swiglu_forward_avx2, swiglu_backward_avx2, exp_avx2, tanh_avx2, erf_avx2, expm1_avx2,
                                   xielu_forward_avx2, xielu_backward_avx2, softplus_avx2};
  return k;
}

}  // namespace qlora::kernels
