#!/usr/bin/env python3
"""Fits the polynomials of the vectorized erf (src/model/activation_kernels_avx2.cpp).

erf is evaluated in double precision and rounded to float once, so that the float result is
within an ulp of glibc's erff:
  |x| < 1:      erf(x) = x * A(x^2),            A of degree 9  (fit of erf(x)/x on u = x^2 in [0, 1])
  1 <= |x| < 4: erf(x) = B((|x| - 2.5) / 1.5),  B of degree 18 (fit of erf on [1, 4], t in [-1, 1])
  |x| >= 4:     erf(x) = +-1 (erf(4) = 1 - 1.5e-8 already rounds to 1 in float).
Chebyshev least squares on 4000 Chebyshev points against mpmath's erf at 40 digits, converted to
the monomial basis for Horner's rule; the largest absolute error on a dense grid is printed
(expected ~2e-14 for A, ~1e-11 for B: far below a float ulp of erf, 6e-8 near 1).

Usage: .refenv/bin/python tools/fit_erf_coefficients.py   (prints the C++ constant arrays)
"""
import mpmath as mp
import numpy as np

mp.mp.dps = 40


def fit_small(deg=9):
    u = (np.cos(np.linspace(0, np.pi, 4000)) + 1) / 2
    f = np.array([float(mp.erf(mp.sqrt(v)) / mp.sqrt(v)) if v > 0 else float(2 / mp.sqrt(mp.pi)) for v in u])
    c = np.polynomial.chebyshev.Chebyshev.fit(u, f, deg).convert(kind=np.polynomial.Polynomial).coef
    xs = np.linspace(0, 1, 20001)[1::7]
    err = max(abs(float(mp.erf(mp.mpf(x))) - x * np.polyval(c[::-1], x * x)) for x in xs)
    return c, err


def fit_large(deg=18, lo=1.0, hi=4.0):
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    t = np.cos(np.linspace(0, np.pi, 4000))
    f = np.array([float(mp.erf(mp.mpf(mid + half * v))) for v in t])
    c = np.polynomial.chebyshev.Chebyshev.fit(t, f, deg).convert(kind=np.polynomial.Polynomial).coef
    xs = np.linspace(lo, hi, 3001)
    err = max(abs(float(mp.erf(mp.mpf(v))) - np.polyval(c[::-1], (v - mid) / half)) for v in xs)
    return c, err


def emit(name, c):
    print(f"constexpr double {name}[{len(c)}] = {{  // lowest degree first")
    for v in c:
        print(f"    {float(v).hex()},")
    print("};")


if __name__ == "__main__":
    a, ea = fit_small()
    b, eb = fit_large()
    print(f"// max |error|: small {ea:.3g}, large {eb:.3g}")
    emit("kErfSmall", a)
    emit("kErfLarge", b)
