//! `bench-datapath --only drain`: the journal's drain, an event's time on
//! nodes of 2 to 8,192 CPU numbers (`evenflow-agent bench-drain`, which
//! fills a journal of its own with events spread over every part). The
//! drain merges the parts by time: how its cost grows with the parts is
//! what a node of many CPUs pays, in the agent's read and in the packet
//! that runs TC egress's drain.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::bench::{NODE_CPUS, median, print_ratios, spread};

/// One node shape's figures: ns an event over a long run, and µs a run
/// of 64 events (TC egress's drain's).
type Figures = [(f64, f64); NODE_CPUS.len()];

/// One agent's figures, round by round.
type Rounds = Vec<Figures>;

/// Runs `rounds` rounds, the agents alternating, and prints each agent's
/// medians with their ranges, as ratios to its own on 2 CPUs and, with a
/// baseline, this tree's to the baseline's round by round.
pub fn run(rounds: usize, agents: &[(String, PathBuf)]) -> Result<()> {
    let mut measured: Vec<Rounds> = vec![Vec::new(); agents.len()];
    for round in 0..rounds {
        for ((name, bin), rounds) in agents.iter().zip(&mut measured) {
            let figures = measure(bin).with_context(|| format!("{name}, round {}", round + 1))?;
            rounds.push(figures);
        }
    }
    println!(
        "\nthe journal's drain by the node's CPU numbers (events spread over every part; {rounds} rounds, medians, range over the rounds; ×: to its own on 2 CPUs):"
    );
    let figures = [
        ("an event, in a run of 65,536 (the agent's read)", "ns", 0),
        (
            "a run of 64 events (what the packet that runs TC egress's drain waits; wall time, the system call's few µs included)",
            "µs",
            1,
        ),
    ];
    for (what, unit, which) in figures {
        println!("  {what}:");
        let pick = |f: &(f64, f64)| if which == 0 { f.0 } else { f.1 };
        for ((name, _), rounds) in agents.iter().zip(&measured) {
            println!("    {name}:");
            let on_two = median(rounds.iter().map(|r| pick(&r[0])).collect());
            for (i, cpus) in NODE_CPUS.iter().enumerate() {
                let v: Vec<f64> = rounds.iter().map(|r| pick(&r[i])).collect();
                let m = median(v.clone());
                println!(
                    "      {cpus:>5} CPUs {m:>10.1} {unit}  ({})  ×{:.1}",
                    spread(&v, 1.0, 1),
                    m / on_two
                );
            }
        }
        if let ([_, (base, _)], [this, baseline]) = (agents, &measured[..]) {
            print_ratios(base, this, baseline, |r, i| pick(&r[i]));
        }
    }
    Ok(())
}

/// One run of `bin bench-drain` over every shape.
fn measure(bin: &std::path::Path) -> Result<Figures> {
    let list = NODE_CPUS.map(|c| c.to_string()).join(",");
    let out = Command::new(bin)
        .args(["bench-drain", "--cpus", &list])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} bench-drain failed ({}): {} (an agent older than the drain bench has no such command: \
             compare against a revision that has it)",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// `cpus <n> ns_per_event <x> us_per_run_of_64 <y>` lines, one for each
/// of [`NODE_CPUS`] in order.
fn parse(out: &str) -> Result<Figures> {
    let mut figures = [(0.0, 0.0); NODE_CPUS.len()];
    let mut lines = out.lines().filter(|l| l.starts_with("cpus "));
    for (cpus, figure) in NODE_CPUS.iter().zip(&mut figures) {
        let line = lines
            .next()
            .with_context(|| format!("no figure for {cpus} CPUs in {out:?}"))?;
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["cpus", n, "ns_per_event", x, "us_per_run_of_64", y] if n == cpus.to_string() => {
                let read = |v: &str| v.parse().with_context(|| format!("reading {line:?}"));
                *figure = (read(x)?, read(y)?);
            }
            _ => bail!("expected {cpus} CPUs' figure, read {line:?}"),
        }
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_agents_figures_in_order() {
        let out = "cpus 2 ns_per_event 26.2 us_per_run_of_64 6.5\n\
                   cpus 64 ns_per_event 62.1 us_per_run_of_64 11.8\n\
                   cpus 1024 ns_per_event 91.3 us_per_run_of_64 38.7\n\
                   cpus 8192 ns_per_event 139.3 us_per_run_of_64 241.3\n";
        assert_eq!(
            super::parse(out).unwrap(),
            [(26.2, 6.5), (62.1, 11.8), (91.3, 38.7), (139.3, 241.3)]
        );
        assert!(super::parse("cpus 64 ns_per_event 1.0 us_per_run_of_64 1.0\n").is_err());
        assert!(super::parse("cpus 2 ns_per_event 1.0\n").is_err());
        assert!(super::parse("").is_err());
    }
}
