//! A lab: a client node, a load balancer node and N backend nodes, each a
//! network namespace with a cgroup of its own, joined by veth pairs (no
//! bridges: an agent attaches to every up interface, and a bridge plus its
//! ports would count a packet twice).
//!
//! ```text
//!  client 10.1.0.2 ── 10.1.0.1 lb ── 10.2.i.1 ── 10.2.i.2 backend i (i = 1..N)
//!         fd01::2 ─── fd01::1    ─── fd02:i::1 ─ fd02:i::2
//!  VIP 10.9.0.1 / fd09::1 on the lb's lo; every node routes via the lb.
//! ```
//!
//! Addresses are the same in every lab: each lab lives in its own
//! namespaces, so only names (namespaces, veths, cgroups, pins) are unique.

use std::{
    net::IpAddr,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result};

use crate::netns;

/// The VIP clients connect to.
pub const VIP4: &str = "10.9.0.1";
/// The IPv6 VIP.
pub const VIP6: &str = "fd09::1";
/// The backends' HTTP port.
pub const BACKEND_PORT: u16 = 8080;

/// One node of the lab.
#[derive(Clone, Debug)]
pub struct Node {
    /// Role-based short name: "client", "lb", "b1"...
    pub role: String,
    /// Namespace name, also the node name agents report.
    pub ns: String,
    /// cgroup v2 directory for the node's processes.
    pub cgroup: PathBuf,
    /// The node's IPv4 address on its link towards the lb (the lb's own is
    /// its client-side address).
    pub addr4: IpAddr,
    /// The same for IPv6.
    pub addr6: IpAddr,
}

/// A process the lab owns; its whole process group dies with the lab.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: signalling a process group we created.
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
        }
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// The lab. Dropping it tears everything down.
pub struct Lab {
    pub name: String,
    pub client: Node,
    pub lb: Node,
    pub backends: Vec<Node>,
    pub dir: PathBuf,
    procs: Vec<Proc>,
    cgroup_root: PathBuf,
}

/// The mount point of the cgroup v2 hierarchy.
pub fn cgroup2_root() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup v2 hierarchy mounted (run `cargo xtask setup`)")
}

impl Lab {
    /// Builds the topology with `backends` backend nodes. `name` must be
    /// short (≤ 6 characters) and unique among labs alive at once.
    pub fn new(name: &str, backends: usize) -> Result<Self> {
        crate::require_root();
        let cgroup_root = cgroup2_root()?.join("evenflow-test");
        std::fs::create_dir_all(&cgroup_root).context("creating the test cgroup")?;
        let dir = std::env::temp_dir().join(format!("evenflow-lab-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let node = |role: &str, a4: &str, a6: &str| -> Result<Node> {
            Ok(Node {
                role: role.to_owned(),
                ns: format!("{name}-{role}"),
                cgroup: cgroup_root.join(format!("{name}-{role}")),
                addr4: a4.parse()?,
                addr6: a6.parse()?,
            })
        };
        let mut lab = Lab {
            name: name.to_owned(),
            client: node("client", "10.1.0.2", "fd01::2")?,
            lb: node("lb", "10.1.0.1", "fd01::1")?,
            backends: (1..=backends)
                .map(|i| {
                    node(
                        &format!("b{i}"),
                        &format!("10.2.{i}.2"),
                        &format!("fd02:{i}::2"),
                    )
                })
                .collect::<Result<_>>()?,
            dir,
            procs: Vec::new(),
            cgroup_root,
        };
        lab.build()
            .with_context(|| format!("building lab {name}"))?;
        Ok(lab)
    }

    fn nodes(&self) -> Vec<Node> {
        let mut v = vec![self.client.clone(), self.lb.clone()];
        v.extend(self.backends.iter().cloned());
        v
    }

    fn build(&mut self) -> Result<()> {
        for n in self.nodes() {
            netns::create(&n.ns)?;
            let _ = std::fs::remove_dir(&n.cgroup);
            std::fs::create_dir_all(&n.cgroup)
                .with_context(|| format!("creating {}", n.cgroup.display()))?;
            let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/evenflow/{}", n.ns));
        }
        let (c, l) = (&self.client.ns, &self.lb.ns);
        let ip = |ns: &str, args: &[&str]| netns::exec(ns, "ip", args);
        // client <-> lb
        let (vc, vl) = (format!("{}c", self.name), format!("{}l0", self.name));
        veth(&vc, c, &vl, l)?;
        ip(c, &["addr", "add", "10.1.0.2/24", "dev", &vc])?;
        ip(c, &["addr", "add", "fd01::2/64", "dev", &vc, "nodad"])?;
        ip(l, &["addr", "add", "10.1.0.1/24", "dev", &vl])?;
        ip(l, &["addr", "add", "fd01::1/64", "dev", &vl, "nodad"])?;
        ip(c, &["route", "add", "default", "via", "10.1.0.1"])?;
        ip(c, &["-6", "route", "add", "default", "via", "fd01::1"])?;
        // VIPs on the lb's lo.
        ip(l, &["addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
        ip(l, &["addr", "add", &format!("{VIP6}/128"), "dev", "lo"])?;
        netns::exec(l, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        netns::exec(l, "sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
        for (i, b) in self.backends.iter().enumerate() {
            let i = i + 1;
            let (vb, vl) = (format!("{}b{i}", self.name), format!("{}l{i}", self.name));
            veth(&vb, &b.ns, &vl, l)?;
            ip(
                &b.ns,
                &["addr", "add", &format!("10.2.{i}.2/24"), "dev", &vb],
            )?;
            ip(
                &b.ns,
                &[
                    "addr",
                    "add",
                    &format!("fd02:{i}::2/64"),
                    "dev",
                    &vb,
                    "nodad",
                ],
            )?;
            ip(l, &["addr", "add", &format!("10.2.{i}.1/24"), "dev", &vl])?;
            ip(
                l,
                &[
                    "addr",
                    "add",
                    &format!("fd02:{i}::1/64"),
                    "dev",
                    &vl,
                    "nodad",
                ],
            )?;
            ip(
                &b.ns,
                &["route", "add", "default", "via", &format!("10.2.{i}.1")],
            )?;
            ip(
                &b.ns,
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("fd02:{i}::1"),
                ],
            )?;
        }
        Ok(())
    }

    /// Starts `cmd args…` inside `node`'s namespace and cgroup (joined
    /// before exec, so every socket it creates belongs to the cgroup), with
    /// output to `<lab dir>/<log>.log`.
    pub fn spawn(&mut self, node: &Node, log: &str, cmd: &str, args: &[&str]) -> Result<()> {
        let logf = std::fs::File::create(self.dir.join(format!("{log}.log")))?;
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec ip netns exec {} \"$@\"",
            node.cgroup.display(),
            node.ns
        );
        let child = Command::new("sh")
            .args(["-c", &script, "sh", cmd])
            .args(args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {cmd} in {}", node.ns))?;
        self.procs.push(Proc {
            name: format!("{log} ({cmd})"),
            child,
        });
        Ok(())
    }

    /// Starts a process in the node's namespace (via the agent's own
    /// `--netns`, so /sys keeps its bpffs and cgroup mounts), not in its
    /// cgroup.
    pub fn spawn_host(&mut self, log: &str, cmd: &str, args: &[&str]) -> Result<()> {
        let logf = std::fs::File::create(self.dir.join(format!("{log}.log")))?;
        let child = Command::new(cmd)
            .args(args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {cmd}"))?;
        self.procs.push(Proc {
            name: format!("{log} ({cmd})"),
            child,
        });
        Ok(())
    }

    /// The log of a process started with `log`.
    pub fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{log}.log"))).unwrap_or_default()
    }

    /// Fails if a lab process has exited (its log tail in the message).
    pub fn check_alive(&mut self) -> Result<()> {
        for p in &mut self.procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                anyhow::bail!("{} exited early ({status})", p.name);
            }
        }
        Ok(())
    }

    /// Stops the processes started under `log` names matching `prefix`.
    pub fn stop(&mut self, prefix: &str) {
        self.procs.retain(|p| !p.name.starts_with(prefix));
    }
}

fn veth(a: &str, ns_a: &str, b: &str, ns_b: &str) -> Result<()> {
    let _ = netns::sh("ip", &["link", "del", a]);
    netns::sh("ip", &["link", "add", a, "type", "veth", "peer", "name", b])?;
    netns::sh("ip", &["link", "set", a, "netns", ns_a])?;
    netns::sh("ip", &["link", "set", b, "netns", ns_b])?;
    netns::exec(ns_a, "ip", &["link", "set", a, "up"])?;
    netns::exec(ns_b, "ip", &["link", "set", b, "up"])?;
    Ok(())
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first (agents detach, servers close), then the rest.
        self.procs.clear();
        for n in self.nodes() {
            netns::delete(&n.ns);
            let _ = std::fs::remove_dir(&n.cgroup);
            let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/evenflow/{}", n.ns));
        }
        let _ = std::fs::remove_dir(&self.cgroup_root);
        if std::env::var_os("EVENFLOW_KEEP_LAB").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
