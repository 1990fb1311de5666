//! `cargo xtask bench-datapath`: what the agent costs the traffic it counts.
//!
//! On a veth pair between two network namespaces, in one run, measured with
//! and without the agent attached (alternating, medians of several runs):
//! bulk throughput (iperf3), connection churn (hey, one connection per
//! request against nginx), the mean cost per run of each eBPF program from
//! `kernel.bpf_stats_enabled`, and the agent's CPU and RSS with 10,000 live
//! endpoints at a 1 s interval. It prints the figures next to the targets
//! and exits non-zero only when it could not measure.

use std::{
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use evenflow_tests::netns;

const CLIENT: &str = "efb-client";
const SERVER: &str = "efb-server";
const SERVER_IP: &str = "10.50.0.2";

/// A process group killed on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: signalling the process group we created.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: as above.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Namespaces, cgroups and pins of the bench, removed on drop.
struct Env {
    cgroups: Vec<PathBuf>,
    dir: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        for ns in [CLIENT, SERVER] {
            netns::delete(ns);
            let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/evenflow/{ns}"));
        }
        // A cgroup is removable once its last process has exited, which
        // can lag the kill by a moment.
        let rmdir = |c: &std::path::Path| {
            for _ in 0..20 {
                if std::fs::remove_dir(c).is_ok() || !c.exists() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("    could not remove cgroup {}", c.display());
        };
        for c in &self.cgroups {
            rmdir(c);
        }
        if let Some(root) = self.cgroups.first().and_then(|c| c.parent()) {
            rmdir(root);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_in(cgroup: &std::path::Path, ns: &str, cmd: &str, args: &[&str]) -> Result<Guard> {
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec ip netns exec {ns} \"$@\"",
        cgroup.display()
    );
    let child = Command::new("sh")
        .args(["-c", &script, "sh", cmd])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {cmd}"))?;
    Ok(Guard(child))
}

fn setup_env() -> Result<Env> {
    let root = evenflow_tests::lab::cgroup2_root()?.join("evenflow-bench");
    let cgroups = vec![root.join("client"), root.join("server")];
    for c in &cgroups {
        std::fs::create_dir_all(c)?;
    }
    let dir = std::env::temp_dir().join("evenflow-bench");
    std::fs::create_dir_all(&dir)?;
    let env = Env { cgroups, dir };
    netns::create(CLIENT)?;
    netns::create(SERVER)?;
    let _ = netns::sh("ip", &["link", "del", "efb-c"]);
    netns::sh(
        "ip",
        &[
            "link", "add", "efb-c", "type", "veth", "peer", "name", "efb-s",
        ],
    )?;
    netns::sh("ip", &["link", "set", "efb-c", "netns", CLIENT])?;
    netns::sh("ip", &["link", "set", "efb-s", "netns", SERVER])?;
    netns::exec(
        CLIENT,
        "ip",
        &["addr", "add", "10.50.0.1/24", "dev", "efb-c"],
    )?;
    netns::exec(
        SERVER,
        "ip",
        &["addr", "add", "10.50.0.2/24", "dev", "efb-s"],
    )?;
    netns::exec(CLIENT, "ip", &["link", "set", "efb-c", "up"])?;
    netns::exec(SERVER, "ip", &["link", "set", "efb-s", "up"])?;
    // 10,000 endpoints: ports 20000-29999 all lead to nginx.
    netns::exec(
        SERVER,
        "nft",
        &[
            "add table ip efb; add chain ip efb pre { type nat hook prerouting priority dstnat; }; \
           add rule ip efb pre tcp dport 20000-29999 redirect to :8080",
        ],
    )?;
    Ok(env)
}

/// `kernel.bpf_stats_enabled`: off while throughput is measured (the stats
/// add two clock reads to every program run), on for the per-program cost,
/// and back to what it was when the bench ends.
struct BpfStats(String);

impl BpfStats {
    const KEY: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn off() -> Result<Self> {
        let was =
            std::fs::read_to_string(Self::KEY).with_context(|| format!("reading {}", Self::KEY))?;
        Self::set(false)?;
        Ok(Self(was.trim().to_owned()))
    }

    fn set(on: bool) -> Result<()> {
        std::fs::write(Self::KEY, if on { "1" } else { "0" })
            .with_context(|| format!("writing {} (needs root)", Self::KEY))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::KEY, &self.0);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `min–max` of a series, scaled, for the spread next to each median.
fn spread(v: &[f64], scale: f64, decimals: usize) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min) / scale;
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max) / scale;
    format!("{lo:.decimals$}–{hi:.decimals$}")
}

fn iperf() -> Result<f64> {
    let out = netns::exec(CLIENT, "iperf3", &["-c", SERVER_IP, "-t", "4", "-J"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no bits_per_second in iperf3 output")
}

fn churn() -> Result<f64> {
    let out = netns::exec(
        CLIENT,
        "hey",
        &[
            "-z",
            "4s",
            "-c",
            "16",
            "-disable-keepalive",
            &format!("http://{SERVER_IP}:8080/"),
        ],
    )?;
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Requests/sec in hey output")
}

fn bpf_costs() -> Result<Vec<(String, f64, u64)>> {
    let out = netns::sh("bpftool", &["prog", "show", "-j"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let mut costs = Vec::new();
    for p in v.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default();
        if !name.starts_with("evenflow_") {
            continue;
        }
        let (ns, cnt) = (
            p["run_time_ns"].as_u64().unwrap_or(0),
            p["run_cnt"].as_u64().unwrap_or(0),
        );
        if cnt > 0 {
            costs.push((name.to_owned(), ns as f64 / cnt as f64, cnt));
        }
    }
    Ok(costs)
}

fn proc_cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("bad /proc/pid/stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

/// The agent process (not its `sh`/`ip` wrappers): the newest
/// evenflow-agent whose command line names `node`.
fn agent_pid(node: &str) -> Result<u32> {
    for e in std::fs::read_dir("/proc")? {
        let e = e?;
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("evenflow-agent")
            && cmd.contains(&format!("--node-name {node}"))
            && !cmd.starts_with("sh ")
        {
            return Ok(pid);
        }
    }
    bail!("agent for {node} not found")
}

/// A running agent; dropping it stops it and uninstalls its programs (they
/// outlive the process through their pinned links, and the "without" rounds
/// must run with nothing attached).
struct AgentGuard {
    _process: Guard,
    node: &'static str,
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        // `_process` stops after this body; the pins go first, which
        // detaches the programs whether or not the process is still up.
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/evenflow/{}", self.node));
    }
}

fn start_agent(node: &'static str, cgroup: &std::path::Path) -> Result<AgentGuard> {
    let bin = evenflow_tests::agent::agent_bin()?;
    let child = Command::new(bin)
        .args([
            "--netns",
            &netns::path(node),
            "--node-name",
            node,
            "--cgroup",
            &cgroup.display().to_string(),
            "--interval",
            "1s",
            "--grpc-addr",
            "127.0.0.1:50051",
            "--metrics-addr",
            "127.0.0.1:9464",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting evenflow-agent")?;
    let g = Guard(child);
    evenflow_tests::wait_for(Duration::from_secs(15), || {
        netns::exec(node, "curl", &["-sf", "127.0.0.1:9464/metrics"]).ok()
    })
    .context("agent did not come up")?;
    Ok(AgentGuard { _process: g, node })
}

pub fn run(rounds: usize) -> Result<()> {
    crate::shell::require_root(
        "bench-datapath",
        "builds network namespaces and loads eBPF programs",
    )?;
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    crate::setup::run()?;
    crate::shell::step("cargo build --release (bins)", || {
        crate::shell::cargo(&["build", "--release", "--bins"])
    })?;
    // SAFETY: setting an env var before any thread is spawned.
    unsafe {
        std::env::set_var(
            "EVENFLOW_AGENT_BIN",
            crate::shell::workspace_root().join("target/release/evenflow-agent"),
        )
    };
    crate::interrupt::install();
    let env = setup_env()?;
    let (client_cg, server_cg) = (env.cgroups[0].clone(), env.cgroups[1].clone());
    let nginx_dir = env.dir.join("nginx");
    std::fs::create_dir_all(nginx_dir.join("tmp"))?;
    let d = nginx_dir.display();
    std::fs::write(
        nginx_dir.join("nginx.conf"),
        format!(
            "worker_processes 2;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 8192; }}\nhttp {{ access_log off; client_body_temp_path {d}/tmp;\n\
             proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
             server {{ listen 8080 backlog=4096; location / {{ return 200 'ok'; }} }} }}\n"
        ),
    )?;
    let conf = nginx_dir.join("nginx.conf").display().to_string();
    let prefix = nginx_dir.display().to_string();
    let nginx = spawn_in(&server_cg, SERVER, "nginx", &["-p", &prefix, "-c", &conf])?;
    let iperf3_server = spawn_in(&server_cg, SERVER, "iperf3", &["-s"])?;
    std::thread::sleep(Duration::from_secs(1));

    let (mut tput, mut conns) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    let _stats = BpfStats::off()?;
    for round in 0..rounds {
        for with in [false, true] {
            crate::interrupt::check()?;
            let agent = if with {
                Some(start_agent(SERVER, &server_cg)?)
            } else {
                None
            };
            tput[with as usize].push(iperf()?);
            conns[with as usize].push(churn()?);
            eprintln!(
                "    round {} {}: {:.2} Gbit/s, {:.0} conn/s",
                round + 1,
                if with {
                    "with agent   "
                } else {
                    "without agent"
                },
                tput[with as usize].last().copied().unwrap_or(0.0) / 1e9,
                conns[with as usize].last().copied().unwrap_or(0.0)
            );
            drop(agent);
        }
    }
    // Per-program cost in a pass of its own: bpf_stats adds two clock reads
    // to every run, which would bias the throughput figures above.
    crate::interrupt::check()?;
    let costs = {
        let _agent = start_agent(SERVER, &server_cg)?;
        BpfStats::set(true)?;
        let r = iperf().and_then(|_| churn());
        let costs = bpf_costs();
        BpfStats::set(false)?;
        r?;
        costs?
    };
    crate::interrupt::check()?;
    let (t0, t1) = (median(tput[0].clone()), median(tput[1].clone()));
    let (c0, c1) = (median(conns[0].clone()), median(conns[1].clone()));

    // Agent footprint with 10,000 live endpoints: the client's agent sees
    // SENDS_TO 10.50.0.2:20000..29999, one connection each.
    let agent = start_agent(CLIENT, &client_cg)?;
    let pid = agent_pid(CLIENT)?;
    let idle_rss = rss_mib(pid)?;
    let script = format!(
        "import socket\nfor p in range(20000, 30000):\n s=socket.create_connection(('{SERVER_IP}', p), timeout=5)\n \
         s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n while s.recv(4096): pass\n s.close()\n"
    );
    let maker = spawn_in(&client_cg, CLIENT, "python3", &["-c", &script])?;
    let t = Instant::now();
    let mut maker = maker;
    while maker.0.try_wait()?.is_none() && t.elapsed() < Duration::from_secs(120) {
        crate::interrupt::check()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let metrics = netns::exec(CLIENT, "curl", &["-sf", "127.0.0.1:9464/metrics"])?;
    let live: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("evenflow_datapath_endpoints{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let window = 20.0;
    let cpu0 = proc_cpu_secs(pid)?;
    for _ in 0..(window as u64 * 5) {
        crate::interrupt::check()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    let cpu_pct = (proc_cpu_secs(pid)? - cpu0) / window * 100.0;
    let rss = rss_mib(pid)?;
    drop(agent);
    drop(maker);
    drop(iperf3_server);
    drop(nginx);
    drop(env);

    println!(
        "\nevenflow datapath benchmark ({rounds} rounds, medians; veth between two namespaces)"
    );
    println!(
        "{:<44} {:>14} {:>14} {:>8}  target",
        "", "without agent", "with agent", "ratio"
    );
    println!(
        "{:<44} {:>14.2} {:>14.2} {:>8.3}  >= 0.97",
        "bulk throughput, iperf3 (Gbit/s)",
        t0 / 1e9,
        t1 / 1e9,
        t1 / t0
    );
    println!(
        "{:<44} {:>14} {:>14}",
        "  range over the rounds",
        spread(&tput[0], 1e9, 2),
        spread(&tput[1], 1e9, 2)
    );
    println!(
        "{:<44} {:>14.0} {:>14.0} {:>8.3}  >= 0.95",
        "connection churn, hey no keep-alive (conn/s)",
        c0,
        c1,
        c1 / c0
    );
    println!(
        "{:<44} {:>14} {:>14}",
        "  range over the rounds",
        spread(&conns[0], 1.0, 0),
        spread(&conns[1], 1.0, 0)
    );
    println!(
        "\nper-program cost (kernel.bpf_stats_enabled: run_time_ns / run_cnt over one iperf3 + one churn run):"
    );
    for (name, ns, cnt) in &costs {
        println!("  {name:<22} {ns:>7.1} ns/run over {cnt} runs   (target <= 100 ns)");
    }
    println!("\nagent footprint, {live} live endpoints, 1 s interval:");
    println!("  CPU {cpu_pct:.2}% of one core over {window:.0} s   (target <= 2%)");
    println!("  RSS {rss:.1} MiB (idle {idle_rss:.1} MiB)   (target <= 64 MiB)");
    if live < 10_000 {
        println!("  note: only {live} endpoints became live (expected 10,000)");
    }
    Ok(())
}
