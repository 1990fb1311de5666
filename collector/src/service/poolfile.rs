//! The optional pool file (`--pools FILE`): pools declared by hand, with
//! weights, draining members and the nodes that load-balance them.
//!
//! ```toml
//! [[pool]]
//! name = "web"
//! lb_nodes = ["lb-1", "lb-2"]        # optional
//! balancing = "least-connections"    # optional; default "weighted"
//! members = [
//!   { address = "10.0.0.11:8080", weight = 2 },
//!   { address = "10.0.0.12:8080" },                   # weight 1
//!   { address = "[fd00::13]:8080", draining = true },
//! ]
//! ```
//!
//! Every error names the file, the line and column, what is wrong and how to
//! fix it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use crate::detect::Balancing;

mod reload;

pub use reload::{ReloadStats, Reloader};

/// A pool file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PoolFileError {
    /// The file could not be read.
    #[error("reading pool file {path}: {source}; check the path given to --pools")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid, at a known place.
    #[error("{path}:{line}:{column}: {message}; fix: {fix}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
        /// How to fix it.
        fix: String,
    },
}

/// One member as declared.
#[derive(Clone, Debug, PartialEq)]
pub struct FileMember {
    /// Backend address and port.
    pub addr: SocketAddr,
    /// Relative weight, > 0.
    pub weight: f64,
    /// Expected to receive no new connections.
    pub draining: bool,
}

/// One pool as declared.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct FilePool {
    /// Pool (service) name.
    pub name: String,
    /// Members, in file order.
    pub members: Vec<FileMember>,
    /// Nodes whose SENDS_TO traffic is this pool's LB view; empty means
    /// "any node sending to a member".
    pub lb_nodes: Vec<String>,
    /// How its balancer places new connections, when the file says (it
    /// then overrides a Kubernetes annotation on the same pool).
    pub balancing: Option<Balancing>,
}

/// Every pool in the file, by name.
pub type PoolFile = BTreeMap<String, FilePool>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    pool: Vec<RawPool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: Spanned<String>,
    #[serde(default)]
    lb_nodes: Vec<Spanned<String>>,
    balancing: Option<Spanned<String>>,
    #[serde(default)]
    members: Vec<RawMember>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    address: Spanned<String>,
    weight: Option<Spanned<f64>>,
    #[serde(default)]
    draining: bool,
}

/// Reads and validates a pool file.
pub fn load(path: &Path) -> Result<PoolFile, PoolFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PoolFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses and validates pool file text; `path` only names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<PoolFile, PoolFileError> {
    let file = FileText { path, text };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().replace('\n', " ");
        file.invalid(
            span,
            message,
            "write pools as [[pool]] tables with name = \"...\", optional lb_nodes = [\"node\", ...], \
             optional balancing = \"least-connections\" and members = [{ address = \"10.0.0.1:8080\", weight = 1, draining = false }, ...]",
        )
    })?;
    let mut pools = PoolFile::new();
    for p in raw.pool {
        let name = p.name.get_ref().trim().to_owned();
        if name.is_empty() {
            return Err(file.invalid(
                p.name.span(),
                "pool name is empty".into(),
                "give the pool the service name its agents use (--service NAME=PORT)",
            ));
        }
        if pools.contains_key(&name) {
            return Err(file.invalid(
                p.name.span(),
                format!("pool {name:?} is declared twice"),
                "merge the two [[pool]] tables into one",
            ));
        }
        let mut seen = BTreeSet::new();
        let mut members = Vec::with_capacity(p.members.len());
        for m in p.members {
            let (member, span) = file.member(&name, m)?;
            if !seen.insert(member.addr) {
                return Err(file.invalid(
                    span,
                    format!("member {} appears twice in pool {name:?}", member.addr),
                    "list each member once",
                ));
            }
            members.push(member);
        }
        let lb_nodes = file.lb_nodes(&name, p.lb_nodes)?;
        let balancing = (p.balancing.as_ref())
            .map(|b| file.balancing(&name, b))
            .transpose()?;
        pools.insert(
            name.clone(),
            FilePool {
                name,
                members,
                lb_nodes,
                balancing,
            },
        );
    }
    Ok(pools)
}

/// The pool file being parsed, to name places in it.
struct FileText<'a> {
    path: &'a Path,
    text: &'a str,
}

impl FileText<'_> {
    /// The error for `span`: what is wrong and how to fix it.
    fn invalid(&self, span: std::ops::Range<usize>, message: String, fix: &str) -> PoolFileError {
        let (line, column) = line_col(self.text, span.start);
        PoolFileError::Invalid {
            path: self.path.to_owned(),
            line,
            column,
            message,
            fix: fix.to_owned(),
        }
    }

    /// One member of pool `name`, its address and weight checked, and
    /// where its address is written.
    fn member(
        &self,
        name: &str,
        m: RawMember,
    ) -> Result<(FileMember, std::ops::Range<usize>), PoolFileError> {
        let s = m.address.get_ref().trim();
        let addr: SocketAddr = s.parse().map_err(|_| {
            self.invalid(
                m.address.span(),
                format!("member address {s:?} of pool {name:?} is not ADDRESS:PORT"),
                "write \"10.0.0.11:8080\" or, for IPv6, \"[fd00::11]:8080\"",
            )
        })?;
        // Agents name IPv4 endpoints as plain IPv4: an IPv4-mapped spelling
        // would never match one.
        let addr = SocketAddr::new(
            crate::service::ingest::validate::canonical(addr.ip()),
            addr.port(),
        );
        if addr.port() == 0 {
            return Err(self.invalid(
                m.address.span(),
                format!("member {addr} of pool {name:?} has port 0"),
                "give the port the backend listens on",
            ));
        }
        let weight = match &m.weight {
            None => 1.0,
            Some(w) => {
                let v = *w.get_ref();
                if !(v.is_finite() && v > 0.0 && v <= 1e6) {
                    return Err(self.invalid(
                        w.span(),
                        format!(
                            "weight {v} of member {addr} in pool {name:?} is not a positive number"
                        ),
                        "use a weight between 0 (exclusive) and 1000000; mark a member that should get no new connections with draining = true",
                    ));
                }
                v
            }
        };
        Ok((
            FileMember {
                addr,
                weight,
                draining: m.draining,
            },
            m.address.span(),
        ))
    }

    /// Pool `name`'s `balancing`: one of the hints the detector knows.
    fn balancing(&self, name: &str, b: &Spanned<String>) -> Result<Balancing, PoolFileError> {
        let v = b.get_ref();
        Balancing::from_name(v).ok_or_else(|| {
            self.invalid(
                b.span(),
                format!(
                    "balancing {v:?} of pool {name:?} is not one of {}",
                    Balancing::ALLOWED
                ),
                "write balancing = \"least-connections\" when the balancer sends each new connection to the member with the fewest open (HAProxy leastconn, nginx least_conn, Envoy LEAST_REQUEST, IPVS lc), \"sticky\" when it keeps each client on one member (HAProxy balance source, nginx ip_hash or hash), or leave it out (\"weighted\")",
            )
        })
    }

    /// Pool `name`'s load balancer node names, each once.
    fn lb_nodes(
        &self,
        name: &str,
        nodes: Vec<Spanned<String>>,
    ) -> Result<Vec<String>, PoolFileError> {
        let mut lb_nodes = Vec::with_capacity(nodes.len());
        for n in nodes {
            let v = n.get_ref().trim();
            if v.is_empty() {
                return Err(self.invalid(
                    n.span(),
                    format!("pool {name:?} lists an empty load balancer node name"),
                    "use the node names the LB agents report (their --node-name)",
                ));
            }
            if !lb_nodes.iter().any(|x: &String| x == v) {
                lb_nodes.push(v.to_owned());
            }
        }
        Ok(lb_nodes)
    }
}

/// 1-based line and column of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<PoolFile, PoolFileError> {
        parse(Path::new("pools.toml"), text)
    }

    #[test]
    fn an_ipv4_mapped_member_is_plain_ipv4() {
        let f = p(r#"
[[pool]]
name = "web"
members = [{ address = "[::ffff:10.0.0.11]:8080" }]
"#)
        .expect("parses");
        let want: SocketAddr = "10.0.0.11:8080".parse().expect("an address");
        assert_eq!(f["web"].members[0].addr, want);
    }

    #[test]
    fn parses_weights_draining_and_lbs() {
        let f = p(r#"
[[pool]]
name = "web"
lb_nodes = ["lb-1"]
members = [
  { address = "10.0.0.11:8080", weight = 2 },
  { address = "[fd00::12]:8080", draining = true },
]
"#)
        .unwrap();
        let web = &f["web"];
        assert_eq!(web.lb_nodes, ["lb-1"]);
        assert_eq!(web.members[0].weight, 2.0);
        assert!(!web.members[0].draining);
        assert_eq!(web.members[1].weight, 1.0);
        assert!(web.members[1].draining);
    }

    #[test]
    fn errors_name_line_and_fix() {
        let e = p("[[pool]]\nname = \"web\"\nmembers = [\n  { address = \"10.0.0.1\" },\n]\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("pools.toml:4:"), "{e}");
        assert!(e.contains("not ADDRESS:PORT") && e.contains("fix:"), "{e}");
        let e =
            p("[[pool]]\nname = \"web\"\nmembers = [{ address = \"10.0.0.1:1\", weight = -1 }]\n")
                .unwrap_err()
                .to_string();
        assert!(e.starts_with("pools.toml:3:"), "{e}");
        let e = p("[[pool]]\nname = \"web\"\nmembrs = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("pools.toml:3:"), "{e}");
    }

    #[test]
    fn parses_the_balancing_hint_and_names_the_allowed_values() {
        let f = p(r#"
[[pool]]
name = "grpc"
balancing = "least-connections"
members = [{ address = "10.0.0.11:8080" }]
[[pool]]
name = "web"
members = [{ address = "10.0.0.12:8080" }]
[[pool]]
name = "api"
balancing = "sticky"
members = [{ address = "10.0.0.13:8080" }]
"#)
        .expect("parses");
        assert_eq!(f["grpc"].balancing, Some(Balancing::LeastConnections));
        assert_eq!(f["api"].balancing, Some(Balancing::Sticky));
        assert_eq!(f["web"].balancing, None, "not said: not overridden");
        let e = p("[[pool]]\nname = \"web\"\nbalancing = \"leastconn\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("pools.toml:3:13"), "{e}");
        assert!(
            e.contains("balancing \"leastconn\" of pool \"web\"")
                && e.contains("\"least-connections\", \"sticky\" or \"weighted\"")
                && e.contains("fix:"),
            "{e}"
        );
    }
}
