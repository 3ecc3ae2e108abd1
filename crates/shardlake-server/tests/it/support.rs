//! A real server on 127.0.0.1:0 over a fresh lake, and a client for it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use reqwest::{Client, RequestBuilder, Response};
use serde_json::{Value, json};
use shardlake_migrate::{InMemoryShard, ShardStub, shard_service};
use shardlake_server::{Permission, Server, ServerConfig, ServerError, ShardEndpoint, TokenConfig};
use tokio::sync::oneshot;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The fixture events: 3,000 events, 4 namespaces, 6 shards.
pub const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/events-4ns-6shards.ndjson"
);
/// Events per namespace in [`FIXTURE`].
pub const FIXTURE_COUNTS: [(&str, i64); 4] = [
    ("tenant-000", 1360),
    ("tenant-001", 724),
    ("tenant-002", 483),
    ("tenant-003", 433),
];

pub const ADMIN: &str = "admin-token-0123456789";
pub const ACME: &str = "acme-token-0123456789";
pub const WRITER: &str = "writer-token-0123456789";

/// Tokens: `admin` (everything), `acme` (query+ingest on tenant-001),
/// `writer` (ingest only, everywhere).
pub fn tokens() -> Vec<TokenConfig> {
    let token = |name: &str, clear: &str, ns: &[&str], perms: &[Permission]| TokenConfig {
        name: name.into(),
        token: Some(clear.into()),
        token_sha256: None,
        namespaces: ns.iter().map(|s| s.to_string()).collect(),
        permissions: perms.to_vec(),
    };
    vec![
        token(
            "admin",
            ADMIN,
            &["*"],
            &[Permission::Query, Permission::Ingest, Permission::Admin],
        ),
        token(
            "acme",
            ACME,
            &["tenant-001"],
            &[Permission::Query, Permission::Ingest],
        ),
        token("writer", WRITER, &["*"], &[Permission::Ingest]),
    ]
}

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The Postgres listener's address, when the config asked for one.
    pub pg: Option<SocketAddr>,
    pub client: Client,
    pub warehouse: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    dir: tempfile::TempDir,
}

impl TestServer {
    /// A server with default settings changed by `tweak`.
    pub async fn start(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            warehouse: dir.path().join("lake"),
            ..ServerConfig::default()
        };
        config.emitter.flush_interval = std::time::Duration::from_millis(20);
        tweak(&mut config);
        let warehouse = config.warehouse.clone();
        let server = Server::bind(config).await.expect("binds");
        let addr = server.local_addr();
        let pg = server.postgres_addr();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.serve(async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            pg,
            client: Client::new(),
            warehouse,
            shutdown: Some(tx),
            task: Some(task),
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GETs `path` and returns its JSON body.
    pub async fn get_json(&self, path: &str, token: Option<&str>) -> Value {
        self.get(path, token)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json")
    }

    /// Polls `GET /v1/stats` until `ready` holds
    /// ([`shardlake_testkit::wait_for_stats`]).
    pub async fn wait_for_stats(
        &self,
        token: Option<&str>,
        what: &str,
        ready: impl Fn(&Value) -> bool,
    ) -> Value {
        shardlake_testkit::wait_for_stats(|| self.get("/v1/stats", token), what, ready).await
    }

    /// POSTs `body` as JSON to `path`.
    pub async fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        self.post(path, token)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self, token: Option<&str>) -> String {
        self.get("/metrics", token)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> RequestBuilder {
        with_token(self.client.get(self.url(path)), token)
    }

    pub fn post(&self, path: &str, token: Option<&str>) -> RequestBuilder {
        with_token(self.client.post(self.url(path)), token)
    }

    /// `POST /v1/query` with `body`.
    pub async fn query_raw(&self, token: Option<&str>, body: Value) -> Response {
        self.post("/v1/query", token)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    /// A JSON query that must succeed; returns the whole answer.
    pub async fn query(&self, token: Option<&str>, sql: &str) -> Value {
        let response = self.query_raw(token, json!({ "sql": sql })).await;
        let status = response.status();
        let body: Value = response.json().await.expect("json body");
        assert_eq!(status, 200, "{sql}: {body}");
        body
    }

    /// Rows of a JSON query that must succeed.
    pub async fn rows(&self, token: Option<&str>, sql: &str) -> Vec<Value> {
        self.query(token, sql).await["rows"]
            .as_array()
            .expect("rows")
            .clone()
    }

    /// Posts the fixture as NDJSON and checks it was all accepted.
    pub async fn ingest_fixture(&self, token: Option<&str>) -> Value {
        let body = std::fs::read(FIXTURE).expect("fixture");
        let response = self
            .post("/v1/events", token)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        response.json().await.expect("json")
    }

    /// Stops the server gracefully and returns how `serve` ended, and the
    /// directory of its lake (deleted when dropped).
    pub async fn stop(mut self) -> (Result<(), ServerError>, tempfile::TempDir) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let ended = self
            .task
            .take()
            .expect("running")
            .await
            .expect("server task");
        (ended, self.dir)
    }
}

pub fn with_token(request: RequestBuilder, token: Option<&str>) -> RequestBuilder {
    match token {
        Some(t) => request.bearer_auth(t),
        None => request,
    }
}

/// Asserts an error answer: status and stable code.
pub async fn assert_error(response: Response, status: u16, code: &str) -> Value {
    let got = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON error body");
    assert_eq!(
        (got, body["error"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

/// An in-memory shard behind the shard protocol on a loopback socket. It
/// answers only while `open` says so: a closed gate holds a migration in
/// flight for as long as the test needs it running.
pub async fn shard(id: u32, open: watch::Receiver<bool>) -> (Arc<InMemoryShard>, ShardEndpoint) {
    let inner = Arc::new(InMemoryShard::new(id));
    let app = axum::Router::new()
        .nest(
            "/shard",
            shard_service(Arc::clone(&inner) as Arc<dyn ShardStub>),
        )
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let mut open = open.clone();
                async move {
                    // A dropped sender counts as open.
                    let _ = open.wait_for(|open| *open).await;
                    next.run(request).await
                }
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/shard", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (inner, ShardEndpoint { id, url })
}
