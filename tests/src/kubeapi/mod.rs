//! A stand-in Kubernetes API server, for the collector's real kube-rs
//! client to list and watch when no kube-apiserver can be installed.
//!
//! It speaks the API's list/watch protocol over HTTPS as kube-apiserver
//! does, with objects built from k8s-openapi's types:
//!
//! * **Resources**: `v1` Services, `discovery.k8s.io/v1` EndpointSlices, `v1`
//!   Nodes, cluster-wide and per namespace, `get` by name, and `/version`.
//! * **Storage as etcd keeps it**: one revision counter stamped into every
//!   written object's `metadata.resourceVersion`, no new revision for a
//!   write that changes nothing, `uid` and `creationTimestamp` kept across
//!   updates, a delete's event carrying the object's last state at the
//!   delete's revision.
//! * **List**: `kind: ServiceList` etc. with `metadata.resourceVersion`, items
//!   without TypeMeta; `limit` and `continue` pagination served from the
//!   first page's revision (410 Expired, with the API's message, once that
//!   revision is compacted); `resourceVersion` `""`/`"0"` (current) or a
//!   number (410 when compacted; `resourceVersionMatch=Exact` only for the
//!   current one).
//! * **Watch**: a chunked HTTP/1.1 response of one JSON event per line —
//!   `ADDED`, `MODIFIED`, `DELETED` with the whole object, `BOOKMARK` with
//!   only `metadata.resourceVersion` when `allowWatchBookmarks=true` (every
//!   `bookmark_every` while idle), `ERROR` with a 410 `Status` ("too old
//!   resource version: X (Y)", reason Expired) when resuming from a
//!   compacted revision or when the test expires open watches. Without a
//!   `resourceVersion` a watch starts with the current objects as `ADDED`;
//!   `sendInitialEvents=true` ends them with the
//!   `k8s.io/initial-events-end` bookmark (streaming lists).
//!   `timeoutSeconds` ends the stream, as do [`ApiServer::drop_watches`]
//!   (an API server restart) and [`ApiServer::expire_watches`] (etcd
//!   compaction: ERROR 410, then the clients must list again).
//! * **Metadata-only** requests (`Accept: …;as=PartialObjectMetadataList` /
//!   `PartialObjectMetadata`), answered with `meta.k8s.io/v1` objects.
//! * **Authentication and RBAC**: a bearer token (401 without it) and,
//!   when given, ClusterRole rules — get/list/watch checked per resource and
//!   API group, refused with the API's 403 Forbidden message.
//! * **Equality label selectors**.
//!
//! What it cannot do, and what the tests therefore do not show: writes
//! through the API (the test changes objects through [`ApiServer::apply`]
//! and [`ApiServer::delete`]); field selectors and set-based label
//! selectors (400); lists at an older exact revision; HTTP/2, protobuf
//! encoding, server-side apply, admission, validation or defaulting of the
//! objects it is given (they are served as built); the API's priority and
//! fairness (429s) and watch-cache timing; aggregated APIs and discovery
//! beyond `/version`; other resources (404). The objects are what the
//! controllers would write (EndpointSlices as the EndpointSlice controller
//! keeps them), but no controller runs: the tests write them in the order
//! a real cluster would.

mod http;
pub mod objects;
mod store;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex, atomic::AtomicUsize},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    },
};

pub use http::{Logged, Rule, USER};
pub use store::Kind;

use http::{Control, Shared};

/// How a stand-in starts.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where to listen (port 0 for any).
    pub addr: SocketAddr,
    /// A network namespace to listen in (`/run/netns/<name>`).
    pub netns: Option<String>,
    /// What the token may do; `None` allows everything.
    pub rules: Option<Vec<Rule>>,
    /// How often idle watches that asked for bookmarks get one.
    pub bookmark_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            netns: None,
            rules: None,
            bookmark_every: Duration::from_secs(2),
        }
    }
}

/// A running stand-in. Dropping it stops it.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn tls(addr: SocketAddr) -> Result<(TlsAcceptor, String)> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "evenflow stand-in cluster CA");
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if !addr.ip().is_unspecified() {
        names.push(addr.ip().to_string());
    }
    let cert = CertificateParams::new(names)?.signed_by(&key, &ca)?;
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
        .map_err(|e| anyhow!("server key: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    Ok((TlsAcceptor::from(Arc::new(config)), ca.pem()))
}

fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl ApiServer {
    /// Starts a stand-in on a thread of its own (inside `opts.netns`, if
    /// given) and returns once it listens.
    pub fn start(opts: Options) -> Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(SocketAddr, String)>>();
        let (stop, stopped) = oneshot::channel::<()>();
        let token = format!("evenflow-standin-{:016x}", rand_u64());
        let shared = Arc::new(Shared {
            store: Mutex::default(),
            changed: watch::Sender::new(0),
            control: watch::Sender::new(Control::default()),
            token,
            rules: Mutex::new(opts.rules.clone()),
            log: Mutex::default(),
            bookmark_every: opts.bookmark_every,
            snapshots: Mutex::default(),
            open_watches: AtomicUsize::new(0),
        });
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kube-standin".into())
            .spawn(move || {
                let run = || -> Result<(tokio::runtime::Runtime, tokio::net::TcpListener, TlsAcceptor)> {
                    if let Some(ns) = &opts.netns {
                        let f = crate::netns::open(ns)?;
                        crate::netns::enter(std::os::fd::AsRawFd::as_raw_fd(&f))
                            .with_context(|| format!("entering {ns}"))?;
                    }
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let listener = rt
                        .block_on(tokio::net::TcpListener::bind(opts.addr))
                        .with_context(|| format!("binding {}", opts.addr))?;
                    let addr = listener.local_addr()?;
                    let (acceptor, ca) = tls(addr)?;
                    let _ = ready_tx.send(Ok((addr, ca)));
                    Ok((rt, listener, acceptor))
                };
                match run() {
                    Ok((rt, listener, acceptor)) => rt.block_on(serve(s2, listener, acceptor, stopped)),
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        let (addr, ca_pem) = ready_rx
            .recv()
            .map_err(|_| anyhow!("the stand-in API server's thread ended before listening"))??;
        Ok(Self {
            shared,
            addr,
            ca_pem,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `https://ADDRESS:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig for the stand-in: its URL, its CA and the token.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n\
             users:\n- name: evenflow-collector\n  user:\n    token: {}\n\
             contexts:\n- name: standin\n  context:\n    cluster: standin\n    user: evenflow-collector\ncurrent-context: standin\n",
            self.url(),
            base64(self.ca_pem.as_bytes()),
            self.shared.token
        )
    }

    /// Writes [`Self::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.kubeconfig())
            .with_context(|| format!("writing {}", path.display()))
    }

    fn write(&self, f: impl FnOnce(&mut store::Store) -> Option<store::Event>) -> u64 {
        let mut s = self.shared.store.lock().unwrap_or_else(|e| e.into_inner());
        let changed = f(&mut s).is_some();
        let rv = s.revision();
        drop(s);
        if changed {
            self.shared.changed.send_replace(rv);
        }
        rv
    }

    /// Creates or replaces an object (a k8s-openapi Service,
    /// EndpointSlice or Node); returns the revision after the write.
    pub fn apply<K>(&self, obj: &K) -> Result<u64>
    where
        K: k8s_openapi::Resource + Serialize,
    {
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.name() == K::KIND)
            .with_context(|| format!("the stand-in serves no {}", K::KIND))?;
        let v = serde_json::to_value(obj).context("serialising the object")?;
        Ok(self.write(|s| s.apply(kind, v)))
    }

    /// Deletes an object; returns the revision after the write.
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: &str, name: &str) -> Result<u64> {
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.name() == K::KIND)
            .with_context(|| format!("the stand-in serves no {}", K::KIND))?;
        Ok(self.write(|s| s.delete(kind, namespace, name)))
    }

    /// Compacts the history: watches resuming from before now get 410.
    pub fn compact(&self) {
        self.shared
            .store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .compact();
    }

    /// Compacts, and ends every open watch with an ERROR 410 event: the
    /// clients must list again.
    pub fn expire_watches(&self) {
        self.compact();
        self.shared.control.send_modify(|c| {
            c.generation += 1;
            c.expire = true;
        });
    }

    /// Ends every open watch without an error (an API server restart):
    /// clients resume from the last revision they saw.
    pub fn drop_watches(&self) {
        self.shared.control.send_modify(|c| {
            c.generation += 1;
            c.expire = false;
        });
    }

    /// Replaces what the token may do (`None`: everything).
    pub fn set_rules(&self, rules: Option<Vec<Rule>>) {
        *self.shared.rules.lock().unwrap_or_else(|e| e.into_inner()) = rules;
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Watches open now.
    pub fn open_watches(&self) -> usize {
        self.shared
            .open_watches
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.shared
            .store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .revision()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The rules of the ClusterRole in `deploy/kubernetes/collector-rbac.yaml`,
/// so the collector runs with exactly the permissions the manifest grants.
pub fn collector_rules() -> Result<Vec<Rule>> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes/collector-rbac.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let strs = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect()
    };
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(doc)
            .with_context(|| format!("parsing {}", path.display()))?;
        if v["kind"] == "ClusterRole" {
            return Ok(v["rules"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|r| Rule {
                    api_groups: strs(&r["apiGroups"]),
                    resources: strs(&r["resources"]),
                    verbs: strs(&r["verbs"]),
                })
                .collect());
        }
    }
    Err(anyhow!("{} has no ClusterRole", path.display()))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
            _ = &mut stopped => break,
        };
        let (shared, acceptor) = (shared.clone(), acceptor.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = hyper::service::service_fn(move |req| http::handle(shared.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
    // Open watches end with the runtime.
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_as_rfc4648() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foob"), "Zm9vYg==");
    }
}
