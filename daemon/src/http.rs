//! The daemons' plain-text HTTP server (`/metrics` and the like): HTTP/1,
//! one task per connection, every request answered from a function of its
//! path.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
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

/// Serves HTTP/1 on `listener`, answering each request with
/// `pages(path)`, until `shutdown` completes. Accept errors (out of file
/// descriptors and the like) are logged and retried after a pause rather
/// than ending the server or spinning.
pub async fn serve<F>(listener: TcpListener, pages: F, shutdown: impl Future<Output = ()>)
where
    F: Fn(&str) -> Page + Send + Sync + 'static,
{
    let pages = Arc::new(pages);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                debug!("accepting an HTTP connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let pages = pages.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let page = pages(req.uri().path());
                async move { Ok::<_, Infallible>(page.into_response()) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!("HTTP connection: {e}");
            }
        });
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
}
