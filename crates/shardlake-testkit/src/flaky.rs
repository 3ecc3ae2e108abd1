//! An HTTP proxy in front of an S3 server that injects the failures real
//! object stores produce: 503 `SlowDown` answers, and outages where
//! requests are accepted and never answered.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

/// What the proxy does to requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    None,
    /// Answer every `n`th request with 503 `SlowDown` instead of forwarding.
    SlowDownEvery(u64),
    /// Forward every `n`th request, then cut its answer off after the
    /// headers, as a connection reset mid-response looks to the client.
    ResetEvery(u64),
    /// Accept requests and never answer (the store is down).
    Hang,
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    fault: Mutex<Fault>,
    requests: AtomicU64,
    injected: AtomicU64,
}

/// A running fault-injecting proxy.
pub struct FlakyS3 {
    endpoint: String,
    shared: Arc<Shared>,
}

impl FlakyS3 {
    /// Starts a proxy to `upstream` on a free loopback port, on the
    /// current tokio runtime.
    pub async fn start(upstream: &str, fault: Fault) -> Self {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            fault: Mutex::new(fault),
            requests: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        });
        let app = Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { endpoint, shared }
    }

    /// The proxy's endpoint, to use as the S3 endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Changes what the proxy does from now on.
    pub fn set_fault(&self, fault: Fault) {
        *self.shared.fault.lock().expect("fault lock") = fault;
    }

    /// Failures injected so far (503 answers and hung requests).
    pub fn injected(&self) -> u64 {
        self.shared.injected.load(Ordering::SeqCst)
    }

    /// Requests seen so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let n = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let fault = *shared.fault.lock().expect("fault lock");
    match fault {
        Fault::SlowDownEvery(every) if every > 0 && n.is_multiple_of(every) => {
            shared.injected.fetch_add(1, Ordering::SeqCst);
            return (StatusCode::SERVICE_UNAVAILABLE, SLOW_DOWN).into_response();
        }
        Fault::Hang => {
            shared.injected.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        _ => {}
    }
    let (parts, body) = request.into_parts();
    // A HEAD answer has no body to cut off.
    let has_body = parts.method != axum::http::Method::HEAD;
    let body: Bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut upstream = shared
        .client
        .request(parts.method, format!("{}{path}", shared.upstream));
    for (name, value) in &parts.headers {
        // Hop-by-hop headers belong to this connection, not the next.
        if name == HeaderName::from_static("connection")
            || name == HeaderName::from_static("transfer-encoding")
        {
            continue;
        }
        upstream = upstream.header(name, value);
    }
    let answer = match upstream.body(body).send().await {
        Ok(a) => a,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let resetting = has_body
        && matches!(fault, Fault::ResetEvery(every) if every > 0 && n.is_multiple_of(every));
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name == HeaderName::from_static("transfer-encoding")
            || name == HeaderName::from_static("connection")
            || (resetting && name == HeaderName::from_static("content-length"))
        {
            continue;
        }
        response = response.header(name, value);
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    if resetting {
        // The request took effect upstream; its answer is cut off after
        // the headers, which is what a reset connection looks like.
        shared.injected.fetch_add(1, Ordering::SeqCst);
        let cut = futures::stream::once(async {
            Err::<Bytes, _>(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected: connection reset",
            ))
        });
        return response
            .header("content-length", (bytes.len() + 1).to_string())
            .body(Body::from_stream(cut))
            .unwrap_or_else(|e| (StatusCode::BAD_GATEWAY, e.to_string()).into_response());
    }
    response
        .body(Body::from(bytes))
        .unwrap_or_else(|e| (StatusCode::BAD_GATEWAY, e.to_string()).into_response())
}
