//! The `evenflow` CLI against a real collector: `verify` as a deploy gate
//! (healthy 0, starved 1, unknown 2, unreachable 2) and `top` read off a
//! real terminal (tmux); and the CLI over mutual TLS. Agents are simulated
//! over the real Ingest gRPC stream, so the test controls exactly which
//! backend starves.

use std::{
    process::{Child, Command, Output},
    time::{Duration, SystemTime},
};

use evenflow_proto::v1::{self, ingest_client::IngestClient};
use evenflow_tests::certs::{self, Ca};
use tokio_stream::wrappers::ReceiverStream;

struct Collector(Child);

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two ports free right now (bound, then released).
fn ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let p = (
        a.local_addr().expect("addr").port(),
        b.local_addr().expect("addr").port(),
    );
    drop((a, b));
    p
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_evenflow"))
        .args(args)
        .env_remove("EVENFLOW_COLLECTOR")
        .output()
        .expect("evenflow runs")
}

fn report(
    node: &str,
    addr: &str,
    port: u32,
    service: &str,
    run: u64,
    seq: u64,
    opened: u64,
) -> v1::AgentReport {
    v1::AgentReport {
        node_name: node.into(),
        agent_epoch: 7,
        agent_run: run,
        sequence: seq,
        taken_at: Some(SystemTime::now().into()),
        interval_seconds: 0.2,
        endpoints: vec![v1::Endpoint {
            address: addr.into(),
            port,
            direction: v1::Direction::Serves as i32,
            protocol: v1::Protocol::Tcp as i32,
            service: service.into(),
            totals: Some(v1::Counters {
                conns_opened: opened,
                conns_closed: opened,
                bytes_rx: opened * 100,
                bytes_tx: opened * 2000,
                ..Default::default()
            }),
            ..Default::default()
        }],
        cpu: Some(v1::Cpu {
            utilization: 0.2,
            cores: 2,
        }),
        ..Default::default()
    }
}

/// Streams reports for pools `web` (three healthy members) and `api`
/// (three members, the third starved after `starve_after`) every 200 ms.
async fn agents(url: String, starve_after: Duration) {
    let start = std::time::Instant::now();
    let mut streams = Vec::new();
    for (i, (node, addr, port, service)) in [
        ("web-1", "10.9.1.1", 8080, "web"),
        ("web-2", "10.9.1.2", 8080, "web"),
        ("web-3", "10.9.1.3", 8080, "web"),
        ("api-1", "10.9.2.1", 9090, "api"),
        ("api-2", "10.9.2.2", 9090, "api"),
        ("api-3", "10.9.2.3", 9090, "api"),
    ]
    .into_iter()
    .enumerate()
    {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut client = loop {
            match IngestClient::connect(url.clone()).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let acks = client
            .report(ReceiverStream::new(rx))
            .await
            .expect("report stream")
            .into_inner();
        streams.push((tx, acks, node, addr, port, service, i as u64 + 1));
    }
    let mut opened = [0u64; 6];
    for seq in 1.. {
        for (k, (tx, _, node, addr, port, service, run)) in streams.iter().enumerate() {
            let starved = *service == "api" && *node == "api-3" && start.elapsed() > starve_after;
            if !starved {
                opened[k] += 20;
            }
            if tx
                .send(report(node, addr, *port, service, *run, seq, opened[k]))
                .await
                .is_err()
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts the collector with `args` beside its listeners' on two free
/// ports; returns it once its gRPC port accepts, and that port.
fn start_collector(args: &[&str]) -> (Collector, u16) {
    let bin = evenflow_tests::agent::binary("evenflow-collector", "EVENFLOW_COLLECTOR_BIN")
        .expect("collector built");
    let (grpc, metrics) = ports();
    let log = std::env::temp_dir().join(format!("evenflow-cli-test-collector-{grpc}.log"));
    let mut collector = Collector(
        Command::new(bin)
            .args([
                "--grpc-addr",
                &format!("127.0.0.1:{grpc}"),
                "--metrics-addr",
                &format!("127.0.0.1:{metrics}"),
                "--interval",
                "200ms",
            ])
            .args(args)
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("collector starts"),
    );
    let mut listening = false;
    for _ in 0..100 {
        if let Ok(Some(status)) = collector.0.try_wait() {
            panic!(
                "collector exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if std::net::TcpStream::connect(("127.0.0.1", grpc)).is_ok() {
            listening = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        listening,
        "collector not listening: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    (collector, grpc)
}

#[test]
fn verify_gates_and_top_shows_the_starved_backend() {
    let (collector, grpc) = start_collector(&[]);
    let url = format!("http://127.0.0.1:{grpc}");
    let _collector = collector;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.spawn(agents(url.clone(), Duration::from_secs(8)));
    // Let the detector learn the balanced pools.
    std::thread::sleep(Duration::from_secs(6));

    let o = cli(&[
        "verify",
        "--pool",
        "web",
        "--for",
        "2s",
        "--collector",
        &url,
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "healthy pool: {text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("every member received its share"), "{text}");

    let o = cli(&[
        "verify",
        "--pool",
        "nope",
        "--for",
        "1s",
        "--collector",
        &url,
    ]);
    assert_eq!(o.status.code(), Some(2), "unknown pool");
    assert!(String::from_utf8_lossy(&o.stdout).contains("unknown"));

    // api-3 starves from t = 8 s: verify across it fails with ZERO.
    let o = cli(&[
        "verify",
        "--pool",
        "api",
        "--for",
        "6s",
        "--output",
        "json",
        "--collector",
        &url,
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(o.status.code(), Some(1), "starved pool: {v}");
    assert_eq!(v["result"], "unhealthy");
    assert!(
        v["details"].to_string().contains("10.9.2.3:9090")
            && v["details"].to_string().contains("ZERO"),
        "{v}"
    );

    // top under tmux: one bar per member, the starved one at zero.
    let cmd = format!(
        "{} top api --collector {url}",
        env!("CARGO_BIN_EXE_evenflow")
    );
    let screen = evenflow_tests::tmux::screen(&cmd, Duration::from_secs(3)).expect("tmux");
    let rows: Vec<&str> = screen.lines().filter(|l| l.contains(":9090")).collect();
    assert_eq!(rows.len(), 3, "one bar per member:\n{screen}");
    let starved = rows
        .iter()
        .find(|l| l.contains("10.9.2.3:9090"))
        .expect("starved row");
    assert!(
        starved.contains("0.0%") && starved.contains("ZERO"),
        "starved member at zero:\n{screen}"
    );
    assert!(
        rows.iter().filter(|l| l.contains('█')).count() == 2,
        "two members with bars:\n{screen}"
    );

    // Collector gone: cannot judge.
    drop(_collector);
    let o = cli(&[
        "verify",
        "--pool",
        "web",
        "--for",
        "1s",
        "--collector",
        &url,
    ]);
    assert_eq!(o.status.code(), Some(2), "unreachable collector");
    drop(rt);
}

/// Sends one report over mutual TLS and waits for its acknowledgement.
async fn report_over_tls(
    url: String,
    ca: String,
    identity: (String, String),
) -> Result<(), String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(identity.0, identity.1));
    let channel = (Endpoint::from_shared(url).map_err(|e| e.to_string())?)
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(report("tls-agent", "10.9.3.1", 8443, "secure", 1, 1, 20))
        .await
        .map_err(|e| e.to_string())?;
    let mut acks = IngestClient::new(channel)
        .report(ReceiverStream::new(rx))
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    match acks.message().await {
        Ok(Some(_)) => Ok(()),
        other => Err(format!("no acknowledgement: {other:?}")),
    }
}

/// The CLI against a collector that requires client certificates: with
/// the CA and a certificate its client CA signed it reads the collector;
/// without a certificate it is refused; TLS flags beside an http:// URL
/// and an https:// URL without --tls-ca are refused before any call,
/// with the flag that fixes them named.
#[test]
fn the_cli_reads_a_collector_that_requires_client_certificates() {
    let dir = certs::Dir::new("cli-tls");
    let (server_ca, client_ca) = (Ca::new("servers"), Ca::new("clients"));
    let server = server_ca.issue(&["localhost", "127.0.0.1"]);
    let client = client_ca.issue(&["operator"]);
    let w = |name: &str, text: &str| dir.put(name, text);
    let (cert, key, cca) = (
        w("server.pem", &server.0),
        w("server.key", &server.1),
        w("clients-ca.pem", &client_ca.pem()),
    );
    let (ca, ccert, ckey) = (
        w("servers-ca.pem", &server_ca.pem()),
        w("client.pem", &client.0),
        w("client.key", &client.1),
    );
    let (_collector, grpc) = start_collector(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &cca,
    ]);
    let url = format!("https://127.0.0.1:{grpc}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(report_over_tls(
        url.clone(),
        server_ca.pem(),
        client.clone(),
    ))
    .expect("a report over mutual TLS");

    let ok = cli(&[
        "status",
        "--collector",
        &url,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &ccert,
        "--tls-key",
        &ckey,
    ]);
    let text = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(text.contains("tls-agent"), "the agent is listed: {text}");

    let anonymous = cli(&["status", "--collector", &url, "--tls-ca", &ca]);
    let why = String::from_utf8_lossy(&anonymous.stderr);
    assert_eq!(
        anonymous.status.code(),
        Some(1),
        "no client certificate, no answer: {why}"
    );
    assert!(why.contains("--tls-cert"), "the fix is named: {why}");

    let plain = cli(&[
        "status",
        "--collector",
        &url.replace("https", "http"),
        "--tls-ca",
        &ca,
    ]);
    let why = String::from_utf8_lossy(&plain.stderr);
    assert_eq!(plain.status.code(), Some(2), "{why}");
    assert!(why.contains("need an https:// --collector"), "{why}");

    // Plaintext to the TLS listener: the fix is named, not an HTTP/2 dump.
    let plaintext = cli(&["status", "--collector", &url.replace("https", "http")]);
    let why = String::from_utf8_lossy(&plaintext.stderr);
    assert_eq!(plaintext.status.code(), Some(1), "{why}");
    assert!(
        why.contains("write https://") && why.contains("--tls-ca"),
        "{why}"
    );

    let no_ca = cli(&["status", "--collector", &url]);
    let why = String::from_utf8_lossy(&no_ca.stderr);
    assert_eq!(no_ca.status.code(), Some(2), "{why}");
    assert!(why.contains("--tls-ca"), "{why}");
    // The deploy gate says it in its own format: scripts parse JSON.
    let gate = cli(&[
        "verify",
        "--pool",
        "web",
        "--for",
        "1s",
        "--output",
        "json",
        "--collector",
        &url,
    ]);
    let out: serde_json::Value =
        serde_json::from_slice(&gate.stdout).expect("verify prints one JSON document");
    assert_eq!(gate.status.code(), Some(2), "{out}");
    assert_eq!(out["result"], "cannot_judge", "{out}");
    assert!(
        out["details"][0]
            .as_str()
            .is_some_and(|d| d.contains("--tls-ca")),
        "{out}"
    );
}

/// Input the CLI can tell is wrong is refused before any call, exit 2,
/// naming the fix: a URL without its scheme, a refresh that would ask
/// without pause or overflow the clock, a JSON view that does not exist.
#[test]
fn bad_input_is_refused_before_any_call() {
    for (args, says) in [
        (
            &["status", "--collector", "127.0.0.1:50052"][..],
            "http://127.0.0.1:50052?",
        ),
        (
            &["status", "--collector", ""][..],
            "must start with http://",
        ),
        (&["top", "--interval", "0s"][..], "between 100ms and 1h"),
        (
            &["top", "--interval", "1000000years"][..],
            "between 100ms and 1h",
        ),
        (&["top", "--output", "json"][..], "status --output json"),
    ] {
        let o = cli(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
