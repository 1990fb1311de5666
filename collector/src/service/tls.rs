//! Mutual TLS for the ingest listener (`--tls-cert`, `--tls-key`,
//! `--tls-client-ca`).
//!
//! The handshake is done here rather than inside tonic so that a refused
//! agent is logged with the reason (no certificate, unknown issuer,
//! expired...), at warning level, with its address: the operator sees why
//! an agent cannot report without turning on debug logs.

use std::{net::SocketAddr, path::Path, sync::Arc};

use tokio::net::{TcpListener, TcpStream};
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
use tracing::{debug, warn};

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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::File {
        flag,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("{e} (expected a PEM file of certificates)")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{e} (expected PEM certificates)")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// The acceptor for `cert`/`key`, requiring client certificates signed by
/// `client_ca` when given.
pub fn acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, TlsError> {
    let chain = certs("--tls-cert", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        flag: "--tls-key",
        path: key.display().to_string(),
        reason: format!("{e} (expected a PEM private key)"),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs("--tls-client-ca", ca)? {
                roots.add(c).map_err(|e| TlsError::File {
                    flag: "--tls-client-ca",
                    path: ca.display().to_string(),
                    reason: e.to_string(),
                })?;
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

/// Accepted, authenticated connections from `listener`. Each handshake runs
/// on its own task so a slow peer holds up no one; a refused one is logged
/// with its reason.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer): (TcpStream, SocketAddr) = match listener.accept().await {
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
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
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
