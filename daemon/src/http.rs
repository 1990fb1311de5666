//! The daemons' plain-text HTTP server (`/metrics` and the like): HTTP/1,
//! one task per connection, every request answered from a function of its
//! path.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tracing::debug;

/// One answer: status, content type, body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// HTTP status.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The text.
    pub body: String,
}

impl Page {
    /// 200 with `body` of `content_type`.
    pub fn ok(content_type: &'static str, body: String) -> Self {
        Self {
            status: StatusCode::OK,
            content_type,
            body,
        }
    }

    /// 404 with a plain-text hint.
    pub fn not_found(body: String) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            content_type: "text/plain",
            body,
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::from(self.body)));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(self.content_type),
        );
        resp
    }
}

/// What one client may hold of the server: a scraper needs one connection
/// and a request's headers within seconds; a client that trickles them
/// (or opens thousands of connections) must not hold descriptors and
/// memory the daemon's gRPC listener shares.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The time a request's headers may take to arrive.
    pub header_timeout: Duration,
    /// After this long a connection ends once its request in flight is
    /// answered (a keep-alive scraper reconnects).
    pub connection_time: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            connection_time: Duration::from_secs(120),
            connections: 256,
        }
    }
}

/// Serves HTTP/1 on `listener`, answering each request with
/// `pages(path)`, until `shutdown` completes, within [`Limits::default`].
pub async fn serve<F>(listener: TcpListener, pages: F, shutdown: impl Future<Output = ()>)
where
    F: Fn(&str) -> Page + Send + Sync + 'static,
{
    serve_within(listener, pages, shutdown, Limits::default()).await;
}

/// [`serve`] within `limits`. Accept errors (out of file descriptors and
/// the like) are logged and retried after a pause rather than ending the
/// server or spinning.
pub async fn serve_within<F>(
    listener: TcpListener,
    pages: F,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
) where
    F: Fn(&str) -> Page + Send + Sync + 'static,
{
    let pages = Arc::new(pages);
    let slots = Arc::new(Semaphore::new(limits.connections));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = accept(&listener, &slots) => r,
            () = &mut shutdown => return,
        };
        let (stream, slot) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!("accepting an HTTP connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(connection(stream, pages.clone(), limits, slot));
    }
}

/// The next connection, once a slot is free for it.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> std::io::Result<(TcpStream, OwnedSemaphorePermit)> {
    let slot = slots
        .clone()
        .acquire_owned()
        .await
        .map_err(std::io::Error::other)?;
    let (stream, _) = listener.accept().await?;
    Ok((stream, slot))
}

/// Serves one connection within `limits`, holding its `slot`.
async fn connection<F>(
    stream: TcpStream,
    pages: Arc<F>,
    limits: Limits,
    _slot: OwnedSemaphorePermit,
) where
    F: Fn(&str) -> Page + Send + Sync + 'static,
{
    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
        let page = pages(req.uri().path());
        async move { Ok::<_, Infallible>(page.into_response()) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let served = tokio::select! {
        r = conn.as_mut() => r,
        () = tokio::time::sleep(limits.connection_time) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        debug!("HTTP connection: {e}");
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn answers_from_the_path_until_shut_down() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            |path| match path {
                "/metrics" => Page::ok(crate::exposition::CONTENT_TYPE, "up 1\n".into()),
                _ => Page::not_found("not found: try /metrics\n".into()),
            },
            async {
                let _ = stopped.await;
            },
        ));
        let ok = get(addr, "/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(
            ok.contains("content-type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(ok.ends_with("up 1\n"), "{ok}");
        let missing = get(addr, "/nope").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server stops")
            .expect("the server task");
    }

    fn metrics_only(path: &str) -> Page {
        match path {
            "/metrics" => Page::ok(crate::exposition::CONTENT_TYPE, "up 1\n".into()),
            _ => Page::not_found("not found\n".into()),
        }
    }

    async fn start(limits: Limits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve_within(
            listener,
            metrics_only,
            async {
                let _ = stopped.await;
            },
            limits,
        ));
        (addr, stop)
    }

    #[tokio::test]
    async fn a_client_trickling_its_headers_is_cut_off() {
        let limits = Limits {
            header_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nX: ")
            .await
            .expect("write");
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the connection is still open after 5 s");
        // A well-behaved client is still served.
        assert!(get(addr, "/metrics").await.ends_with("up 1\n"));
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_free_one() {
        let limits = Limits {
            connections: 1,
            ..Limits::default()
        };
        let (addr, _stop) = start(limits).await;
        let idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // Give the server time to take the idle connection's slot.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let waiting = tokio::spawn(get(addr, "/metrics"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiting.is_finished(), "served beyond the limit");
        drop(idle);
        let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("served once the slot is free")
            .expect("the client task");
        assert!(answer.ends_with("up 1\n"), "{answer}");
    }
}
