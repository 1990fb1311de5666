//! The binomial tail the open-connection test rests on.
//!
//! A member holding `a` of the pool's `n` open connections at share `p` is
//! judged by how unlikely so many (or so few) would be from a fair
//! balancer: the tail of Binomial(n, p). The Chernoff bound,
//! `exp(−n · KL(a/n ‖ p))`, costs nothing and is exact for a member with
//! none, but above the mean it overstates the tail by about
//! `√(2π · n · x(1 − x))`: at 28 of 40 connections at a quarter share it
//! reads `e^−17.8` where the tail is `e^−19.7`, and 2 nats is the
//! difference between a warning and nothing in a pool of four. So where a
//! verdict may turn on it, the tail is computed exactly, through the
//! regularized incomplete beta function. Dispersion `φ` counts the
//! connections as `n / φ` independent placements (a quasi-binomial), which
//! for the bound is the same as dividing its exponent by `φ`.

use std::f64::consts::PI;

/// How far above the weakest bound a verdict uses the exact tail is still
/// computed: the Chernoff bound overstates the tail by about
/// `½ ln(2π · n · x(1 − x))` nats, 8 at a million connections.
const EXACT_MARGIN: f64 = 12.0;

/// Below this Chernoff exponent the exact tail is not computed: every
/// bound a pool of fewer than 10³⁰ members uses at `--load-alpha` down to
/// 10⁻²⁰ is passed either way (and where it is not, the bound judges, the
/// cautious side).
const EXACT_FLOOR: f64 = -120.0;

/// Continued-fraction steps before giving up (the Chernoff bound stands):
/// it converges in about `√max(a, b)` steps, so this covers pools of
/// millions of open connections.
const MAX_STEPS: usize = 20_000;

/// Kullback-Leibler divergence of Bernoulli(x) from Bernoulli(p), nats.
fn kl(x: f64, p: f64) -> f64 {
    let term = |a: f64, b: f64| if a <= 0.0 { 0.0 } else { a * (a / b).ln() };
    term(x, p) + term(1.0 - x, 1.0 - p)
}

/// ln of the tail of Binomial(`total`, `p`) beyond `a` (above or below
/// the mean, whichever side `a` is on), with placement dispersion `phi`:
/// the exact tail where a verdict may turn on it (within
/// [`EXACT_MARGIN`] of `weakest`, the least evidence any verdict acts
/// on), the Chernoff bound `−total · KL(a/total ‖ p) / φ` elsewhere, which
/// costs nothing. 0 at the mean.
pub fn binomial_log_tail(a: f64, total: f64, p: f64, phi: f64, weakest: f64) -> f64 {
    if total <= 0.0 || p <= 0.0 || p >= 1.0 {
        return 0.0;
    }
    let phi = phi.max(1.0);
    let x = (a / total).clamp(0.0, 1.0);
    let chernoff = -total * kl(x, p) / phi;
    if chernoff > weakest + EXACT_MARGIN || chernoff < EXACT_FLOOR || x == p {
        return chernoff;
    }
    let (n, k) = (total / phi, x * total / phi);
    let exact = if x > p {
        // P(X ≥ k) = I_p(k, n − k + 1).
        ln_beta_inc(p, k, n - k + 1.0)
    } else {
        // P(X ≤ k) = I_{1−p}(n − k, k + 1).
        ln_beta_inc(1.0 - p, n - k, k + 1.0)
    };
    // The exact tail is never above the bound; a rounding that says
    // otherwise is not believed.
    exact.map_or(chernoff, |e| e.min(chernoff))
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7: relative error below 10⁻¹³).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
        return (PI / (PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let series = (C.iter().enumerate().skip(1)).fold(C[0], |s, (i, c)| s + c / (x + i as f64));
    0.5 * (2.0 * PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

/// ln I_x(a, b), the regularized incomplete beta function, where its
/// continued fraction converges fast (x below `(a + 1) / (a + b + 2)`:
/// the tails this module asks for); `None` elsewhere, or when it does not
/// converge. Lentz's method, as in Numerical Recipes' `betacf`.
fn ln_beta_inc(x: f64, a: f64, b: f64) -> Option<f64> {
    if !(x > 0.0 && x < 1.0 && a > 0.0 && b > 0.0) || x >= (a + 1.0) / (a + b + 2.0) {
        return None;
    }
    const TINY: f64 = 1e-300;
    let nonzero = |v: f64| if v.abs() < TINY { TINY } else { v };
    let ln_front =
        a * x.ln() + b * (1.0 - x).ln() - ln_gamma(a) - ln_gamma(b) + ln_gamma(a + b) - a.ln();
    let mut c = 1.0;
    let mut d = 1.0 / nonzero(1.0 - (a + b) * x / (a + 1.0));
    let mut h = d;
    for m in 1..=MAX_STEPS {
        let (m, m2) = (m as f64, 2.0 * m as f64);
        let even = m * (b - m) * x / ((a - 1.0 + m2) * (a + m2));
        d = 1.0 / nonzero(1.0 + even * d);
        c = nonzero(1.0 + even / c);
        h *= d * c;
        let odd = -(a + m) * (a + b + m) * x / ((a + m2) * (a + 1.0 + m2));
        d = 1.0 / nonzero(1.0 + odd * d);
        c = nonzero(1.0 + odd / c);
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < 1e-13 {
            return (h > 0.0).then(|| ln_front + h.ln());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of four's warning bound at the default `--load-alpha`.
    const WARN: f64 = -14.98;

    /// Exact binomial tails, summed in exact arithmetic elsewhere.
    #[test]
    fn tails_are_the_binomial_tails() {
        for (a, n, p, want) in [
            (28.0, 40.0, 0.25, -19.679_098_858_999_986),
            (27.0, 40.0, 0.25, -17.794_188_353_751_643),
            (60.0, 200.0, 0.1, -33.230_302_930_931_2),
            (2.0, 200.0, 0.1, -15.477_758_977_122_505),
            (500.0, 2000.0, 0.2, -17.288_026_252_384_498),
        ] {
            let got = binomial_log_tail(a, n, p, 1.0, WARN);
            assert!(
                (got - want).abs() < 1e-6,
                "{a} of {n} at {p}: {got}, not {want}"
            );
        }
    }

    #[test]
    fn a_member_with_none_is_exact_under_either() {
        let lp = binomial_log_tail(0.0, 200.0, 0.1, 1.0, WARN);
        assert!((lp - 200.0 * 0.9f64.ln()).abs() < 1e-9, "{lp}");
    }

    /// Dispersion 2 counts 60 of 200 as 30 independent placements of 100.
    #[test]
    fn dispersion_counts_fewer_placements() {
        let got = binomial_log_tail(60.0, 200.0, 0.1, 2.0, WARN);
        assert!((got - (-17.526_589_716_397_78)).abs() < 1e-6, "{got}");
    }

    #[test]
    fn the_exact_tail_never_exceeds_the_bound_and_the_mean_is_no_evidence() {
        for (a, n, p) in [(9.0, 40.0, 0.25), (12.0, 40.0, 0.25), (0.0, 3.0, 0.5)] {
            let chernoff = -n * kl(a / n, p);
            assert!(binomial_log_tail(a, n, p, 1.0, WARN) <= chernoff + 1e-12);
        }
        assert_eq!(binomial_log_tail(20.0, 200.0, 0.1, 1.0, WARN), 0.0);
        // Far from any bound: the bound, which costs nothing.
        let (a, n, p) = (14.0, 40.0, 0.25);
        assert_eq!(binomial_log_tail(a, n, p, 1.0, WARN), -n * kl(a / n, p));
        // A looser bound (a larger --load-alpha) asks for the exact tail.
        assert!(binomial_log_tail(a, n, p, 1.0, -1.0) < -n * kl(a / n, p));
        assert!((ln_gamma(10.0) - 362_880f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - PI.sqrt().ln()).abs() < 1e-12);
    }
}
