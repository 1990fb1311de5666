//! A lab: a client node, a load balancer node and N backend nodes, each a
//! network namespace with a cgroup of its own, joined by one veth pair per
//! link. No bridges: an agent attaches to every interface that is up, and a
//! bridge plus its ports would count each packet twice.
//!
//! ```text
//!  client 10.1.0.2 ── 10.1.0.1 lb 10.2.i.1 ── 10.2.i.2 backend i (i = 1..N)
//!         fd01::2  ── fd01::1     fd02:i::1 ── fd02:i::2
//!  VIPs 10.9.0.1 and fd09::1 on the lb's lo; every node routes via the lb.
//! ```
//!
//! The VIPs sit in prefixes of their own that the client reaches through
//! its default route: an IPv6 VIP inside the client's on-link /64 would get
//! no neighbour answer and connections would time out.
//!
//! Addresses are the same in every lab: each lab lives in namespaces of its
//! own, so its subnets cannot clash with another lab's. Only the names that
//! live in host-wide spaces (namespaces, veths before they move, cgroups,
//! pinned map directories, temporary directories) carry the lab's name, so
//! labs with different names run side by side.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cgroup::{self, Proc},
    netns,
};

/// The IPv4 VIP clients connect to.
pub const VIP4: &str = "10.9.0.1";
/// The IPv6 VIP.
pub const VIP6: &str = "fd09::1";
/// The port the load balancers listen on at the VIP.
pub const VIP_PORT: u16 = 80;
/// The backends' HTTP port.
pub const BACKEND_PORT: u16 = 8080;

/// The VIP as a socket address clients connect to.
pub fn vip(ipv6: bool) -> SocketAddr {
    let ip: IpAddr = if ipv6 {
        IpAddr::V6(std::net::Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, 1))
    } else {
        IpAddr::V4(std::net::Ipv4Addr::new(10, 9, 0, 1))
    };
    SocketAddr::new(ip, VIP_PORT)
}

/// Where the cgroup v2 hierarchy is mounted (kept here for xtask).
pub fn cgroup2_root() -> Result<PathBuf> {
    cgroup::root()
}

/// One node of the lab.
#[derive(Clone, Debug)]
pub struct Node {
    /// Role-based short name: "client", "lb", "b1"…
    pub role: String,
    /// Namespace name, also the node name its agent reports and pins under.
    pub ns: String,
    /// cgroup v2 directory for the node's processes.
    pub cgroup: PathBuf,
    /// The node's IPv4 address on its link towards the lb (for the lb: its
    /// client-side address).
    pub addr4: IpAddr,
    /// The same for IPv6.
    pub addr6: IpAddr,
}

impl Node {
    /// The node's address in one family.
    pub fn addr(&self, ipv6: bool) -> IpAddr {
        if ipv6 { self.addr6 } else { self.addr4 }
    }

    /// Creates the node's namespace (with `lo` up) and cgroup, with no
    /// pinned state left from an earlier run; wiring is the caller's.
    pub fn create(&self) -> Result<()> {
        netns::create(&self.ns)?;
        cgroup::create(&self.cgroup)?;
        let _ = std::fs::remove_dir_all(self.pin_dir());
        Ok(())
    }

    /// Where the node's agent pins its maps.
    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from(crate::BPFFS).join("evenflow").join(&self.ns)
    }

    /// What bpftool says, as JSON, of the node's pinned map `map` asked
    /// `map <verb> pinned <pin> <args>`.
    fn bpftool_map(&self, verb: &str, map: &str, args: &[&str]) -> Result<serde_json::Value> {
        let path = self.pin_dir().join(map).display().to_string();
        let mut all = vec!["-j", "map", verb, "pinned", &path];
        all.extend_from_slice(args);
        let out = netns::sh("bpftool", &all)?;
        serde_json::from_str(&out).with_context(|| format!("bpftool's map {verb} of {path}"))
    }

    /// What bpftool shows of the node's pinned map `map` (`max_entries`,
    /// `bytes_memlock`: the kernel memory it holds, ...).
    pub fn pinned_map(&self, map: &str) -> Result<serde_json::Value> {
        self.bpftool_map("show", map, &[])
    }

    /// The `u64` at `index` of the node's pinned array map `map` (bpftool
    /// reads the pin and prints the value's bytes, in this machine's order).
    pub fn pinned_u64(&self, map: &str, index: u32) -> Result<u64> {
        let key: Vec<String> = index.to_ne_bytes().iter().map(u8::to_string).collect();
        let mut args = vec!["key"];
        args.extend(key.iter().map(String::as_str));
        let v = self.bpftool_map("lookup", map, &args)?;
        let bytes = v["value"]
            .as_array()
            .with_context(|| format!("bpftool's lookup in {map} has no value bytes: {v}"))?
            .iter()
            .map(|b| {
                b.as_str()
                    .and_then(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).ok())
                    .with_context(|| format!("bpftool's lookup in {map}: {b} is not a byte"))
            })
            .collect::<Result<Vec<u8>>>()?;
        let word: [u8; 8] = bytes.try_into().map_err(|b: Vec<u8>| {
            anyhow::anyhow!("{map} holds {} bytes a value, not 8", b.len())
        })?;
        Ok(u64::from_ne_bytes(word))
    }

    /// The flag in the node's `EF_META` that tells its handshakes to look
    /// for a translation in `EF_LOCAL_NAT` (raised where a SYN of the
    /// node's own was DNATed).
    pub fn local_nat_flag(&self) -> Result<u64> {
        self.pinned_u64(agent_common::maps::META, agent_common::META_LOCAL_NAT)
    }

    /// How many entries the node's pinned map `map` holds (bpftool reads
    /// the pin).
    pub fn pinned_entries(&self, map: &str) -> Result<usize> {
        let v = self.bpftool_map("dump", map, &[])?;
        v.as_array()
            .map(Vec::len)
            .with_context(|| format!("bpftool's dump of {map} is not a list: {v}"))
    }
}

/// The lab. Dropping it tears everything down.
pub struct Lab {
    /// The lab's name, the prefix of everything it creates.
    pub name: String,
    /// Where the test's own client runs.
    pub client: Node,
    /// The load balancer (HAProxy or nftables DNAT), with the VIPs.
    pub lb: Node,
    /// The backends (nginx on [`BACKEND_PORT`]).
    pub backends: Vec<Node>,
    /// Temporary directory for configuration files and logs.
    pub dir: PathBuf,
    /// Nodes added after the lab was built ([`Lab::add_node`]): a second
    /// cluster node, pods.
    others: Vec<Node>,
    procs: Vec<Proc>,
    cgroup_root: PathBuf,
}

/// Names a lab's nodes: namespace and cgroup from the lab's name and the
/// node's role.
pub struct Names {
    lab: String,
    cgroup_root: PathBuf,
}

impl Names {
    /// A node with its own cgroup under the test root.
    pub fn node(&self, role: &str, addr4: &str, addr6: &str) -> Result<Node> {
        let cgroup = self.cgroup_root.join(format!("{}-{role}", self.lab));
        self.with_cgroup(role, addr4, addr6, cgroup)
    }

    /// A node whose cgroup is a child of `parent`'s (a pod on a node).
    pub fn child(&self, parent: &Node, role: &str, addr4: &str, addr6: &str) -> Result<Node> {
        self.with_cgroup(role, addr4, addr6, parent.cgroup.join(role))
    }

    fn with_cgroup(&self, role: &str, addr4: &str, addr6: &str, cgroup: PathBuf) -> Result<Node> {
        Ok(Node {
            role: role.to_owned(),
            ns: format!("{}-{role}", self.lab),
            cgroup,
            addr4: addr4.parse()?,
            addr6: addr6.parse()?,
        })
    }
}

impl Lab {
    /// Builds the topology with `backends` backend nodes (1 to 99). `name`
    /// must be 1 to 10 letters or digits and unique among labs alive at
    /// once; a leftover lab of the same name (a crashed run) is replaced.
    pub fn new(name: &str, backends: usize) -> Result<Self> {
        if !(1..=99).contains(&backends) {
            bail!("a lab has 1 to 99 backends, not {backends}");
        }
        Self::assemble(
            name,
            |n| {
                Ok((
                    n.node("client", "10.1.0.2", "fd01::2")?,
                    n.node("lb", "10.1.0.1", "fd01::1")?,
                    (1..=backends)
                        .map(|i| {
                            n.node(
                                &format!("b{i}"),
                                &format!("10.2.{i}.2"),
                                &format!("fd02:{i}::2"),
                            )
                        })
                        .collect::<Result<_>>()?,
                ))
            },
            Lab::build,
        )
    }

    /// A lab of the client, lb and backends `nodes` names, wired by
    /// `build` (the topology of [`Lab::new`], or another such as
    /// [`crate::kubenode`]'s).
    pub fn assemble(
        name: &str,
        nodes: impl FnOnce(&Names) -> Result<(Node, Node, Vec<Node>)>,
        build: impl FnOnce(&mut Lab) -> Result<()>,
    ) -> Result<Self> {
        crate::preflight()?;
        if name.is_empty() || name.len() > 10 || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!(
                "lab name `{name}` must be 1 to 10 letters or digits (it prefixes interface names)"
            );
        }
        let cgroup_root = cgroup::root()?.join("evenflow-test");
        let dir = std::env::temp_dir().join(format!("evenflow-lab-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (client, lb, backends) = nodes(&Names {
            lab: name.to_owned(),
            cgroup_root: cgroup_root.clone(),
        })?;
        let mut lab = Lab {
            name: name.to_owned(),
            client,
            lb,
            backends,
            dir,
            others: Vec::new(),
            procs: Vec::new(),
            cgroup_root,
        };
        // On error, dropping `lab` removes what was built so far.
        build(&mut lab).with_context(|| format!("building lab {name}"))?;
        Ok(lab)
    }

    /// How this lab names nodes (for nodes added after it is built).
    pub fn names(&self) -> Names {
        Names {
            lab: self.name.clone(),
            cgroup_root: self.cgroup_root.clone(),
        }
    }

    /// Every node: client, lb, backends, then those added later.
    pub fn nodes(&self) -> Vec<Node> {
        let mut v = vec![self.client.clone(), self.lb.clone()];
        v.extend(self.backends.iter().cloned());
        v.extend(self.others.iter().cloned());
        v
    }

    /// Adds `node` (named by [`Lab::names`]) to the built lab: its
    /// namespace, with `lo` up, and its cgroup, removed with the lab. Wiring
    /// it is the caller's.
    pub fn add_node(&mut self, node: Node) -> Result<Node> {
        node.create()?;
        self.others.push(node.clone());
        Ok(node)
    }

    fn build(&mut self) -> Result<()> {
        for n in self.nodes() {
            n.create()?;
        }
        let (c, l) = (self.client.ns.clone(), self.lb.ns.clone());
        // client <-> lb
        let (vc, vl) = (format!("{}c", self.name), self.lb_link(0));
        netns::veth(&vc, &c, &vl, &l)?;
        netns::addr(&c, &vc, "10.1.0.2/24")?;
        netns::addr(&c, &vc, "fd01::2/64")?;
        netns::addr(&l, &vl, "10.1.0.1/24")?;
        netns::addr(&l, &vl, "fd01::1/64")?;
        netns::default_route(&c, "10.1.0.1")?;
        netns::default_route(&c, "fd01::1")?;
        // The VIPs on the lb's lo: HAProxy binds them, DNAT rewrites them.
        netns::addr(&l, "lo", &format!("{VIP4}/32"))?;
        netns::addr(&l, "lo", &format!("{VIP6}/128"))?;
        netns::sysctl(&l, "net.ipv4.ip_forward", "1")?;
        netns::sysctl(&l, "net.ipv6.conf.all.forwarding", "1")?;
        for i in 1..=self.backends.len() {
            self.link_backend(i)?;
        }
        Ok(())
    }

    /// The veth pair between the lb and backend `i` (from 1), named
    /// `<lab>l<i>` on the lb's side and `<lab>b<i>` on the backend's, with
    /// the backend's addresses and default route: how the lab builds it,
    /// and how a test brings it back after deleting it (a pod's veth
    /// coming back under its name).
    pub fn link_backend(&self, i: usize) -> Result<()> {
        let b = &self.backends[i - 1].ns;
        let l = &self.lb.ns;
        let (vb, vl) = (format!("{}b{i}", self.name), self.lb_link(i));
        netns::veth(&vb, b, &vl, l)?;
        netns::addr(b, &vb, &format!("10.2.{i}.2/24"))?;
        netns::addr(b, &vb, &format!("fd02:{i}::2/64"))?;
        netns::addr(l, &vl, &format!("10.2.{i}.1/24"))?;
        netns::addr(l, &vl, &format!("fd02:{i}::1/64"))?;
        netns::default_route(b, &format!("10.2.{i}.1"))?;
        netns::default_route(b, &format!("fd02:{i}::1"))?;
        Ok(())
    }

    /// Deletes the link between the lb and backend `i` (both ends).
    pub fn unlink_backend(&self, i: usize) -> Result<()> {
        netns::exec(&self.lb.ns, "ip", &["link", "del", &self.lb_link(i)])?;
        Ok(())
    }

    /// The lb's end of its link to backend `i` (from 1), or to the client
    /// (0).
    pub fn lb_link(&self, i: usize) -> String {
        format!("{}l{i}", self.name)
    }

    /// Starts `cmd args…` inside `node`'s namespace and cgroup (joined
    /// before exec, so every socket it creates belongs to both), with its
    /// output in `<lab dir>/<name>.log`. The lab stops it when dropped.
    pub fn spawn(&mut self, node: &Node, name: &str, cmd: &str, args: &[&str]) -> Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let p = cgroup::spawn(name, &node.cgroup, &node.ns, &log, cmd, args)?;
        self.procs.push(p);
        Ok(())
    }
    /// Writes the pool file at `path`: pool `web`, the lb its load
    /// balancer, every backend on `port` with `weights[i]` (1 past the
    /// end), the one at index `draining` (if any) draining. Replaced in one
    /// rename, as an editor or a ConfigMap update does.
    pub fn write_pool_file(
        &self,
        path: &Path,
        port: u16,
        weights: &[u32],
        draining: Option<usize>,
    ) -> Result<()> {
        let members: String = (self.backends.iter().enumerate())
            .map(|(i, b)| {
                format!(
                    "  {{ address = \"{}:{port}\", weight = {}, draining = {} }},\n",
                    b.addr4,
                    weights.get(i).copied().unwrap_or(1),
                    draining == Some(i)
                )
            })
            .collect();
        let text = format!(
            "[[pool]]\nname = \"web\"\nlb_nodes = [\"{}\"]\nmembers = [\n{members}]\n",
            self.lb.ns
        );
        crate::replace_file(path, text)
    }

    /// The output of the process started as `name`.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Fails if a lab process has exited, with its output in the message.
    pub fn check_alive(&mut self) -> Result<()> {
        for p in &mut self.procs {
            if let Some(status) = p.exited() {
                bail!(
                    "{} exited early ({status}); its output:\n{}",
                    p.name,
                    p.output()
                );
            }
        }
        Ok(())
    }

    /// SIGKILLs the processes whose names start with `prefix`, as a crash or
    /// an OOM kill would: no signal handler, no cleanup.
    pub fn kill(&mut self, prefix: &str) {
        for p in self.procs.iter_mut().filter(|p| p.name.starts_with(prefix)) {
            if let Ok(pid) = i32::try_from(p.child.id()) {
                // SAFETY: signalling the process group we created.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let _ = p.child.wait();
        }
        self.procs.retain(|p| !p.name.starts_with(prefix));
    }

    /// Sends `signal` to the processes whose names start with `prefix`
    /// (SIGSTOP pauses a client with its connections open, SIGCONT resumes
    /// it).
    pub fn signal(&self, prefix: &str, signal: i32) -> Result<()> {
        for p in self.procs.iter().filter(|p| p.name.starts_with(prefix)) {
            p.signal(signal)
                .with_context(|| format!("signalling {}", p.name))?;
        }
        Ok(())
    }

    /// The process id of the first process whose name starts with
    /// `prefix`.
    pub fn pid(&self, prefix: &str) -> Option<u32> {
        let p = self.procs.iter().find(|p| p.name.starts_with(prefix))?;
        Some(p.child.id())
    }

    /// Stops the processes whose names start with `prefix`.
    pub fn stop(&mut self, prefix: &str) {
        self.procs.retain(|p| !p.name.starts_with(prefix));
    }

    /// Waits until `sockets` sockets in `node` listen on TCP `port`, looking
    /// with `ss` rather than connecting, which would add a connection to
    /// the very counts the tests compare. Fails early if a process died.
    pub fn wait_listening(&mut self, node: &Node, port: u16, sockets: usize) -> Result<()> {
        if self.wait_listeners(node, port, |n| n >= sockets) {
            return Ok(());
        }
        self.check_alive()?;
        bail!(
            "{sockets} listening socket(s) on :{port} in {} did not appear within 10 s",
            node.ns
        )
    }

    /// Waits until nothing in `node` listens on TCP `port` any more.
    pub fn wait_not_listening(&self, node: &Node, port: u16) -> Result<()> {
        if self.wait_listeners(node, port, |n| n == 0) {
            return Ok(());
        }
        bail!(
            "something in {} still listens on :{port} after 10 s",
            node.ns
        )
    }

    /// Whether the number of sockets listening on TCP `port` in `node`
    /// came to satisfy `want` within 10 s.
    fn wait_listeners(&self, node: &Node, port: u16, want: impl Fn(usize) -> bool) -> bool {
        let filter = format!("sport = :{port}");
        crate::wait_for(std::time::Duration::from_secs(10), || {
            let out = netns::exec(&node.ns, "ss", &["-Hltn", &filter]).ok()?;
            want(out.lines().count()).then_some(())
        })
        .is_some()
    }

    /// The state of every process and the tail of its output, for failure
    /// messages.
    pub fn processes_report(&mut self) -> String {
        let mut out = String::new();
        for p in &mut self.procs {
            let state = p
                .exited()
                .map_or_else(|| "running".to_owned(), |s| format!("exited: {s}"));
            let text = p.output();
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            out.push_str(&format!("--- {} ({state})\n", p.name));
            for l in tail.iter().rev() {
                out.push_str(&format!("    {l}\n"));
            }
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first (agents stop, servers close), then the pins (the
        // agents' programs stay attached through their pinned links until
        // these go), whatever is left in the cgroups, then namespaces (their
        // veths go with them) and files.
        self.procs.clear();
        for n in self.nodes() {
            let _ = std::fs::remove_dir_all(n.pin_dir());
            cgroup::remove(&n.cgroup);
            netns::delete(&n.ns);
        }
        // Only succeeds once no other lab uses it.
        let _ = std::fs::remove_dir(&self.cgroup_root);
        if std::env::var_os("EVENFLOW_KEEP_LAB").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
