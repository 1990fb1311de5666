//! Seeded traffic for tests and the detection benchmark: Poisson and
//! negative-binomial arrivals, and pools of long-lived connections with
//! heavy-tailed requests, from a small deterministic PRNG, so every run
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

/// Heavy-tailed sizes: Pareto with tail index `alpha` (infinite variance
/// below 2), drawn through a table of its quantiles (the tail beyond the
/// table exactly), so simulating days of requests stays cheap.
#[derive(Clone, Debug)]
pub struct Pareto {
    table: Vec<f64>,
    xm: f64,
    inv_alpha: f64,
    /// Mean and variance of a draw from the table's body (every draw but
    /// the tail beyond it), for sums of many.
    body_mean: f64,
    body_var: f64,
}

const PARETO_TABLE: usize = 4096;

impl Pareto {
    /// Mean `mean` (> 0), tail index `alpha` (> 1).
    pub fn new(mean: f64, alpha: f64) -> Self {
        let xm = mean * (alpha - 1.0) / alpha;
        let inv_alpha = 1.0 / alpha;
        let table: Vec<f64> = (0..=PARETO_TABLE)
            .map(|k| {
                let u = (k as f64 / PARETO_TABLE as f64).max(1.0 / PARETO_TABLE as f64);
                xm * u.powf(-inv_alpha)
            })
            .collect();
        // Moments of the body: u uniform on [1/T, 1], x interpolated
        // linearly within each cell (trapezoids of x and of x²).
        let cells = (1..PARETO_TABLE).map(|k| (table[k], table[k + 1]));
        let (m1, m2) = cells.fold((0.0, 0.0), |(m1, m2), (a, b)| {
            (m1 + (a + b) / 2.0, m2 + (a * a + a * b + b * b) / 3.0)
        });
        let n = (PARETO_TABLE - 1) as f64;
        let body_mean = m1 / n;
        Self {
            table,
            xm,
            inv_alpha,
            body_mean,
            body_var: (m2 / n - body_mean * body_mean).max(0.0),
        }
    }

    /// The sum of `k` draws: the draws beyond the table (the heavy tail)
    /// one by one, exactly; the body's sum by its normal approximation
    /// once there are 30 or more of them (their variance is finite).
    pub fn sum(&self, k: u64, rng: &mut Rng) -> f64 {
        if k < 30 {
            return (0..k).map(|_| self.sample(rng)).sum();
        }
        let tail = rng.poisson(k as f64 / PARETO_TABLE as f64).min(k);
        let body = (k - tail) as f64;
        let mut total = (body * self.body_mean + (body * self.body_var).sqrt() * rng.normal())
            .max(body * self.xm);
        for _ in 0..tail {
            let u = rng.f64() / PARETO_TABLE as f64;
            total += self.xm * u.powf(-self.inv_alpha);
        }
        total
    }

    pub fn sample(&self, rng: &mut Rng) -> f64 {
        let u = rng.f64();
        let x = u * PARETO_TABLE as f64;
        if x < 1.0 {
            return self.xm * u.powf(-self.inv_alpha);
        }
        let k = x as usize;
        let f = x - k as f64;
        let lo = self.table[k.min(PARETO_TABLE)];
        let hi = self.table[(k + 1).min(PARETO_TABLE)];
        lo + (hi - lo) * f
    }
}

/// How a [`LongLived`] pool's clients behave.
#[derive(Clone, Debug)]
pub struct LongLivedSpec {
    /// Member weights.
    pub weights: Vec<f64>,
    /// Clients, one connection each.
    pub clients: usize,
    /// Mean connection lifetime in ticks (exponential); infinite: never
    /// re-established.
    pub lifetime: f64,
    /// Mean requests per client per tick.
    pub requests: f64,
    /// Log-normal σ of the clients' request rates (0: all alike).
    pub rate_sigma: f64,
    /// Mean request and response sizes, bytes.
    pub request_bytes: f64,
    pub response_bytes: f64,
    /// Pareto tail index of both sizes.
    pub size_alpha: f64,
    /// The balancer places each connection on the member holding the
    /// fewest (ties at random) instead of at random by weight.
    pub least_connections: bool,
}

impl LongLivedSpec {
    /// `members` equal members, `clients` clients.
    pub fn balanced(members: usize, clients: usize) -> Self {
        Self {
            weights: vec![1.0; members],
            clients,
            lifetime: 180.0,
            requests: 5.0,
            rate_sigma: 0.3,
            request_bytes: 600.0,
            response_bytes: 4000.0,
            size_alpha: 2.0,
            least_connections: false,
        }
    }
}

/// The address of simulated member `i`.
pub fn member_id(i: usize) -> String {
    format!("10.{}.{}.{}:8080", i / 65_536, (i / 256) % 256, i % 256)
}

/// One member's numbers for one tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberTick {
    pub new_conns: u64,
    pub active: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Clone, Debug)]
struct Client {
    member: usize,
    rate: f64,
    /// Never re-establishes its connection.
    pinned: bool,
}

/// A pool of long-lived connections, simulated a tick at a time: each
/// client holds one connection, placed by the balancer at random by weight
/// (as kube-proxy and random balancers do) or on the member holding the
/// fewest for weight ([`LongLivedSpec::least_connections`]), re-established now and then,
/// and sends requests at its own rate with heavy-tailed sizes both ways.
/// Faults: members down (their clients reconnect elsewhere), new members,
/// skewed placement (routing), heavier clients on one member, and
/// connections moved outside the balancer's sight.
#[derive(Clone, Debug)]
pub struct LongLived {
    pub spec: LongLivedSpec,
    clients: Vec<Client>,
    /// Per member: cannot be chosen, its connections are gone.
    pub down: Vec<bool>,
    /// Per member: multiplies its weight when the balancer places.
    pub placement: Vec<f64>,
    /// Per member: multiplies the request rate of the clients on it.
    pub load: Vec<f64>,
    request: Pareto,
    response: Pareto,
    pending: Vec<u64>,
}

impl LongLived {
    /// A pool in its steady state: every client connected, placed by
    /// weight.
    pub fn new(spec: LongLivedSpec, rng: &mut Rng) -> Self {
        let n = spec.weights.len();
        let mut p = Self {
            clients: Vec::with_capacity(spec.clients),
            down: vec![false; n],
            placement: vec![1.0; n],
            load: vec![1.0; n],
            request: Pareto::new(spec.request_bytes, spec.size_alpha),
            response: Pareto::new(spec.response_bytes, spec.size_alpha),
            pending: vec![0; n],
            spec,
        };
        let sigma = p.spec.rate_sigma;
        for _ in 0..p.spec.clients {
            let member = p.place(rng);
            // Mean-one log-normal.
            let rate = (sigma * rng.normal() - sigma * sigma / 2.0).exp();
            p.clients.push(Client {
                member,
                rate,
                pinned: false,
            });
        }
        p
    }

    /// Members.
    pub fn members(&self) -> usize {
        self.spec.weights.len()
    }

    /// Adds an empty member; returns its index.
    pub fn add_member(&mut self, weight: f64) -> usize {
        self.spec.weights.push(weight);
        self.down.push(false);
        self.placement.push(1.0);
        self.load.push(1.0);
        self.pending.push(0);
        self.spec.weights.len() - 1
    }

    /// Takes member `i` down or up. Going down, its clients reconnect at
    /// once to the others (new connections there, next tick).
    pub fn set_down(&mut self, i: usize, down: bool, rng: &mut Rng) {
        self.down[i] = down;
        if down {
            for c in 0..self.clients.len() {
                if self.clients[c].member == i {
                    let m = self.place(rng);
                    self.clients[c].member = m;
                    self.pending[m] += 1;
                }
            }
        }
    }

    /// Moves `n` connections from the other members to member `to`
    /// without new connections, and pins them there (they are never
    /// re-established): connections that piled up during an event the
    /// detector did not see, and stay.
    pub fn move_to(&mut self, to: usize, n: usize) {
        let mut moved = 0;
        for c in self.clients.iter_mut() {
            if moved == n {
                break;
            }
            if c.member != to {
                c.member = to;
                c.pinned = true;
                moved += 1;
            }
        }
    }

    /// Connections member `i` holds now.
    pub fn held(&self, i: usize) -> usize {
        self.clients.iter().filter(|c| c.member == i).count()
    }

    /// Makes member `i` hold exactly `n` connections, without new
    /// connections: more are moved to it (and pinned, as by
    /// [`LongLived::move_to`]); surplus ones move to the others.
    pub fn set_held(&mut self, i: usize, n: usize) {
        let held = self.held(i);
        if held < n {
            self.move_to(i, n - held);
            return;
        }
        let others: Vec<usize> = (0..self.members()).filter(|&m| m != i).collect();
        if others.is_empty() {
            return;
        }
        let surplus = self.clients.iter_mut().filter(|c| c.member == i);
        for (k, c) in surplus.take(held - n).enumerate() {
            c.member = others[k % others.len()];
        }
    }

    fn place(&self, rng: &mut Rng) -> usize {
        if self.spec.least_connections {
            return self.least_held(rng);
        }
        let w = |i: usize| {
            if self.down[i] {
                0.0
            } else {
                self.spec.weights[i] * self.placement[i]
            }
        };
        let total: f64 = (0..self.members()).map(w).sum();
        let mut x = rng.f64() * total;
        for i in 0..self.members() {
            x -= w(i);
            if x <= 0.0 && w(i) > 0.0 {
                return i;
            }
        }
        (0..self.members()).rev().find(|&i| w(i) > 0.0).unwrap_or(0)
    }

    /// The member a least-connections balancer picks: the fewest
    /// connections for its weight, among those it sends to (up, placement
    /// above zero); ties at random.
    fn least_held(&self, rng: &mut Rng) -> usize {
        let mut held = vec![0usize; self.members()];
        for c in &self.clients {
            if let Some(h) = held.get_mut(c.member) {
                *h += 1;
            }
        }
        let open = |i: &usize| !self.down[*i] && self.placement[*i] > 0.0;
        let load = |i: usize| held[i] as f64 / self.spec.weights[i];
        let Some(least) = (0..self.members()).filter(open).map(load).reduce(f64::min) else {
            return 0;
        };
        let ties: Vec<usize> = (0..self.members())
            .filter(|i| open(i) && load(*i) <= least)
            .collect();
        ties[((rng.f64() * ties.len() as f64) as usize).min(ties.len() - 1)]
    }

    /// The detector's input for one tick's numbers (server view; members
    /// named by [`member_id`]).
    pub fn input(&self, name: &str, tick: u64, t: &[MemberTick]) -> super::PoolInput {
        let mut input = super::PoolInput {
            name: name.to_owned(),
            tick,
            members: Vec::new(),
            balancing: if self.spec.least_connections {
                super::Balancing::LeastConnections
            } else {
                super::Balancing::Weighted
            },
        };
        self.fill(&mut input, tick, t);
        input
    }

    /// [`LongLived::input`] into an existing input, reusing its members.
    pub fn fill(&self, input: &mut super::PoolInput, tick: u64, t: &[MemberTick]) {
        input.tick = tick;
        input.members.truncate(t.len());
        for (i, m) in t.iter().enumerate() {
            let view = super::ViewInput {
                fresh: true,
                reset: false,
                new_conns: m.new_conns,
                bytes_in: m.bytes_in,
                bytes_out: m.bytes_out,
                failed: 0,
                active: m.active,
            };
            // A member that is down does not listen, and its agent says so.
            let listening = Some(!self.down[i]);
            match input.members.get_mut(i) {
                Some(x) => {
                    x.weight = self.spec.weights[i];
                    x.server = Some(view);
                    x.listening = listening;
                }
                None => input.members.push(super::MemberInput {
                    id: member_id(i),
                    weight: self.spec.weights[i],
                    draining: false,
                    not_ready: false,
                    lb_by_node: Vec::new(),
                    lb_failed_by_node: Vec::new(),
                    server: Some(view),
                    lb: None,
                    cpu: None,
                    listening,
                }),
            }
        }
    }

    /// One tick: reconnections, then every client's requests.
    pub fn tick(&mut self, rng: &mut Rng) -> Vec<MemberTick> {
        let n = self.members();
        let mut out = vec![MemberTick::default(); n];
        for (i, p) in self.pending.iter_mut().enumerate() {
            out[i].new_conns += std::mem::take(p);
        }
        let hazard = if self.spec.lifetime.is_finite() && self.spec.lifetime > 0.0 {
            1.0 / self.spec.lifetime
        } else {
            0.0
        };
        // Each client reconnects with probability 1/lifetime: drawn as a
        // count, then clients at random (pinned ones stay).
        let clients = self.clients.len();
        if hazard > 0.0 && clients > 0 {
            for _ in 0..rng.poisson(clients as f64 * hazard) {
                let c = ((rng.f64() * clients as f64) as usize).min(clients - 1);
                if self.clients[c].pinned {
                    continue;
                }
                // Closed first: a least-connections balancer no longer
                // counts it where it was.
                self.clients[c].member = usize::MAX;
                let m = self.place(rng);
                self.clients[c].member = m;
                out[m].new_conns += 1;
            }
        }
        // A member's clients' Poisson requests add up to one Poisson.
        let mut rates = vec![0.0; n];
        for c in &self.clients {
            out[c.member].active += 1;
            rates[c.member] += c.rate;
        }
        for (i, t) in out.iter_mut().enumerate() {
            let k = rng.poisson(self.spec.requests * rates[i] * self.load[i]);
            t.bytes_in = self.request.sum(k, rng) as u64;
            t.bytes_out = self.response.sum(k, rng) as u64;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_sums_keep_the_mean_and_the_tail() {
        let p = Pareto::new(1000.0, 2.0);
        let mut r = Rng::new(3);
        let n = 4000;
        let exact: Vec<f64> = (0..n)
            .map(|_| (0..200).map(|_| p.sample(&mut r)).sum())
            .collect();
        let fast: Vec<f64> = (0..n).map(|_| p.sum(200, &mut r)).collect();
        let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
        assert!(
            (mean(&exact) / 200_000.0 - 1.0).abs() < 0.03,
            "{}",
            mean(&exact)
        );
        assert!((mean(&fast) / mean(&exact) - 1.0).abs() < 0.03);
        // The largest sums come from the same heavy tail.
        let top = |x: &[f64]| {
            let mut v = x.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() * 99 / 100]
        };
        assert!((top(&fast) / top(&exact) - 1.0).abs() < 0.15);
    }

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
