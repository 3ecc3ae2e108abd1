//! The one body of every streamed answer: `/v1/query` in NDJSON, CSV or
//! Arrow, and `/v1/replay`.
//!
//! [`StreamedBody`] pulls record batches from the engine's stream and
//! encodes each as it arrives, one data frame per batch; nothing holds the
//! whole result. Once the rows are out it writes the encoder's tail
//! (NDJSON's stats line, Arrow's end of stream, an empty CSV's header) and
//! then the scan statistics as the `x-shardlake-stats` trailer. A failure
//! mid-stream ends the body: where the encoder has a place for it (NDJSON)
//! with an error line and the `x-shardlake-error` trailer, otherwise with
//! an abnormal end, which every client notices (no silent truncation). The
//! route says what else happens at the end ([`StreamEnd`]: count, log).
//!
//! Dropping the body (the client went away) drops the stream, which cancels
//! the query, and then whatever the body holds (a query slot).

use std::any::Any;
use std::pin::Pin;
use std::task::{Context, Poll};

use arrow::array::RecordBatch;
use axum::body::Body;
use axum::http::header::{CONTENT_TYPE, TRAILER};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body::Frame;
use shardlake_query::{QueryStream, ScanStats};
use tracing::Span;

use crate::encode::{ERROR_TRAILER, STATS_TRAILER, StreamEncoder};
use crate::error::ApiError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Record batches as the engine produces them, with the scan statistics
/// once they have ended.
pub(crate) trait Rows:
    Stream<Item = shardlake_query::Result<RecordBatch>> + Unpin + Send + 'static
{
    /// The scan statistics (default ones if the stream has none).
    fn stats(&self) -> ScanStats;
}

impl Rows for QueryStream {
    fn stats(&self) -> ScanStats {
        QueryStream::stats(self).cloned().unwrap_or_default()
    }
}

/// What a route does when its stream ends, besides what the body writes.
/// Both run in the request's span.
pub(crate) trait StreamEnd: Send + Unpin + 'static {
    /// All rows are out; runs before the tail and the trailer are written.
    fn finished(&mut self, _stats: &ScanStats) {}

    /// The stream failed with `error` and ends now.
    fn failed(&mut self, error: &ApiError);
}

/// Where a streamed body is.
enum Phase {
    Rows,
    Trailers(HeaderMap),
    /// Ending abnormally, once the response head is out.
    Abort(BoxError),
    Done,
}

/// The body of a streamed answer: `rows` through `encoder`, then the stats
/// trailer (or the error), telling `end` how it went.
pub(crate) struct StreamedBody<R, E> {
    rows: R,
    encoder: StreamEncoder,
    end: E,
    phase: Phase,
    /// Whether a data frame went out (and with it the response head).
    sent: bool,
    span: Span,
    /// Dropped after `rows`, when the body is.
    _hold: Option<Box<dyn Any + Send>>,
}

impl<R: Rows, E: StreamEnd> StreamedBody<R, E> {
    /// The body of `rows` encoded by `encoder`, in the current span.
    pub(crate) fn new(rows: R, encoder: StreamEncoder, end: E) -> Self {
        Self {
            rows,
            encoder,
            end,
            phase: Phase::Rows,
            sent: false,
            span: Span::current(),
            _hold: None,
        }
    }

    /// Keeps `guard` (a query slot) until the body is dropped.
    pub(crate) fn holding(mut self, guard: impl Any + Send) -> Self {
        self._hold = Some(Box::new(guard));
        self
    }

    /// The frame after the rows: the tail and then the stats trailer.
    fn finish(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        let stats = self.rows.stats();
        self.span.in_scope(|| self.end.finished(&stats));
        let tail = match self.encoder.finish(&stats) {
            Ok(tail) => tail,
            Err(e) => return self.fail(&ApiError::internal(e)),
        };
        let mut trailers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&serde_json::to_string(&stats).unwrap_or_default()) {
            trailers.insert(HeaderName::from_static(STATS_TRAILER), v);
        }
        self.phase = Phase::Trailers(trailers);
        Some(Ok(Frame::data(tail)))
    }

    /// Ends the body after `error`: NDJSON gets a last line saying so and
    /// a trailer; the other encoders have no place for it, so the body ends
    /// abnormally.
    fn fail(&mut self, error: &ApiError) -> Option<Result<Frame<Bytes>, BoxError>> {
        self.span.in_scope(|| self.end.failed(error));
        match self.encoder.error_line(error) {
            Some(line) => {
                let mut trailers = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(&error.body().to_string()) {
                    trailers.insert(HeaderName::from_static(ERROR_TRAILER), v);
                }
                self.phase = Phase::Trailers(trailers);
                Some(Ok(Frame::data(line)))
            }
            None => Some(Err(Box::new(std::io::Error::other(error.to_string())))),
        }
    }
}

impl<R: Rows, E: StreamEnd> http_body::Body for StreamedBody<R, E> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = match std::mem::replace(&mut this.phase, Phase::Done) {
            Phase::Done => None,
            Phase::Trailers(trailers) => Some(Ok(Frame::trailers(trailers))),
            Phase::Abort(error) => Some(Err(error)),
            Phase::Rows => {
                let Poll::Ready(next) = this.rows.poll_next_unpin(cx) else {
                    this.phase = Phase::Rows;
                    return Poll::Pending;
                };
                match next {
                    Some(Ok(batch)) => match this.encoder.batch(&batch) {
                        Ok(bytes) => {
                            this.phase = Phase::Rows;
                            Some(Ok(Frame::data(bytes)))
                        }
                        Err(e) => this.fail(&ApiError::internal(e)),
                    },
                    Some(Err(e)) => this.fail(&ApiError::from(e)),
                    None => this.finish(),
                }
            }
        };
        match frame {
            // An abnormal end before any data: hyper would drop the
            // response head with the connection, and the client would see
            // no answer instead of a 200 cut off. Yield once so the head is
            // flushed, then end.
            Some(Err(error)) if !this.sent => {
                this.sent = true;
                this.phase = Phase::Abort(error);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Some(Ok(frame)) => {
                this.sent |= frame.is_data();
                Poll::Ready(Some(Ok(frame)))
            }
            frame => Poll::Ready(frame),
        }
    }
}

impl<R: Rows, E: StreamEnd> IntoResponse for StreamedBody<R, E> {
    /// A 200 with the encoder's `Content-Type` and the trailers announced.
    fn into_response(self) -> Response {
        let content_type = self.encoder.content_type();
        let mut response = Response::new(Body::new(self));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(
            TRAILER,
            HeaderValue::from_static("x-shardlake-stats, x-shardlake-error"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
    use http_body_util::BodyExt;
    use shardlake_core::{Error, ErrorKind};

    use super::*;
    use crate::encode::Format;

    /// Rows handed out as scripted, then the stats.
    struct Scripted(VecDeque<shardlake_query::Result<RecordBatch>>);

    impl Stream for Scripted {
        type Item = shardlake_query::Result<RecordBatch>;

        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    impl Rows for Scripted {
        fn stats(&self) -> ScanStats {
            ScanStats {
                rows_returned: 3,
                ..ScanStats::default()
            }
        }
    }

    /// Remembers what the body told it.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl StreamEnd for Seen {
        fn finished(&mut self, stats: &ScanStats) {
            let mut seen = self.0.lock().expect("lock");
            seen.push(format!("finished {}", stats.rows_returned));
        }

        fn failed(&mut self, error: &ApiError) {
            let mut seen = self.0.lock().expect("lock");
            seen.push(format!("failed {}", error.code()));
        }
    }

    #[derive(Debug, PartialEq)]
    enum Out {
        Data(String),
        Trailer(&'static str, String),
        Cut,
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
    }

    fn batch(values: &[i64]) -> shardlake_query::Result<RecordBatch> {
        Ok(
            RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(values.to_vec()))])
                .expect("batch"),
        )
    }

    /// Every frame of the body of `rows` in `format`, and what `end` heard.
    async fn frames(
        format: Format,
        rows: Vec<shardlake_query::Result<RecordBatch>>,
    ) -> (Vec<Out>, Vec<String>) {
        let seen = Seen::default();
        let encoder = StreamEncoder::new(format, &schema()).expect("encoder");
        let mut body = StreamedBody::new(Scripted(rows.into()), encoder, seen.clone());
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            out.push(match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => Out::Data(String::from_utf8_lossy(&data).into_owned()),
                    Err(frame) => {
                        let trailers = frame.into_trailers().expect("trailers");
                        assert_eq!(trailers.len(), 1, "{trailers:?}");
                        let name = [STATS_TRAILER, ERROR_TRAILER]
                            .into_iter()
                            .find(|n| trailers.contains_key(*n))
                            .expect("a known trailer");
                        Out::Trailer(name, trailers[name].to_str().expect("text").to_owned())
                    }
                },
                Err(_) => Out::Cut,
            });
        }
        let seen = seen.0.lock().expect("lock").clone();
        (out, seen)
    }

    /// The stats as the trailer has them (fields in order).
    fn stats_json() -> String {
        serde_json::to_string(&Rows::stats(&Scripted(VecDeque::new()))).expect("json")
    }

    /// NDJSON's stats line (a JSON value: keys sorted).
    fn stats_line() -> String {
        let stats = Rows::stats(&Scripted(VecDeque::new()));
        format!("{}\n", serde_json::json!({ "stats": stats }))
    }

    #[tokio::test]
    async fn rows_then_the_tail_then_the_stats_trailer() {
        let (out, seen) = frames(Format::Ndjson, vec![batch(&[1, 2]), batch(&[3])]).await;
        assert_eq!(
            out,
            [
                Out::Data("{\"n\":1}\n{\"n\":2}\n".into()),
                Out::Data("{\"n\":3}\n".into()),
                Out::Data(stats_line()),
                Out::Trailer(STATS_TRAILER, stats_json()),
            ]
        );
        assert_eq!(seen, ["finished 3"]);

        let (out, _) = frames(Format::Csv, vec![]).await;
        assert_eq!(
            out,
            [
                Out::Data("n\n".into()),
                Out::Trailer(STATS_TRAILER, stats_json())
            ]
        );
    }

    #[tokio::test]
    async fn a_failure_is_an_error_line_and_trailer_or_a_cut() {
        let too_large = || Err(Error::new(ErrorKind::ResultTooLarge, "too many rows"));
        let (out, seen) = frames(Format::Ndjson, vec![batch(&[1]), too_large(), batch(&[2])]).await;
        let error = r#"{"error":"result_too_large","message":"too many rows"}"#;
        assert_eq!(
            out,
            [
                Out::Data("{\"n\":1}\n".into()),
                Out::Data(format!("{error}\n")),
                Out::Trailer(ERROR_TRAILER, error.into()),
            ]
        );
        assert_eq!(seen, ["failed result_too_large"]);

        for format in [Format::Csv, Format::Arrow] {
            let (out, seen) = frames(format, vec![batch(&[1]), too_large(), batch(&[2])]).await;
            assert!(
                matches!(out[..], [Out::Data(_), Out::Cut]),
                "{format:?}: {out:?}"
            );
            assert_eq!(seen, ["failed result_too_large"]);
        }
    }
}
