//! The web console: a single-page app in plain JavaScript, served by the
//! server itself at `/console/` (`/` redirects there). No build step, no
//! network at run time: every file is compiled into the binary
//! (`include_bytes!` of `crates/shardlake-server/console/`).
//!
//! Each asset is served under a name carrying its content hash
//! (`app.3f2a9c01d4e5.js`), computed once at first use, and `index.html` is
//! rewritten to those names; so assets are cached for a year (`immutable`)
//! and a new binary's assets are new URLs, while `index.html` itself is
//! revalidated every time (`no-cache` + `ETag`, 304 when unchanged).
//!
//! Text assets are gzipped once, at the same first use, and sent gzipped to
//! clients that accept it (`Vary: Accept-Encoding`): about a third of the
//! bytes over a real network.
//!
//! Every console answer carries a strict Content-Security-Policy: scripts
//! and styles only from the server's own files (no inline script, no
//! `eval`), requests only to this origin, no framing. The console reads the
//! JSON API with the token the user typed, kept in `sessionStorage` and
//! sent in the `Authorization` header, never in a URL; so these routes
//! need no token themselves (they hold no data).

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Path;
use std::io::Write;

use axum::http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, ETAG, HeaderName,
    IF_NONE_MATCH, REFERRER_POLICY, VARY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// Where the console lives.
pub const CONSOLE_PATH: &str = "/console/";

/// The policy of every console answer. `img-src data:` is for the empty
/// favicon; uPlot draws on a canvas and styles through the CSSOM, which
/// `style-src 'self'` allows.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// A hashed asset lives this long in caches (a year; its name changes with
/// its content).
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The console's files: the name `index.html` refers to them by, type,
/// bytes. The order is the order `index.html` loads scripts in.
const SOURCES: &[(&str, &str, &[u8])] = &[
    (
        "uPlot.min.css",
        CSS,
        include_bytes!("../../console/vendor/uplot-1.6.32/uPlot.min.css"),
    ),
    (
        "console.css",
        CSS,
        include_bytes!("../../console/console.css"),
    ),
    (
        "uPlot.iife.min.js",
        JS,
        include_bytes!("../../console/vendor/uplot-1.6.32/uPlot.iife.min.js"),
    ),
    ("api.js", JS, include_bytes!("../../console/api.js")),
    ("ui.js", JS, include_bytes!("../../console/ui.js")),
    ("charts.js", JS, include_bytes!("../../console/charts.js")),
    ("query.js", JS, include_bytes!("../../console/query.js")),
    ("lake.js", JS, include_bytes!("../../console/lake.js")),
    ("shards.js", JS, include_bytes!("../../console/shards.js")),
    ("app.js", JS, include_bytes!("../../console/app.js")),
];

const INDEX: &[u8] = include_bytes!("../../console/index.html");

/// One file as served.
#[derive(Debug)]
struct Served {
    content_type: &'static str,
    bytes: &'static [u8],
    /// The bytes gzipped, when that is smaller.
    gzip: Option<Bytes>,
    etag: HeaderValue,
    /// The ETag of the gzipped bytes (a different representation).
    gzip_etag: HeaderValue,
}

impl Served {
    fn new(content_type: &'static str, bytes: &'static [u8]) -> (Self, String) {
        let digest = hex::encode(Sha256::digest(bytes));
        let tag = |suffix: &str| {
            HeaderValue::from_str(&format!("\"{}{suffix}\"", &digest[..32]))
                .unwrap_or_else(|_| HeaderValue::from_static("\"\""))
        };
        (
            Self {
                content_type,
                bytes,
                gzip: gzip(bytes)
                    .filter(|z| z.len() < bytes.len())
                    .map(Bytes::from),
                etag: tag(""),
                gzip_etag: tag("-gzip"),
            },
            digest[..12].to_owned(),
        )
    }
}

fn gzip(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).ok()?;
    encoder.finish().ok()
}

/// Whether `Accept-Encoding` takes gzip (named, without `q=0`).
fn accepts_gzip(request: &HeaderMap) -> bool {
    request
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// The console with its hashed names.
#[derive(Debug)]
struct Console {
    index: Served,
    /// By hashed name.
    assets: HashMap<String, Served>,
}

/// `name.ext` with `hash` before the extension.
fn hashed_name(name: &str, hash: &str) -> String {
    match name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{hash}.{ext}"),
        None => format!("{name}.{hash}"),
    }
}

fn build() -> Console {
    let mut index = String::from_utf8_lossy(INDEX).into_owned();
    let mut assets = HashMap::new();
    for (name, content_type, bytes) in SOURCES {
        let (served, hash) = Served::new(content_type, bytes);
        let hashed = hashed_name(name, &hash);
        index = index.replace(
            &format!("\"assets/{name}\""),
            &format!("\"assets/{hashed}\""),
        );
        assets.insert(hashed, served);
    }
    // Leaked once per process: the rewritten page lives as long as the
    // binary's own bytes do.
    let index: &'static [u8] = Box::leak(index.into_bytes().into_boxed_slice());
    let (index, _) = Served::new("text/html; charset=utf-8", index);
    Console { index, assets }
}

static CONSOLE: LazyLock<Console> = LazyLock::new(build);

/// The console's routes, merged into the API's router by [`super::app`].
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary(CONSOLE_PATH) }))
        .route(
            "/console",
            get(|| async { Redirect::temporary(CONSOLE_PATH) }),
        )
        .route(CONSOLE_PATH, get(index))
        .route("/console/assets/{file}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(&CONSOLE.index, "no-cache", &headers)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match CONSOLE.assets.get(&file) {
        Some(served) => serve(served, IMMUTABLE, &headers),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("the console has no asset `{file}` (a page from an older binary?)"),
        )
        .into_response(),
    }
}

/// The file (gzipped if the client takes it), or 304 when the client holds
/// this version.
fn serve(served: &Served, cache_control: &'static str, request: &HeaderMap) -> Response {
    let gzipped = served.gzip.clone().filter(|_| accepts_gzip(request));
    let etag = if gzipped.is_some() {
        &served.gzip_etag
    } else {
        &served.etag
    };
    let fresh = request
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else if let Some(body) = gzipped {
        (
            [
                (CONTENT_TYPE, served.content_type),
                (CONTENT_ENCODING, "gzip"),
            ],
            body,
        )
            .into_response()
    } else {
        ([(CONTENT_TYPE, served.content_type)], served.bytes).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(ETAG, etag.clone());
    if served.gzip.is_some() {
        headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache_control));
    secure(headers);
    response
}

/// The headers that keep the console's pages from being framed, sniffed or
/// made to run anything but their own scripts.
fn secure(headers: &mut HeaderMap) {
    const CSP: HeaderName = HeaderName::from_static("content-security-policy");
    headers.insert(CSP, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_referenced_by_its_hashed_name_and_nothing_else_is_loaded() {
        let console = build();
        let index = std::str::from_utf8(console.index.bytes).expect("utf-8");
        for (name, _, bytes) in SOURCES {
            let (_, hash) = Served::new("", bytes);
            let hashed = hashed_name(name, &hash);
            assert!(
                index.contains(&format!("\"assets/{hashed}\"")),
                "index.html does not load {name} (as {hashed})"
            );
            assert!(console.assets.contains_key(&hashed));
        }
        // Every `assets/` reference was rewritten: none names a file that
        // is not served.
        for reference in index.split("\"assets/").skip(1) {
            let file = reference.split('"').next().unwrap_or("");
            assert!(console.assets.contains_key(file), "{file} is not an asset");
        }
        // No inline script or style: the policy would refuse it.
        assert!(!index.contains("<script>") && !index.contains("style="));
        assert!(!index.contains("<style"));
        // Text compresses: every asset has a smaller gzipped copy that
        // unzips to the same bytes.
        for served in console.assets.values() {
            let zipped = served.gzip.as_deref().expect("gzipped");
            let mut unzipped = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(zipped), &mut unzipped)
                .expect("gunzip");
            assert_eq!(unzipped, served.bytes);
            assert_ne!(served.etag, served.gzip_etag);
        }
        assert_eq!(hashed_name("app.js", "abc"), "app.abc.js");
        assert_eq!(
            hashed_name("uPlot.iife.min.js", "abc"),
            "uPlot.iife.min.abc.js"
        );
    }

    #[test]
    fn gzip_is_sent_only_to_clients_that_take_it() {
        let take = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                ACCEPT_ENCODING,
                HeaderValue::from_str(value).expect("value"),
            );
            accepts_gzip(&headers)
        };
        assert!(take("gzip, deflate, br, zstd"));
        assert!(take("br;q=1.0, GZIP;q=0.5"));
        assert!(take("*"));
        assert!(!take("gzip;q=0"));
        assert!(!take("br, zstd"));
        assert!(!take("identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
