//! An nftables DNAT load balancer: the lb rewrites connections to the
//! VIP's port 80 round-robin (`numgen inc`) to every backend and forwards
//! them (the lab enables forwarding in the lb). No process terminates the
//! connections, so only the agent's packet hooks (TC) can count them — the
//! kube-proxy / iptables case of the design.

use anyhow::{Context as _, Result};

use crate::{
    lab::{BACKEND_PORT, Lab, VIP_PORT, VIP4, VIP6},
    netns,
};

/// Installs the DNAT rules (IPv4 and IPv6) in the lb's namespace, in tables
/// of their own (`evenflow_lab`) that go away with the namespace.
pub fn start(lab: &Lab) -> Result<()> {
    let n = lab.backends.len();
    let map4: Vec<String> = lab
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {} . {BACKEND_PORT}", b.addr4))
        .collect();
    let map6: Vec<String> = lab
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {} . {BACKEND_PORT}", b.addr6))
        .collect();
    let rules = format!(
        "table ip evenflow_lab {{\n chain prerouting {{\n  type nat hook prerouting priority dstnat;\n  \
         ip daddr {VIP4} tcp dport {VIP_PORT} dnat ip to numgen inc mod {n} map {{ {} }}\n }}\n}}\n\
         table ip6 evenflow_lab {{\n chain prerouting {{\n  type nat hook prerouting priority dstnat;\n  \
         ip6 daddr {VIP6} tcp dport {VIP_PORT} dnat ip6 to numgen inc mod {n} map {{ {} }}\n }}\n}}\n",
        map4.join(", "),
        map6.join(", ")
    );
    let path = lab.dir.join("dnat.nft");
    std::fs::write(&path, &rules).with_context(|| format!("writing {}", path.display()))?;
    netns::exec(&lab.lb.ns, "nft", &["-f", &path.display().to_string()])
        .with_context(|| format!("loading the DNAT rules:\n{rules}"))?;
    Ok(())
}

/// Loads the nftables ruleset `rules` in `ns`, through a file named after
/// `name` in the lab's directory (`nft` wants a ruleset file, not
/// statements, for tables and chains). Single-line rulesets are split at
/// `; ` and `} }` first, so tests may write them on one line.
pub fn load(lab: &Lab, ns: &str, name: &str, rules: &str) -> Result<()> {
    let path = lab.dir.join(format!("{name}.nft"));
    let text = rules.replace("; ", ";\n").replace("} }", "}\n}\n");
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    netns::exec(ns, "nft", &["-f", &path.display().to_string()])
        .with_context(|| format!("loading nftables rules in {ns}:\n{text}"))?;
    Ok(())
}
