//! A node as Kubernetes builds one, as a [`Lab`]: the lab's `lb` is the
//! node (its root network namespace, where kube-proxy's rules, the agent
//! and the collector run), its `backends` and its `client` are pods.
//!
//! * Each pod has a network namespace of its own behind a veth pair,
//!   `eth0` inside, the pod IP as a /32, a default route through a link-local
//!   gateway (`169.254.1.1`) that the node's side answers by proxy-ARP, and
//!   a /32 host route to the pod on the node — the routed layout of
//!   Calico-style CNIs. IPv6 likewise: a /128, a default route through
//!   `fe80::1` on the node's side.
//! * Each pod's processes run in a cgroup of its own, a child of the node's:
//!   one agent attached to the node's cgroup sees every pod's sockets, as
//!   on a node whose pods live under the kubelet's cgroup tree.
//! * kube-proxy's nftables mode, reduced to what it does for ClusterIPs: a
//!   `services` chain that sends a ClusterIP:port to the Service's chain,
//!   which picks an endpoint chain with `numgen random`, which DNATs to the
//!   endpoint (marking hairpin traffic for masquerade), hooked at prerouting
//!   (traffic from pods) and output (the node's own). Every sync replaces
//!   the whole table in one transaction, as kube-proxy's syncs are atomic;
//!   established connections keep their conntrack entry.
//!
//! ```text
//!  client 10.244.0.2 ─┐
//!  pod i  10.244.0.1i ─┼─ veth /32, proxy-ARP ── node (forwarding, DNAT)
//!  ClusterIPs 10.96.0.0/16, DNATed on the node
//! ```

use std::net::IpAddr;

use anyhow::{Context as _, Result};

use crate::{
    lab::{Lab, Names, Node},
    netns,
};

/// The pods' default gateway, answered by the node's proxy-ARP.
pub const GATEWAY4: &str = "169.254.1.1";
/// The IPv6 gateway: the node side's link-local address.
pub const GATEWAY6: &str = "fe80::1";

/// Pod `index`'s addresses: the client is 2, pods start at 10.
fn pod_addrs(index: usize) -> (String, String) {
    (format!("10.244.0.{index}"), format!("fd44::{index:x}"))
}

fn pod(n: &Names, node: &Node, role: &str, index: usize) -> Result<Node> {
    let (a4, a6) = pod_addrs(index);
    n.child(node, role, &a4, &a6)
}

impl Lab {
    /// A Kubernetes node with a client pod and a pod per name in `pods`
    /// (`lab.backends`, in that order). `name` as for [`Lab::new`].
    pub fn kubernetes_node(name: &str, pods: &[&str]) -> Result<Lab> {
        Lab::assemble(
            name,
            |n| {
                let node = n.node("node", "10.0.0.1", "fd00::1")?;
                let client = pod(n, &node, "client", 2)?;
                let pods = pods
                    .iter()
                    .enumerate()
                    .map(|(i, role)| pod(n, &node, role, 10 + i))
                    .collect::<Result<_>>()?;
                Ok((client, node, pods))
            },
            build,
        )
    }
}

fn build(lab: &mut Lab) -> Result<()> {
    let node = lab.lb.clone();
    node.create()?;
    // The node's own address (its uplink's, on a real node).
    netns::addr(&node.ns, "lo", &format!("{}/32", node.addr4))?;
    netns::addr(&node.ns, "lo", &format!("{}/128", node.addr6))?;
    // Proxy-ARP answers for an address the node routes out of another
    // interface: on a real node the default route via its uplink covers
    // the pods' gateway address; here a route of its own does.
    netns::exec(
        &node.ns,
        "ip",
        &["route", "add", &format!("{GATEWAY4}/32"), "dev", "lo"],
    )?;
    netns::sysctl(&node.ns, "net.ipv4.ip_forward", "1")?;
    netns::sysctl(&node.ns, "net.ipv6.conf.all.forwarding", "1")?;
    for (i, p) in std::iter::once(lab.client.clone())
        .chain(lab.backends.clone())
        .enumerate()
    {
        wire(lab, &p, i)?;
    }
    Ok(())
}

/// Gives pod `p` its namespace, cgroup and veth (the node side named after
/// the lab and `slot`), addresses and routes.
fn wire(lab: &Lab, p: &Node, slot: usize) -> Result<()> {
    let node = &lab.lb.ns;
    p.create()?;
    let host = format!("{}h{slot}", lab.name);
    // Created straight into both namespaces: `eth0` never exists on the
    // host running the test.
    netns::sh(
        "ip",
        &[
            "link", "add", &host, "netns", node, "type", "veth", "peer", "name", "eth0", "netns",
            &p.ns,
        ],
    )
    .with_context(|| format!("creating {p:?}'s veth"))?;
    let pod = |args: &[&str]| netns::exec(&p.ns, "ip", args).map(drop);
    let on_node = |args: &[&str]| netns::exec(node, "ip", args).map(drop);
    pod(&["link", "set", "eth0", "up"])?;
    netns::addr(&p.ns, "eth0", &format!("{}/32", p.addr4))?;
    netns::addr(&p.ns, "eth0", &format!("{}/128", p.addr6))?;
    pod(&["route", "add", GATEWAY4, "dev", "eth0", "scope", "link"])?;
    pod(&["route", "add", "default", "via", GATEWAY4, "dev", "eth0"])?;
    pod(&[
        "-6", "route", "add", "default", "via", GATEWAY6, "dev", "eth0",
    ])?;
    on_node(&["link", "set", &host, "up"])?;
    netns::sysctl(node, &format!("net.ipv4.conf.{host}.proxy_arp"), "1")?;
    netns::addr(node, &host, &format!("{GATEWAY6}/64"))?;
    on_node(&["route", "add", &format!("{}/32", p.addr4), "dev", &host])?;
    on_node(&[
        "-6",
        "route",
        "add",
        &format!("{}/128", p.addr6),
        "dev",
        &host,
    ])?;
    Ok(())
}

/// Starts a new pod sandbox named `role` on the node (a surge pod of a
/// rolling update), after the lab is built; it joins `lab.backends`.
pub fn add_pod(lab: &mut Lab, role: &str) -> Result<Node> {
    let p = pod(&lab.names(), &lab.lb, role, 10 + lab.backends.len())?;
    wire(lab, &p, 1 + lab.backends.len())?;
    lab.backends.push(p.clone());
    Ok(p)
}

/// A Service as kube-proxy programs it: ClusterIP, port, target port.
#[derive(Clone, Debug)]
pub struct ClusterIp {
    /// Service name (names its chains).
    pub name: String,
    /// The ClusterIP.
    pub ip: IpAddr,
    /// The Service port.
    pub port: u16,
    /// The endpoints' port.
    pub target_port: u16,
}

/// The `kube-proxy` table for these Services and the endpoints each is to
/// send to (kube-proxy's view of the ready endpoints).
pub fn rules(services: &[(&ClusterIp, Vec<IpAddr>)]) -> String {
    let mut t = String::from(
        "table ip kube-proxy {\n\
         \x20chain mark-for-masquerade { meta mark set meta mark | 0x4000; }\n\
         \x20chain masquerading {\n  meta mark & 0x4000 == 0 return\n  meta mark set meta mark ^ 0x4000\n  masquerade fully-random\n }\n\
         \x20chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }\n\
         \x20chain nat-output { type nat hook output priority -100; policy accept; jump services; }\n\
         \x20chain nat-postrouting { type nat hook postrouting priority srcnat; policy accept; jump masquerading; }\n",
    );
    let mut dispatch = Vec::new();
    // A Service without endpoints gets no rule (kube-proxy rejects in a
    // filter chain; here the connection simply finds no route).
    for (svc, endpoints) in services.iter().filter(|(_, e)| !e.is_empty()) {
        let chain = format!("service-{}", svc.name);
        dispatch.push(format!(
            "  ip daddr {} tcp dport {} goto {chain}\n",
            svc.ip, svc.port
        ));
        let mut vmap = Vec::new();
        for (i, ep) in endpoints.iter().enumerate() {
            let ep_chain = format!("endpoint-{}-{i}", svc.name);
            t.push_str(&format!(
                " chain {ep_chain} {{\n  ip saddr {ep} jump mark-for-masquerade\n  meta l4proto tcp dnat to {ep}:{}\n }}\n",
                svc.target_port
            ));
            vmap.push(format!("{i} : goto {ep_chain}"));
        }
        let body = format!(
            "  numgen random mod {} vmap {{ {} }}\n",
            vmap.len(),
            vmap.join(", ")
        );
        t.push_str(&format!(" chain {chain} {{\n{body} }}\n"));
    }
    t.push_str(&format!(
        " chain services {{\n{} }}\n}}\n",
        dispatch.concat()
    ));
    t
}

/// Replaces the node's `kube-proxy` table with [`rules`] in one
/// transaction (a kube-proxy sync).
pub fn sync(lab: &Lab, services: &[(&ClusterIp, Vec<IpAddr>)]) -> Result<()> {
    let text = format!(
        "table ip kube-proxy {{}}\ndelete table ip kube-proxy\n{}",
        rules(services)
    );
    let path = lab.dir.join("kube-proxy.nft");
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    netns::exec(&lab.lb.ns, "nft", &["-f", &path.display().to_string()])
        .with_context(|| format!("loading kube-proxy's rules:\n{text}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_dispatch_each_cluster_ip_to_its_endpoints() {
        let a = ClusterIp {
            name: "svc-a".into(),
            ip: "10.96.0.10".parse().unwrap(),
            port: 80,
            target_port: 8080,
        };
        let t = rules(&[(
            &a,
            vec![
                "10.244.0.10".parse().unwrap(),
                "10.244.0.11".parse().unwrap(),
            ],
        )]);
        assert!(
            t.contains("ip daddr 10.96.0.10 tcp dport 80 goto service-svc-a"),
            "{t}"
        );
        assert!(
            t.contains(
                "numgen random mod 2 vmap { 0 : goto endpoint-svc-a-0, 1 : goto endpoint-svc-a-1 }"
            ),
            "{t}"
        );
        assert!(t.contains("dnat to 10.244.0.11:8080"), "{t}");
        assert!(!rules(&[(&a, vec![])]).contains("10.96.0.10"));
    }
}
