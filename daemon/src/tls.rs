//! TLS from PEM files, for both ends of the agents' report streams: the
//! collector's listener (`--tls-cert`, `--tls-key`, `--tls-client-ca`:
//! [`acceptor`], [`incoming`]) and the agent's connection to it
//! (`--tls-ca`, `--tls-cert`, `--tls-key`: [`client`]). Every file is read
//! by [`read_pem`], so a bad one is refused the same way on both sides,
//! naming the flag, the file and what was expected.
//!
//! The listener's handshakes are done here rather than inside tonic so that
//! a refused agent is logged with the reason (no certificate, unknown
//! issuer, expired...), at warning level, with its address: the operator
//! sees why an agent cannot report without turning on debug logs. And so
//! that a certificate renewed on disk (cert-manager renewing a Secret
//! volume's files) is taken up by the next handshake without a restart
//! ([`ListenerFiles::watch`]): a collector that kept its first certificate
//! past its expiry would lose every agent at their next reconnect.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
    server::TlsStream,
};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use crate::watch::{Stamp, stamp};

/// A TLS setting that cannot be used, naming the flag and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {path}: {reason}")]
    File {
        flag: &'static str,
        path: String,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Setup(String),
}

fn file_error(flag: &'static str, path: &Path, reason: String) -> TlsError {
    TlsError::File {
        flag,
        path: path.display().to_string(),
        reason,
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The bytes of the PEM file `path` given by `flag`.
pub fn read_pem(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let text =
        std::fs::read(path).map_err(|e| file_error(flag, path, format!("cannot read it: {e}")))?;
    if !String::from_utf8_lossy(&text).contains("-----BEGIN") {
        return Err(file_error(
            flag,
            path,
            "not a PEM file (expected -----BEGIN ...)".into(),
        ));
    }
    Ok(text)
}

fn certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certs(flag, path, &read_pem(flag, path)?)
}

/// The certificates in `pem`, read from `path` given by `flag`.
fn parse_certs(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(flag, path, format!("{e} (expected PEM certificates)")))?;
    if certs.is_empty() {
        return Err(file_error(
            flag,
            path,
            "no PEM certificate in the file".into(),
        ));
    }
    Ok(certs)
}

/// An identity as PEM files: `--tls-cert` (the chain) and `--tls-key`,
/// read once so that what is checked is what is used.
struct IdentityPem {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl IdentityPem {
    /// Reads both files.
    fn read(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            cert: read_pem("--tls-cert", cert)?,
            key: read_pem("--tls-key", key)?,
        })
    }

    /// The chain and key, for rustls, checked to belong together (the key
    /// to the chain's first certificate): a renewal caught between writing
    /// the two files would otherwise be taken up as a pair that fails every
    /// handshake.
    fn parse(
        &self,
        cert: &Path,
        key: &Path,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let chain = parse_certs("--tls-cert", cert, &self.cert)?;
        let der = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| {
            file_error(
                "--tls-key",
                key,
                format!("{e} (expected a PEM private key)"),
            )
        })?;
        rustls::sign::CertifiedKey::from_der(chain.clone(), der.clone_key(), &provider())
            .map_err(|e| TlsError::Setup(format!("--tls-cert and --tls-key do not match: {e}")))?;
        Ok((chain, der))
    }
}

/// The acceptor for `cert`/`key`, requiring client certificates signed by
/// `client_ca` when given.
pub fn acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, TlsError> {
    let (chain, key) = IdentityPem::read(cert, key)?.parse(cert, key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs("--tls-client-ca", ca)? {
                roots
                    .add(c)
                    .map_err(|e| file_error("--tls-client-ca", ca, e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Setup(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Setup(format!("--tls-cert and --tls-key do not match: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// How often the listener's TLS files are looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// What reading the listener's TLS files again did, for /metrics.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Changes read and put in place.
    pub reloads: AtomicU64,
    /// Changes that could not be used (each version once).
    pub failures: AtomicU64,
}

/// The listener's TLS files: `--tls-cert`, `--tls-key` and, for mutual
/// TLS, `--tls-client-ca`.
#[derive(Clone, Debug)]
pub struct ListenerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl ListenerFiles {
    /// The acceptor the files make now.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        acceptor(&self.cert, &self.key, self.client_ca.as_deref())
    }

    fn stamps(&self) -> Vec<Option<Stamp>> {
        let files = [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()];
        files.into_iter().flatten().map(|p| stamp(p)).collect()
    }

    /// Reads the files, then looks at them every [`LOOK_EVERY`] on a
    /// thread of its own (a hung mount stalls no handshake). A change that
    /// has held still for one look and makes a usable acceptor replaces
    /// the one new handshakes use; connections already up keep theirs. A
    /// change that does not (a key that does not match its certificate
    /// yet) is logged once and counted, and the acceptor in use stays. The
    /// thread ends once every receiver is dropped.
    pub fn watch(self, stats: Arc<ReloadStats>) -> Result<watch::Receiver<TlsAcceptor>, TlsError> {
        let mut read = self.stamps();
        let (tx, rx) = watch::channel(self.acceptor()?);
        let spawned = std::thread::Builder::new()
            .name("evenflow-tls".into())
            .spawn(move || {
                let (mut seen, mut failed) = (read.clone(), None);
                while !tx.is_closed() {
                    std::thread::sleep(LOOK_EVERY);
                    let now = self.stamps();
                    if now == read || now != std::mem::replace(&mut seen, now.clone()) {
                        continue;
                    }
                    match self.acceptor() {
                        Ok(acceptor) if self.stamps() == now => {
                            // Counted first: whoever sees the new
                            // certificate sees the count too.
                            stats.reloads.fetch_add(1, Relaxed);
                            tx.send_replace(acceptor);
                            info!(cert = %self.cert.display(), "TLS files changed: new handshakes use them");
                            read = now;
                        }
                        // Changed while read: read again once it holds still.
                        Ok(_) => {}
                        // A version that changed while read is no failure.
                        Err(e) if failed.as_ref() != Some(&now) && self.stamps() == now => {
                            stats.failures.fetch_add(1, Relaxed);
                            warn!("TLS files changed but cannot be used, so the listener keeps the certificate it has: {e}");
                            failed = Some(now);
                        }
                        Err(_) => {}
                    }
                }
            });
        spawned.map_err(|e| TlsError::Setup(format!("starting the TLS file watcher: {e}")))?;
        Ok(rx)
    }
}

/// The client side: `ca` verifies the server's certificate; `cert_key` is
/// this client's own identity for mutual TLS. The files are parsed here,
/// and the key checked against its certificate, so that a file tonic
/// would only refuse at the handshake is refused now, by name.
pub fn client(
    ca: Option<&Path>,
    cert_key: Option<(&Path, &Path)>,
) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut cfg = ClientTlsConfig::new();
    if let Some(ca) = ca {
        let pem = read_pem("--tls-ca", ca)?;
        let mut roots = RootCertStore::empty();
        for c in parse_certs("--tls-ca", ca, &pem)? {
            (roots.add(c)).map_err(|e| file_error("--tls-ca", ca, e.to_string()))?;
        }
        cfg = cfg.ca_certificate(Certificate::from_pem(pem));
    }
    if let Some((cert, key)) = cert_key {
        let pem = IdentityPem::read(cert, key)?;
        pem.parse(cert, key)?;
        cfg = cfg.identity(Identity::from_pem(pem.cert, pem.key));
    }
    Ok(cfg)
}

/// Accepted, authenticated connections from `listener`, each with the
/// acceptor `acceptors` holds when it arrives. Each handshake runs on its
/// own task so a slow peer holds up no one; a refused one is logged with
/// its reason. Dropping the stream closes the listener.
pub fn incoming(
    listener: TcpListener,
    acceptors: watch::Receiver<TlsAcceptor>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // Ends with the stream: the port is let go, and the watcher's
            // thread ends with this task's receiver.
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer): (TcpStream, SocketAddr) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    warn!("accepting a gRPC connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                return;
            }
            let (acceptor, tx) = (acceptors.borrow().clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => {
                        debug!(%peer, "TLS connection accepted");
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => warn!(%peer, "refused a TLS connection: {e}"),
                    Err(_) => warn!(%peer, "refused a TLS connection: handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_name_their_flag_and_what_was_expected() {
        let dir = std::env::temp_dir().join(format!("evenflow-daemon-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").expect("write");
        let e = client(Some(&not_pem), None)
            .expect_err("not PEM")
            .to_string();
        assert!(
            e.starts_with("--tls-ca ") && e.contains("not a PEM file"),
            "{e}"
        );
        let missing = dir.join("missing.pem");
        let e = acceptor(&missing, &missing, None)
            .err()
            .expect("missing file")
            .to_string();
        assert!(
            e.starts_with("--tls-cert ") && e.contains("cannot read it"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
