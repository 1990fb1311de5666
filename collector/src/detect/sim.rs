//! Seeded traffic for tests and the detection benchmark: Poisson and
//! negative-binomial arrivals from a small deterministic PRNG, so every run
//! with the same seed sees the same traffic.

/// SplitMix64: tiny, fast, good enough for simulation.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn f64(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.f64(), self.f64());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Poisson(λ): Knuth for small λ, a rounded normal for large.
    pub fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda < 30.0 {
            let l = (-lambda).exp();
            let (mut k, mut p) = (0u64, 1.0);
            loop {
                p *= self.f64();
                if p <= l {
                    return k;
                }
                k += 1;
            }
        }
        (lambda + lambda.sqrt() * self.normal()).round().max(0.0) as u64
    }

    /// Gamma(shape, 1) (Marsaglia-Tsang).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            return self.gamma(shape + 1.0) * self.f64().powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v > 0.0 && self.f64().ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Negative binomial with mean `mean` and variance `phi * mean`
    /// (a gamma-Poisson mixture); Poisson when `phi <= 1`.
    pub fn neg_binomial(&mut self, mean: f64, phi: f64) -> u64 {
        if phi <= 1.0 + 1e-9 || mean <= 0.0 {
            return self.poisson(mean);
        }
        let shape = mean / (phi - 1.0);
        let rate = self.gamma(shape) * (phi - 1.0);
        self.poisson(rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_are_right() {
        let mut r = Rng::new(1);
        let n = 20_000;
        for (mean, phi) in [(3.0, 1.0), (50.0, 1.0), (10.0, 3.0)] {
            let xs: Vec<f64> = (0..n).map(|_| r.neg_binomial(mean, phi) as f64).collect();
            let m = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64;
            assert!((m - mean).abs() < mean * 0.05, "mean {m} for {mean}");
            assert!(
                (var / m - phi).abs() < phi * 0.15,
                "dispersion {} for {phi}",
                var / m
            );
        }
    }
}
