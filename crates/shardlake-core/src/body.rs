//! An ingest body (NDJSON lines or a JSON array of events) parsed piece by
//! piece as it arrives, so that parsing overlaps receiving and a body is
//! never held twice (raw and parsed) in full.
//!
//! Pieces may be cut anywhere, inside a line, an element or a string: the
//! parser keeps the unfinished part and parses every complete line or array
//! element into its [`EventBatchBuilder`] at once. The result is exactly
//! what [`push_ndjson`](crate::push_ndjson) or
//! [`push_json_array`](crate::push_json_array) give for the whole body at
//! once, wherever it was cut.

use crate::batch::{EventBatch, EventBatchBuilder, RejectedLine};
use crate::event::{EventError, EventErrorCode};

/// The two shapes an ingest body can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyForm {
    /// One event per line; refused lines are numbered from 1.
    Ndjson,
    /// A JSON array of events; refused elements are numbered from 0.
    JsonArray,
}

impl BodyForm {
    /// The form of a body that starts with `head` (blanks skipped): a JSON
    /// array if its first byte is `[`, else NDJSON.
    pub fn sniff(head: &[u8]) -> Option<Self> {
        head.iter()
            .find(|b| !b.is_ascii_whitespace())
            .map(|b| match b {
                b'[' => Self::JsonArray,
                _ => Self::Ndjson,
            })
    }
}

/// Parses a body piece by piece; see the module docs.
pub struct BodyParser {
    builder: EventBatchBuilder,
    form: BodyForm,
    rejected: Vec<RejectedLine>,
    /// Received bytes not parsed yet: an unfinished line or element.
    pending: Vec<u8>,
    /// NDJSON: the number of `pending`'s first line.
    next_line: usize,
    /// JSON array: where the scan stands.
    array: ArrayScan,
}

impl std::fmt::Debug for BodyParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyParser")
            .field("form", &self.form)
            .field("events", &self.events())
            .field("pending_bytes", &self.pending.len())
            .finish()
    }
}

impl BodyParser {
    /// A parser of a body in `form`, appending to `builder`.
    pub fn new(form: BodyForm, builder: EventBatchBuilder) -> Self {
        Self {
            builder,
            form,
            rejected: Vec::new(),
            pending: Vec::new(),
            next_line: 1,
            array: ArrayScan::default(),
        }
    }

    /// The body's form.
    pub fn form(&self) -> BodyForm {
        self.form
    }

    /// Events seen so far, valid or refused.
    pub fn events(&self) -> usize {
        self.builder.len() + self.rejected.len()
    }

    /// Parses the complete lines or elements that `piece` finishes. Fails
    /// only when a JSON array body is not a JSON array (then the whole body
    /// is refused: its structure is unknown from there on).
    pub fn push(&mut self, piece: &[u8]) -> Result<(), EventError> {
        match self.form {
            BodyForm::Ndjson => {
                let Some(last_newline) = piece.iter().rposition(|b| *b == b'\n') else {
                    self.pending.extend_from_slice(piece);
                    return Ok(());
                };
                let (complete, rest) = piece.split_at(last_newline + 1);
                if self.pending.is_empty() {
                    self.parse_lines(complete);
                } else {
                    let mut lines = std::mem::take(&mut self.pending);
                    lines.extend_from_slice(complete);
                    self.parse_lines(&lines);
                    lines.clear();
                    self.pending = lines;
                }
                self.pending.extend_from_slice(rest);
                Ok(())
            }
            BodyForm::JsonArray => {
                if self.pending.is_empty() {
                    let used = self
                        .array
                        .scan(piece, &mut self.builder, &mut self.rejected)?;
                    self.pending.extend_from_slice(&piece[used..]);
                } else {
                    self.pending.extend_from_slice(piece);
                    let pending = std::mem::take(&mut self.pending);
                    let used = self
                        .array
                        .scan(&pending, &mut self.builder, &mut self.rejected);
                    self.pending = pending;
                    self.pending.drain(..used?);
                }
                Ok(())
            }
        }
    }

    /// Parses what is left and returns the valid events and the refused ones.
    pub fn finish(mut self) -> Result<(EventBatch, Vec<RejectedLine>), EventError> {
        match self.form {
            BodyForm::Ndjson => {
                let last = std::mem::take(&mut self.pending);
                self.parse_lines(&last);
            }
            BodyForm::JsonArray => {
                let last = std::mem::take(&mut self.pending);
                let used = self
                    .array
                    .scan(&last, &mut self.builder, &mut self.rejected)?;
                if used < last.len() || self.array.state != ArrayState::Closed {
                    return Err(not_an_array(format!(
                        "the body ends inside the array, after {} elements",
                        self.array.index
                    )));
                }
            }
        }
        Ok((self.builder.finish(), self.rejected))
    }

    /// Parses NDJSON lines (`lines` ends at a line boundary or the body's end).
    fn parse_lines(&mut self, lines: &[u8]) {
        let first = self.next_line;
        for (i, line) in lines.split(|b| *b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if let Err(error) = self.builder.push_json(line) {
                self.rejected
                    .push(RejectedLine::new(first + i, error, line));
            }
        }
        self.next_line += lines.iter().filter(|b| **b == b'\n').count();
    }
}

/// Where a JSON array scan stands between pieces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ArrayState {
    /// Before the opening `[`.
    #[default]
    Open,
    /// After `[`: an element or `]`.
    First,
    /// After `,`: an element.
    Next,
    /// Inside an element.
    Element,
    /// After an element: `,` or `]`.
    After,
    /// After the closing `]`: only blanks.
    Closed,
}

/// A byte-level scanner that finds the array's elements without parsing
/// them (each is then parsed as one event). It tracks strings and nesting,
/// nothing else: an element's own syntax is the event parser's business,
/// so a malformed element is refused alone.
#[derive(Debug, Clone, Copy, Default)]
struct ArrayScan {
    state: ArrayState,
    /// Index of the current (or next) element.
    index: usize,
    /// Inside an element: open brackets, and string state.
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// A scalar element (number, literal) rather than an object, array or string.
    scalar: bool,
    /// Bytes at the start of the next buffer already scanned: the part of
    /// an unfinished element that the last buffer held.
    resume: usize,
}

impl ArrayScan {
    /// Scans `buf` (which starts where the last scan stopped using bytes),
    /// pushing each complete element. Returns how many bytes were used: the
    /// rest is an unfinished element, kept for the next scan.
    fn scan(
        &mut self,
        buf: &[u8],
        builder: &mut EventBatchBuilder,
        rejected: &mut Vec<RejectedLine>,
    ) -> Result<usize, EventError> {
        let mut used = 0;
        // An unfinished element starts the buffer; its first `resume`
        // bytes were scanned already.
        let mut start = 0;
        let mut i = std::mem::take(&mut self.resume);
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                ArrayState::Open => match b {
                    b'[' => self.state = ArrayState::First,
                    b if b.is_ascii_whitespace() => {}
                    _ => return Err(not_an_array("it does not start with `[`")),
                },
                ArrayState::First | ArrayState::Next => match b {
                    b if b.is_ascii_whitespace() => {}
                    b']' if self.state == ArrayState::First => self.state = ArrayState::Closed,
                    b']' | b',' => {
                        return Err(not_an_array(format!(
                            "element {} is missing (a stray `{}`)",
                            self.index, b as char
                        )));
                    }
                    _ => {
                        start = i;
                        self.state = ArrayState::Element;
                        self.depth = u32::from(matches!(b, b'{' | b'['));
                        self.in_string = b == b'"';
                        self.scalar = !matches!(b, b'{' | b'[' | b'"');
                        self.escaped = false;
                        if self.scalar {
                            // Re-read this byte as part of the scalar.
                            continue;
                        }
                    }
                },
                ArrayState::Element => {
                    let end = if self.in_string {
                        match (self.escaped, b) {
                            (true, _) => self.escaped = false,
                            (false, b'\\') => self.escaped = true,
                            (false, b'"') => self.in_string = false,
                            _ => {}
                        }
                        !self.in_string && self.depth == 0
                    } else if self.scalar {
                        if b.is_ascii_whitespace() || b == b',' || b == b']' {
                            self.push(&buf[start..i], builder, rejected);
                            self.state = ArrayState::After;
                            used = i;
                            continue;
                        }
                        false
                    } else {
                        match b {
                            b'"' => self.in_string = true,
                            b'{' | b'[' => self.depth += 1,
                            b'}' | b']' => self.depth -= 1,
                            _ => {}
                        }
                        self.depth == 0
                    };
                    if end {
                        self.push(&buf[start..=i], builder, rejected);
                        self.state = ArrayState::After;
                        used = i + 1;
                    }
                }
                ArrayState::After => match b {
                    b',' => self.state = ArrayState::Next,
                    b']' => self.state = ArrayState::Closed,
                    b if b.is_ascii_whitespace() => {}
                    _ => {
                        return Err(not_an_array(format!(
                            "expected `,` or `]` after element {}",
                            self.index - 1
                        )));
                    }
                },
                ArrayState::Closed => {
                    if !b.is_ascii_whitespace() {
                        return Err(not_an_array("there is more after its closing `]`"));
                    }
                }
            }
            if self.state != ArrayState::Element {
                used = i + 1;
            }
            i += 1;
        }
        if self.state == ArrayState::Element {
            self.resume = buf.len() - used;
        }
        Ok(used)
    }

    fn push(
        &mut self,
        element: &[u8],
        builder: &mut EventBatchBuilder,
        rejected: &mut Vec<RejectedLine>,
    ) {
        if let Err(error) = builder.push_json(element) {
            rejected.push(RejectedLine::new(self.index, error, element));
        }
        self.index += 1;
    }
}

fn not_an_array(why: impl std::fmt::Display) -> EventError {
    EventError::new(
        EventErrorCode::MalformedJson,
        format!("not a JSON array of events: {why}"),
    )
}

/// Appends every element of a JSON array of events to `builder`, returning the
/// refused elements by 0-based index. Fails as a whole only if the body is not
/// a JSON array at all.
pub fn push_json_array(
    builder: &mut EventBatchBuilder,
    body: &[u8],
) -> Result<Vec<RejectedLine>, EventError> {
    let mut scan = ArrayScan::default();
    let mut rejected = Vec::new();
    let used = scan.scan(body, builder, &mut rejected)?;
    if used < body.len() || scan.state != ArrayState::Closed {
        return Err(not_an_array(format!(
            "the body ends inside the array, after {} elements",
            scan.index
        )));
    }
    Ok(rejected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventLimits;

    fn event(shard: i32, seq: i64) -> String {
        format!(
            r#"{{"namespace":"acme","shard_id":{shard},"seq":{seq},"partition_key":"k","event_type":"t","ts":"2026-01-01T00:00:00Z","payload":{{"s":"a \"quoted\" ] }} [ {{ , string"}}}}"#
        )
    }

    fn whole(form: BodyForm, body: &[u8]) -> Result<(usize, Vec<(usize, String)>), EventError> {
        in_pieces(form, body, body.len().max(1))
    }

    fn in_pieces(
        form: BodyForm,
        body: &[u8],
        size: usize,
    ) -> Result<(usize, Vec<(usize, String)>), EventError> {
        let mut parser = BodyParser::new(form, EventBatchBuilder::new(EventLimits::default()));
        for piece in body.chunks(size) {
            parser.push(piece)?;
        }
        let (batch, rejected) = parser.finish()?;
        Ok((
            batch.len(),
            rejected
                .into_iter()
                .map(|r| (r.index, r.error.code.as_str().to_owned()))
                .collect(),
        ))
    }

    #[test]
    fn a_body_cut_anywhere_parses_as_the_whole_body() {
        let ndjson = format!(
            "{}\r\n\n{}\nnot json\n{}\n{}",
            event(1, 1),
            event(1, 2),
            event(1, 2),
            event(2, 1)
        );
        let array = format!(
            " [ {} ,{}, 7, \"text\", {{\"bad\" 1}}, {} , null,[1,[2]] ] \n",
            event(1, 1),
            event(1, 2),
            event(2, 1)
        );
        for (form, body) in [
            (BodyForm::Ndjson, ndjson.as_bytes()),
            (BodyForm::JsonArray, array.as_bytes()),
        ] {
            let expected = whole(form, body).expect("parses");
            for size in [1, 2, 3, 7, 64, 1000] {
                assert_eq!(
                    in_pieces(form, body, size).expect("parses"),
                    expected,
                    "{form:?} in pieces of {size}"
                );
            }
        }
        assert_eq!(
            whole(BodyForm::Ndjson, ndjson.as_bytes()).expect("parses"),
            (
                3,
                vec![
                    (4, "malformed_json".into()),
                    (5, "seq_not_increasing".into())
                ]
            )
        );
        let (valid, rejected) = whole(BodyForm::JsonArray, array.as_bytes()).expect("parses");
        assert_eq!(valid, 3);
        let indexes: Vec<usize> = rejected.iter().map(|r| r.0).collect();
        assert_eq!(
            indexes,
            vec![2, 3, 4, 6, 7],
            "scalars, a bad object, null, a list"
        );
    }

    #[test]
    fn what_is_not_an_array_is_refused_whole() {
        for body in [
            "{}",
            "[",
            "[{}",
            "[{},]",
            "[,{}]",
            "[{} {}]",
            "[{}] x",
            "[{\"a\": \"unterminated]",
        ] {
            for size in [1, 3, 100] {
                let result = in_pieces(BodyForm::JsonArray, body.as_bytes(), size);
                assert!(result.is_err(), "{body:?} in pieces of {size}: {result:?}");
            }
            let mut builder = EventBatchBuilder::new(EventLimits::default());
            assert!(
                push_json_array(&mut builder, body.as_bytes()).is_err(),
                "{body:?}"
            );
        }
        assert_eq!(
            whole(BodyForm::JsonArray, b" [ ] ").expect("empty"),
            (0, vec![])
        );
    }

    #[test]
    fn the_form_is_sniffed_from_the_first_byte() {
        assert_eq!(BodyForm::sniff(b"  \n[{}]"), Some(BodyForm::JsonArray));
        assert_eq!(BodyForm::sniff(b"{}\n{}"), Some(BodyForm::Ndjson));
        assert_eq!(BodyForm::sniff(b" \n "), None);
    }
}
