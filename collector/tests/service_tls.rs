//! Mutual TLS on the ingest listener, with certificates the test makes
//! (rcgen): an agent with a certificate from the collector's client CA is
//! served; one without a certificate, one with a certificate from another
//! CA, and a plaintext one are refused, and the collector logs why; the
//! read-only query listener stays plaintext for people and dashboards.

use std::{process::Command, time::Duration};

use evenflow_proto::v1::{
    self, distribution_client::DistributionClient, ingest_client::IngestClient,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        Self(CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA"))
    }

    /// (certificate PEM, key PEM) for `names`, signed by this CA.
    fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
        let cert = p.signed_by(&key, &self.0).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn report(node: &str) -> v1::AgentReport {
    v1::AgentReport {
        node_name: node.into(),
        agent_epoch: 1,
        agent_run: 1,
        sequence: 1,
        interval_seconds: 1.0,
        ..Default::default()
    }
}

async fn send(channel: Channel, node: &str) -> Result<u64, String> {
    let mut c = IngestClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(report(node)).await.map_err(|e| e.to_string())?;
    let mut acks = c
        .report(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    match tokio::time::timeout(Duration::from_secs(5), acks.message()).await {
        Ok(Ok(Some(a))) => Ok(a.acked_sequence),
        Ok(Ok(None)) => Err("stream ended".into()),
        Ok(Err(s)) => Err(s.message().to_owned()),
        Err(_) => Err("timed out".into()),
    }
}

async fn tls_channel(
    port: u16,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(c, k));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

#[test]
fn mutual_tls_admits_only_agents_with_a_certificate_from_the_client_ca() {
    let dir = std::env::temp_dir().join(format!("evenflow-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (server_ca, client_ca, rogue_ca) = (
        Ca::new("collector CA"),
        Ca::new("agents CA"),
        Ca::new("rogue CA"),
    );
    let server = server_ca.issue(&["localhost", "127.0.0.1"]);
    let agent = client_ca.issue(&["agent-1"]);
    let rogue = rogue_ca.issue(&["agent-2"]);
    let w = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };
    let (cert, key, cca) = (
        w("server.pem", &server.0),
        w("server.key", &server.1),
        w("clients-ca.pem", &client_ca.0.pem()),
    );
    let (grpc, metrics, query) = (free_port(), free_port(), free_port());
    let log = dir.join("collector.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_evenflow-collector"))
        .args([
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--metrics-addr",
            &format!("127.0.0.1:{metrics}"),
            "--query-addr",
            &format!("127.0.0.1:{query}"),
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &cca,
        ])
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("collector starts");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", query)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ca = server_ca.0.pem();
    let result = rt.block_on(async {
        // The agent with a certificate from the client CA is served.
        let ok = send(tls_channel(grpc, &ca, Some(&agent)).await?, "agent-1").await;
        // No certificate, another CA's certificate, plaintext: refused.
        let none = match tls_channel(grpc, &ca, None).await {
            Ok(ch) => send(ch, "anon").await,
            Err(e) => Err(e),
        };
        let bad = match tls_channel(grpc, &ca, Some(&rogue)).await {
            Ok(ch) => send(ch, "agent-2").await,
            Err(e) => Err(e),
        };
        let plain = match Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
        {
            Ok(ch) => send(ch, "plain").await,
            Err(e) => Err(e.to_string()),
        };
        // The query listener answers in plaintext, read-only.
        let mut q = DistributionClient::connect(format!("http://127.0.0.1:{query}"))
            .await
            .map_err(|e| e.to_string())?;
        let agents = q
            .list_agents(v1::ListAgentsRequest {})
            .await
            .map_err(|s| s.message().to_owned())?
            .into_inner()
            .agents;
        let ingest_on_query = send(
            Endpoint::from_shared(format!("http://127.0.0.1:{query}"))
                .map_err(|e| e.to_string())?
                .connect()
                .await
                .map_err(|e| e.to_string())?,
            "sneaky",
        )
        .await;
        Ok::<_, String>((ok, none, bad, plain, agents, ingest_on_query))
    });
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let (ok, none, bad, plain, agents, ingest_on_query) =
        result.unwrap_or_else(|e| panic!("{e}\ncollector log:\n{text}"));
    assert_eq!(
        ok,
        Ok(1),
        "the agent with a valid client certificate is acked; log:\n{text}"
    );
    assert!(
        none.is_err() && bad.is_err() && plain.is_err(),
        "refused: {none:?} {bad:?} {plain:?}"
    );
    assert!(
        ingest_on_query.is_err(),
        "the query listener serves no Ingest: {ingest_on_query:?}"
    );
    assert_eq!(
        agents
            .iter()
            .map(|a| a.node_name.as_str())
            .collect::<Vec<_>>(),
        vec!["agent-1"]
    );
    let refusals = text
        .lines()
        .filter(|l| l.contains("refused a TLS connection"))
        .collect::<Vec<_>>();
    assert!(
        refusals.len() >= 3,
        "each refused peer is logged with its reason:\n{text}"
    );
    assert!(
        refusals
            .iter()
            .any(|l| l.to_lowercase().contains("certificate")),
        "the log says why (certificate): {refusals:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
