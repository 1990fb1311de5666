//! An nftables DNAT load balancer: the lb forwards connections to the VIP's
//! port 80 round-robin (numgen) to every backend, with no proxy process.

use anyhow::Result;

use crate::{
    lab::{BACKEND_PORT, Lab, VIP4, VIP6},
    netns,
};

/// Installs the DNAT rules (IPv4 and IPv6) in the lb's namespace.
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
         ip daddr {VIP4} tcp dport 80 dnat ip to numgen inc mod {n} map {{ {} }}\n }}\n}}\n\
         table ip6 evenflow_lab {{\n chain prerouting {{\n  type nat hook prerouting priority dstnat;\n  \
         ip6 daddr {VIP6} tcp dport 80 dnat ip6 to numgen inc mod {n} map {{ {} }}\n }}\n}}\n",
        map4.join(", "),
        map6.join(", ")
    );
    let path = lab.dir.join("dnat.nft");
    std::fs::write(&path, rules)?;
    netns::exec(&lab.lb.ns, "nft", &["-f", &path.display().to_string()])?;
    Ok(())
}
