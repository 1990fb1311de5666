//! `cargo xtask demo`: evenflow's main job on this machine.
//!
//! Builds everything, then creates a lab of network namespaces (a client, a
//! load balancer running real HAProxy, backends running nginx), starts one
//! evenflow-agent per node, drives steady traffic, and shows what the load
//! balancer's agent sees: every backend's share of new connections, live.
//! It finishes by itself, removes everything it made (also on Ctrl-C), and
//! exits 0 only when the agents' counts matched what the backends served.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use evenflow_tests::{agent, client, haproxy, lab::Lab, nginx};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Options of the demo.
pub struct Options {
    pub backends: usize,
    pub duration: Duration,
}

pub fn run(opts: &Options) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo builds network namespaces and loads eBPF: run it as root");
    }
    if !(2..=16).contains(&opts.backends) {
        bail!("--backends must be between 2 and 16");
    }
    crate::setup::run()?;
    crate::shell::step("cargo build (bins)", || {
        crate::shell::cargo(&["build", "--bins"])
    })?;
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    eprintln!(
        "==> building the lab: client -> HAProxy -> {} nginx backends, one agent per node",
        opts.backends
    );
    let mut lab = Lab::new("demo", opts.backends).context("building the lab")?;
    let mut logs = Vec::new();
    for b in lab.backends.clone() {
        logs.push(nginx::start(&mut lab, &b)?);
        agent::start(&mut lab, &b, &["--service", "web=8080"])?;
    }
    let lb = lab.lb.clone();
    agent::start(&mut lab, &lb, &[])?;
    haproxy::start(&mut lab, false)?;
    let vip = format!("{}:80", evenflow_tests::lab::VIP4).parse()?;
    let client_ns = lab.client.ns.clone();
    evenflow_tests::wait_for(Duration::from_secs(10), || {
        client::http_load(&client_ns, vip, 1, 1)
            .ok()
            .filter(|l| l.connections == 1)
    })
    .context("HAProxy did not answer on the VIP")?;

    // Steady traffic until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut total = client::Load::default();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(l) = client::http_load(&client_ns, vip, 20, 2) {
                    total.connections += l.connections;
                    total.failures += l.failures;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            total
        })
    };
    let start = Instant::now();
    let mut last: Option<serde_json::Value> = None;
    while start.elapsed() < opts.duration && !INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(1));
        if let Ok(snap) = agent::snapshot(&lab.lb.ns) {
            print_view(&lab, &snap, start.elapsed());
            last = Some(snap);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let sent = load
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
    if INTERRUPTED.load(Ordering::SeqCst) {
        drop(lab);
        bail!("interrupted; the lab was removed");
    }
    // Let the last connections close and be read, then compare.
    std::thread::sleep(Duration::from_millis(1500));
    let snap = agent::snapshot(&lab.lb.ns)
        .ok()
        .or(last)
        .context("no snapshot from the lb agent")?;
    let mut ok = true;
    println!("\n{:<10} {:>10} {:>10}", "BACKEND", "NGINX", "AGENT");
    for (i, b) in lab.backends.iter().enumerate() {
        let served = nginx::read_log(&logs[i])?;
        let seen = agent::totals(&snap, &b.addr4.to_string(), 8080, "DIRECTION_SENDS_TO").opened;
        let mark = if served.connections == seen {
            "match"
        } else {
            ok = false;
            "MISMATCH"
        };
        println!(
            "{:<10} {:>10} {:>10}  {mark}",
            b.role, served.connections, seen
        );
    }
    println!(
        "client made {} connections ({} failed)",
        sent.connections, sent.failures
    );
    drop(lab);
    if !ok {
        bail!("the load balancer's agent disagreed with the backends' own counts");
    }
    println!("evenflow counted every connection the backends served; the lab was removed");
    Ok(())
}

fn print_view(lab: &Lab, snap: &serde_json::Value, t: Duration) {
    let rate = |b: &evenflow_tests::lab::Node| -> f64 {
        snap["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["address"] == b.addr4.to_string() && e["direction"] == "DIRECTION_SENDS_TO")
            .and_then(|e| e["rates"]["connsOpened"].as_f64())
            .unwrap_or(0.0)
    };
    let rates: Vec<f64> = lab.backends.iter().map(rate).collect();
    let total: f64 = rates.iter().sum();
    println!(
        "── t={:>3}s  lb {} sends {:.0} conn/s ──",
        t.as_secs(),
        lab.lb.ns,
        total
    );
    for (b, r) in lab.backends.iter().zip(&rates) {
        let share = if total > 0.0 { r / total } else { 0.0 };
        let bar = "█".repeat((share * 40.0).round() as usize);
        println!(
            "  {:<4} {:<15} {:>6.1} conn/s {:>5.1}% (expected {:>4.1}%) {bar}",
            b.role,
            b.addr4,
            r,
            share * 100.0,
            100.0 / lab.backends.len() as f64
        );
    }
}
