//! The listener's TLS files renewed on disk, as cert-manager renews a
//! Secret volume's: real TLS handshakes against [`tls::incoming`] see the
//! new certificate within seconds, without a restart; a key that does not
//! match its certificate is counted and the certificate in use stays.

use std::{
    path::Path,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use evenflow_daemon::tls::{self, ListenerFiles, ReloadStats};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{
    TlsConnector,
    rustls::{self, RootCertStore, pki_types::ServerName},
};
use tokio_stream::StreamExt as _;

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA")
}

/// A certificate for `localhost` and its key: (certificate PEM, DER, key).
fn issue(ca: &CertifiedIssuer<'static, KeyPair>, key: &KeyPair) -> (String, Vec<u8>) {
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(key, ca)
        .expect("sign");
    (cert.pem(), cert.der().to_vec())
}

/// Writes `text` to `path` by a rename, as a Secret volume's update lands.
fn put(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write");
    std::fs::rename(&next, path).expect("rename");
}

/// The certificate a new handshake with `addr` is shown.
async fn served(addr: std::net::SocketAddr, roots: &RootCertStore) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake");
    let certs = tls.get_ref().1.peer_certificates().expect("a certificate");
    certs[0].to_vec()
}

/// Waits up to 10 s for new handshakes to be shown `want`.
async fn until_served(addr: std::net::SocketAddr, roots: &RootCertStore, want: &[u8]) -> Duration {
    let start = Instant::now();
    while served(addr, roots).await != want {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not taken up within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_files_are_taken_up_and_a_mismatched_key_keeps_the_certificate() {
    let dir = std::env::temp_dir().join(format!("evenflow-tls-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    let ca = ca();
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root");

    let key1 = KeyPair::generate().expect("key");
    let (pem1, der1) = issue(&ca, &key1);
    put(&cert_path, &pem1);
    put(&key_path, &key1.serialize_pem());
    let stats = Arc::new(ReloadStats::default());
    let files = ListenerFiles {
        cert: cert_path.clone(),
        key: key_path.clone(),
        client_ca: None,
    };
    let acceptors = files
        .watch(stats.clone())
        .expect("the first files are usable");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut accepted = tls::incoming(listener, acceptors);
    tokio::spawn(async move { while accepted.next().await.is_some() {} });
    assert_eq!(served(addr, &roots).await, der1);

    // Renewed: a new key and certificate, as cert-manager writes them.
    let key2 = KeyPair::generate().expect("key");
    let (pem2, der2) = issue(&ca, &key2);
    put(&cert_path, &pem2);
    put(&key_path, &key2.serialize_pem());
    let took = until_served(addr, &roots, &der2).await;
    println!("renewed certificate served after {took:?}");
    assert_eq!(stats.reloads.load(Relaxed), 1);

    // A key that does not match the certificate: counted once, and the
    // certificate in use stays.
    let key3 = KeyPair::generate().expect("key");
    put(&key_path, &key3.serialize_pem());
    let start = Instant::now();
    while stats.failures.load(Relaxed) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the bad key is never noticed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(served(addr, &roots).await, der2);
    assert_eq!(stats.failures.load(Relaxed), 1, "a bad version fails once");

    // Its certificate arrives: taken up.
    let (pem3, der3) = issue(&ca, &key3);
    put(&cert_path, &pem3);
    until_served(addr, &roots, &der3).await;
    assert_eq!(stats.reloads.load(Relaxed), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The agent's side reads the same files at every connection: a key that
/// does not match its certificate (a renewal caught between its two
/// writes), or a CA file that holds no certificate, is refused by name
/// rather than taken as the identity to present.
#[test]
fn a_client_identity_is_checked_before_it_is_used() {
    let dir = std::env::temp_dir().join(format!("evenflow-tls-client-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (ca_path, cert_path, key_path) =
        (dir.join("ca.crt"), dir.join("tls.crt"), dir.join("tls.key"));
    let ca = ca();
    put(&ca_path, &ca.pem());
    let key1 = KeyPair::generate().expect("key");
    let (pem1, _) = issue(&ca, &key1);
    put(&cert_path, &pem1);
    put(&key_path, &key1.serialize_pem());
    tls::client(Some(&ca_path), Some((&cert_path, &key_path))).expect("a matching pair is used");

    put(
        &key_path,
        &KeyPair::generate().expect("key").serialize_pem(),
    );
    let e = tls::client(Some(&ca_path), Some((&cert_path, &key_path)))
        .expect_err("a key from another pair")
        .to_string();
    assert!(e.contains("--tls-cert and --tls-key do not match"), "{e}");

    put(&key_path, &key1.serialize_pem());
    put(
        &ca_path,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    );
    let e = tls::client(Some(&ca_path), Some((&cert_path, &key_path)))
        .expect_err("a CA file without a certificate")
        .to_string();
    assert!(e.starts_with("--tls-ca "), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server shut down in-process (the agent's embedded collector, a test)
/// lets its port go: the accept loop ends with the stream, not at the
/// next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_lets_the_port_go() {
    let dir = std::env::temp_dir().join(format!("evenflow-tls-drop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    let key = KeyPair::generate().expect("key");
    put(&cert_path, &issue(&ca(), &key).0);
    put(&key_path, &key.serialize_pem());
    let files = ListenerFiles {
        cert: cert_path,
        key: key_path,
        client_ca: None,
    };
    let acceptors = (files.watch(Arc::new(ReloadStats::default()))).expect("usable files");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(tls::incoming(listener, acceptors));
    let start = Instant::now();
    while let Err(e) = TcpListener::bind(addr).await {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{addr} still held after the stream was dropped: {e}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
