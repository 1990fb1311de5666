//! Webhooks: alert transitions POSTed in Alertmanager's v2 alerts format
//! (`POST /api/v2/alerts`, a JSON array of `{labels, annotations, startsAt,
//! endsAt, generatorURL}`), so an Alertmanager can receive them directly.
//!
//! The tick hands each batch to a bounded queue per URL and never waits:
//! when a receiver is down its queue fills, retries back off exponentially
//! (200 ms doubling to 30 s, 8 attempts per batch), and batches that do not
//! fit are dropped and counted. A batch the receiver refuses (a 4xx answer
//! other than 408 and 429) would be refused again: it is given up at once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime},
};

use evenflow_proto::v1;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Uri, body::Bytes};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::service::publish::names::{
    alert_kind_name, cause_name, severity_name, signal_name, view_name,
};

/// Batches waiting per URL.
const QUEUE: usize = 256;
const ATTEMPTS: u32 = 8;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a firing alert stays firing at the receiver without a refresh.
const FIRING_FOR: Duration = Duration::from_secs(300);

/// A webhook URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--webhook {url:?}: {problem}")]
pub struct BadUrl {
    /// The URL.
    pub url: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

/// Delivery counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Batches delivered (2xx).
    pub delivered: AtomicU64,
    /// Failed attempts (each retry counts).
    pub failed_attempts: AtomicU64,
    /// Batches given up after every retry.
    pub abandoned: AtomicU64,
    /// Batches dropped because a queue was full.
    pub dropped: AtomicU64,
}

struct Target {
    uri: Uri,
    authority: String,
    tx: mpsc::Sender<Arc<Vec<u8>>>,
}

/// The queues, one per URL.
pub struct Queue {
    targets: Vec<Target>,
    external_url: String,
    stats: Arc<Stats>,
}

/// Checks a webhook URL: `http://HOST[:PORT]/PATH`.
pub fn parse_url(url: &str) -> Result<Uri, BadUrl> {
    let bad = |problem: &str| BadUrl {
        url: url.to_owned(),
        problem: problem.to_owned(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|_| bad("not a URL; write http://HOST:PORT/api/v2/alerts"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https is not supported; point it at an http:// Alertmanager or a local TLS-terminating proxy",
            ));
        }
        _ => return Err(bad("needs http://; write http://HOST:PORT/api/v2/alerts")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("has no host; write http://HOST:PORT/api/v2/alerts"));
    }
    Ok(uri)
}

impl Queue {
    /// Starts one sender task per URL (on the current tokio runtime).
    pub fn start(
        urls: &[String],
        external_url: &str,
        stats: Arc<Stats>,
    ) -> Result<Option<Self>, BadUrl> {
        if urls.is_empty() {
            return Ok(None);
        }
        let mut targets = Vec::new();
        for url in urls {
            let uri = parse_url(url)?;
            let authority = match (uri.host(), uri.port_u16()) {
                (Some(host), Some(port)) => format!("{host}:{port}"),
                (Some(host), None) => format!("{host}:80"),
                _ => unreachable!("parse_url checked the host"),
            };
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(sender(uri.clone(), authority.clone(), rx, stats.clone()));
            targets.push(Target { uri, authority, tx });
        }
        Ok(Some(Self {
            targets,
            external_url: external_url.trim_end_matches('/').to_owned(),
            stats,
        }))
    }

    /// Queues alerts for every URL without waiting.
    pub fn push(&self, alerts: Vec<v1::Alert>) {
        let body = Arc::new(body(&alerts, &self.external_url, SystemTime::now()));
        for target in &self.targets {
            if target.tx.try_send(body.clone()).is_err() {
                self.stats.dropped.fetch_add(1, Relaxed);
                warn!(webhook = %target.uri, authority = %target.authority, "webhook queue full: dropped a batch of {} alerts", alerts.len());
            }
        }
    }
}

fn rfc3339(timestamp: &prost_types::Timestamp) -> String {
    SystemTime::try_from(*timestamp)
        .map(|time| humantime::format_rfc3339_millis(time).to_string())
        .unwrap_or_default()
}

/// `EvenflowZero`, `EvenflowDrainingViolation`, ...
fn alertname(kind: &str) -> String {
    let mut name = String::from("Evenflow");
    for part in kind.split('_') {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            name.push(first);
            name.extend(chars.flat_map(char::to_lowercase));
        }
    }
    name
}

/// The Alertmanager v2 JSON body for `alerts`.
pub fn body(alerts: &[v1::Alert], external_url: &str, now: SystemTime) -> Vec<u8> {
    let items: Vec<Value> = alerts
        .iter()
        .map(|alert| {
            let kind = alert_kind_name(alert.kind);
            let view = view_name(alert.view);
            let severity = severity_name(alert.severity);
            let mut annotations = Map::new();
            annotations.insert("summary".into(), alert.summary.clone().into());
            annotations.insert("observed".into(), format!("{}", alert.observed).into());
            annotations.insert("expected".into(), format!("{}", alert.expected).into());
            annotations.insert("flaps".into(), alert.flaps.to_string().into());
            let mut evidence: Vec<_> = alert.evidence.iter().collect();
            evidence.sort_by(|a, b| a.0.cmp(b.0));
            for (name, value) in evidence {
                annotations.insert(format!("evidence_{name}"), format!("{value}").into());
            }
            let starts = alert.since.as_ref().map(rfc3339).unwrap_or_default();
            let ends = match &alert.resolved_at {
                Some(resolved) => rfc3339(resolved),
                None => humantime::format_rfc3339_millis(now + FIRING_FOR).to_string(),
            };
            let mut labels = json!({
                "alertname": alertname(kind),
                "pool": alert.pool,
                "member": alert.member,
                "kind": kind,
                "view": view,
                "severity": severity,
            });
            // Kubernetes pools: the member's Pod, for routing and silences.
            if !alert.pod.is_empty() {
                labels["pod"] = json!(alert.pod);
            }
            // What the alert is about and why: routes pinned load to the
            // service's owners, routing to the load balancer's.
            for (label, value) in [
                ("signal", signal_name(alert.signal)),
                ("cause", cause_name(alert.cause)),
            ] {
                if !value.is_empty() {
                    labels[label] = json!(value);
                }
            }
            json!({
                "labels": labels,
                "annotations": annotations,
                "startsAt": starts,
                "endsAt": ends,
                "generatorURL": format!("{external_url}/pools/{}", alert.pool),
            })
        })
        .collect();
    serde_json::to_vec(&items).unwrap_or_else(|_| b"[]".to_vec())
}

async fn sender(
    uri: Uri,
    authority: String,
    mut rx: mpsc::Receiver<Arc<Vec<u8>>>,
    stats: Arc<Stats>,
) {
    while let Some(body) = rx.recv().await {
        let mut backoff = BACKOFF_MIN;
        for attempt in 1..=ATTEMPTS {
            match tokio::time::timeout(TIMEOUT, post(&uri, &authority, body.clone())).await {
                Ok(Ok(())) => {
                    stats.delivered.fetch_add(1, Relaxed);
                    debug!(webhook = %uri, attempt, "delivered");
                    break;
                }
                Ok(Err(Failure::Refused(status))) => {
                    // The same batch would be refused again: retrying
                    // only delays the batches behind it.
                    stats.failed_attempts.fetch_add(1, Relaxed);
                    stats.abandoned.fetch_add(1, Relaxed);
                    warn!(webhook = %uri, "the receiver refused a batch posted to {} (HTTP {status}), which is not retried: check the webhook's URL (Alertmanager takes alerts at /api/v2/alerts) and that it takes Alertmanager's v2 alerts", uri.path());
                    break;
                }
                Ok(Err(Failure::Transient(error))) => {
                    stats.failed_attempts.fetch_add(1, Relaxed);
                    warn!(webhook = %uri, attempt, "webhook delivery failed: {error}; retrying in {backoff:?}");
                }
                Err(_) => {
                    stats.failed_attempts.fetch_add(1, Relaxed);
                    warn!(webhook = %uri, attempt, "webhook delivery timed out after {TIMEOUT:?}; retrying in {backoff:?}");
                }
            }
            if attempt == ATTEMPTS {
                stats.abandoned.fetch_add(1, Relaxed);
                warn!(webhook = %uri, "giving up on a batch after {ATTEMPTS} attempts");
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// The most of a receiver's answer read before the connection is dropped.
const MAX_ANSWER: usize = 64 << 10;

/// Why a delivery failed.
#[derive(Debug, PartialEq)]
enum Failure {
    /// The receiver answered a client error (4xx but 408 and 429): the
    /// batch would be refused again.
    Refused(hyper::StatusCode),
    /// Anything else: worth another attempt.
    Transient(String),
}

impl From<String> for Failure {
    fn from(error: String) -> Self {
        Self::Transient(error)
    }
}

async fn post(uri: &Uri, authority: &str, body: Arc<Vec<u8>>) -> Result<(), Failure> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|error| format!("connecting to {authority}: {error}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("HTTP handshake: {error}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let req = Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "evenflow-collector")
        .body(Full::new(Bytes::from(body.as_ref().clone())))
        .map_err(|error| format!("building the request: {error}"))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|error| format!("sending: {error}"))?;
    let status = resp.status();
    // Drain the body so the connection closes cleanly, but only so much of
    // it: a receiver that streams an endless answer must neither fill the
    // collector's memory nor turn a delivery it acknowledged into a
    // timeout, and a retry.
    let _ = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await;
    let retried = [
        hyper::StatusCode::REQUEST_TIMEOUT,
        hyper::StatusCode::TOO_MANY_REQUESTS,
    ];
    if status.is_success() {
        Ok(())
    } else if status.is_client_error() && !retried.contains(&status) {
        Err(Failure::Refused(status))
    } else {
        Err(Failure::Transient(format!(
            "receiver answered HTTP {status}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_endless_answer_is_cut_short_and_the_delivery_counts() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("the delivery");
            let mut request = [0u8; 4096];
            let _ = s.read(&mut request).await;
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            let mut chunk = b"1000\r\n".to_vec();
            chunk.extend([b'x'; 0x1000]);
            chunk.extend(b"\r\n");
            if s.write_all(head.as_bytes()).await.is_ok() {
                while s.write_all(&chunk).await.is_ok() {}
            }
        });
        let uri: Uri = format!("http://{addr}/alerts").parse().expect("a URI");
        let authority = addr.to_string();
        let sent = post(&uri, &authority, Arc::new(b"[]".to_vec()));
        let answered = tokio::time::timeout(std::time::Duration::from_secs(5), sent).await;
        assert_eq!(
            answered,
            Ok(Ok(())),
            "delivered, its endless answer cut short"
        );
    }

    /// A receiver answering `status` to every request, counting them.
    async fn answering(status: &'static str) -> (std::net::SocketAddr, Arc<AtomicU64>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("its address");
        let requests = Arc::new(AtomicU64::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let _ = s.read(&mut request).await;
                counted.fetch_add(1, Relaxed);
                let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        (addr, requests)
    }

    #[tokio::test]
    async fn a_refused_batch_is_not_retried_but_a_throttled_one_is() {
        for (status, refused) in [("400 Bad Request", true), ("429 Too Many Requests", false)] {
            let (addr, requests) = answering(status).await;
            let uri: Uri = format!("http://{addr}/api/v2/alerts")
                .parse()
                .expect("a URI");
            let stats = Arc::new(Stats::default());
            let (tx, rx) = mpsc::channel(1);
            let sending = tokio::spawn(sender(uri, addr.to_string(), rx, stats.clone()));
            tx.send(Arc::new(b"[]".to_vec())).await.expect("queued");
            // The first retry comes 200 ms after the first attempt.
            tokio::time::sleep(Duration::from_millis(700)).await;
            sending.abort();
            let requests = requests.load(Relaxed);
            if refused {
                assert_eq!(requests, 1, "{status}");
                assert_eq!(stats.abandoned.load(Relaxed), 1, "{status}");
            } else {
                assert!(requests >= 2, "{status}: {requests} attempts");
                assert_eq!(stats.abandoned.load(Relaxed), 0, "{status}");
            }
        }
    }

    #[test]
    fn alertmanager_v2_shape() {
        let zero = v1::Alert {
            id: "web/10.0.0.1:80/ZERO/server".into(),
            pool: "web".into(),
            member: "10.0.0.1:80".into(),
            kind: v1::AlertKind::Zero as i32,
            view: v1::View::Server as i32,
            severity: v1::Severity::Page as i32,
            since: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            summary: "zero".into(),
            ..Default::default()
        };
        let sent: Value =
            serde_json::from_slice(&body(&[zero], "http://c:9465", SystemTime::now())).unwrap();
        let first = &sent[0];
        assert_eq!(first["labels"]["alertname"], "EvenflowZero");
        assert_eq!(first["labels"]["severity"], "page");
        assert_eq!(first["startsAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(first["generatorURL"], "http://c:9465/pools/web");
        assert!(
            first["labels"]["pod"].is_null(),
            "no pod label outside Kubernetes"
        );
        let kube = v1::Alert {
            pod: "default/web-7d9f-abcde".into(),
            pool: "default/web:http".into(),
            ..Default::default()
        };
        let sent: Value =
            serde_json::from_slice(&body(&[kube], "http://c:9465", SystemTime::now())).unwrap();
        assert_eq!(sent[0]["labels"]["pod"], "default/web-7d9f-abcde");
        assert_eq!(
            sent[0]["generatorURL"],
            "http://c:9465/pools/default/web:http"
        );
        assert!(sent[0]["labels"]["signal"].is_null() && sent[0]["labels"]["cause"].is_null());
        let pinned = v1::Alert {
            signal: v1::Signal::ActiveConnections as i32,
            cause: v1::Cause::Pinned as i32,
            ..Default::default()
        };
        let sent: Value =
            serde_json::from_slice(&body(&[pinned], "http://c:9465", SystemTime::now())).unwrap();
        assert_eq!(sent[0]["labels"]["signal"], "active_connections");
        assert_eq!(sent[0]["labels"]["cause"], "pinned");
        assert_eq!(alertname("DRAINING_VIOLATION"), "EvenflowDrainingViolation");
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("http://127.0.0.1:9093/api/v2/alerts").is_ok());
    }
}
