//! The event: its owned Rust form ([`Event`]), its borrowed wire form
//! ([`RawEvent`]) and the validation between them ([`ValidEvent`]).
//!
//! Every way into the lake (NDJSON files, HTTP bodies, the Rust API) goes
//! through [`RawEvent::validate`], so an event is judged by one set of rules.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// Limits applied when validating an event (keys of the server's
/// `[emitter]` section too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventLimits {
    /// Largest accepted payload, in bytes of JSON text.
    pub max_payload_bytes: usize,
    /// Largest accepted string field other than the payload, in bytes.
    pub max_field_bytes: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1024 * 1024,
            max_field_bytes: 1024,
        }
    }
}

/// Largest accepted namespace, in bytes. Namespaces become directory names.
pub const MAX_NAMESPACE_BYTES: usize = 128;

/// Why one event was refused. The code is stable and machine-readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventErrorCode {
    /// The line or element is not valid JSON, or a field has the wrong JSON type.
    MalformedJson,
    /// A required field is absent or null.
    MissingField,
    /// A required string field is empty.
    EmptyField,
    /// The namespace has characters outside `[A-Za-z0-9_.-]` or is too long.
    InvalidNamespace,
    /// `shard_id` is negative or does not fit in 32 bits.
    InvalidShardId,
    /// `seq` is zero or negative.
    InvalidSeq,
    /// `seq` does not increase within one request for the same shard.
    SeqNotIncreasing,
    /// `ts` is not an RFC 3339 timestamp.
    InvalidTimestamp,
    /// `payload` is not a JSON object (or a string holding one) or null.
    InvalidPayload,
    /// `payload` exceeds [`EventLimits::max_payload_bytes`].
    PayloadTooLarge,
    /// A string field exceeds [`EventLimits::max_field_bytes`].
    FieldTooLong,
}

impl EventErrorCode {
    /// The stable snake_case code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed_json",
            Self::MissingField => "missing_field",
            Self::EmptyField => "empty_field",
            Self::InvalidNamespace => "invalid_namespace",
            Self::InvalidShardId => "invalid_shard_id",
            Self::InvalidSeq => "invalid_seq",
            Self::SeqNotIncreasing => "seq_not_increasing",
            Self::InvalidTimestamp => "invalid_timestamp",
            Self::InvalidPayload => "invalid_payload",
            Self::PayloadTooLarge => "payload_too_large",
            Self::FieldTooLong => "field_too_long",
        }
    }
}

/// A per-event validation error: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventError {
    /// Machine-readable reason.
    pub code: EventErrorCode,
    /// Human-readable explanation naming the field and the value's problem.
    pub message: String,
}

impl EventError {
    /// A new error.
    pub fn new(code: EventErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for EventError {}

/// A JSON string that borrows from the input when it has no escapes.
///
/// serde's `Cow<str>` always allocates inside an `Option`; this wrapper keeps
/// NDJSON parsing free of per-field allocations on the common path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonStr<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for JsonStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(V)
    }
}

impl std::ops::Deref for JsonStr<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// An event as it arrives on the wire (JSON), before validation.
///
/// Every field is optional here so that a missing field gets its own clear
/// error instead of a serde message. `position` is accepted (replay output can
/// be re-ingested) but ignored: only the committer assigns positions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvent<'a> {
    /// Tenant.
    #[serde(borrow, default)]
    pub namespace: Option<JsonStr<'a>>,
    /// Emitting shard.
    #[serde(default)]
    pub shard_id: Option<i64>,
    /// Per-shard sequence number.
    #[serde(default)]
    pub seq: Option<i64>,
    /// Routing key; defaults to `entity_type:entity_id` when both are given.
    #[serde(borrow, default)]
    pub partition_key: Option<JsonStr<'a>>,
    /// Entity type.
    #[serde(borrow, default)]
    pub entity_type: Option<JsonStr<'a>>,
    /// Entity id.
    #[serde(borrow, default)]
    pub entity_id: Option<JsonStr<'a>>,
    /// Event type.
    #[serde(borrow, default)]
    pub event_type: Option<JsonStr<'a>>,
    /// Per-entity version.
    #[serde(default)]
    pub version: Option<i64>,
    /// RFC 3339 event time.
    #[serde(borrow, default)]
    pub ts: Option<JsonStr<'a>>,
    /// Idempotency key; defaults to `namespace:shard_id:seq`.
    #[serde(borrow, default)]
    pub idempotency_key: Option<JsonStr<'a>>,
    /// JSON object, a string holding one, or null.
    #[serde(borrow, default)]
    pub payload: Option<&'a RawValue>,
    /// Ignored on input.
    #[serde(default)]
    pub position: Option<i64>,
}

/// An event that passed validation, still borrowing from its source.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent<'a> {
    /// Tenant.
    pub namespace: &'a str,
    /// Emitting shard.
    pub shard_id: i32,
    /// Per-shard sequence number (> 0).
    pub seq: i64,
    /// Routing key.
    pub partition_key: Cow<'a, str>,
    /// Entity type.
    pub entity_type: Option<&'a str>,
    /// Entity id.
    pub entity_id: Option<&'a str>,
    /// Event type.
    pub event_type: &'a str,
    /// Per-entity version.
    pub version: Option<i64>,
    /// Event time in microseconds since the epoch, UTC.
    pub ts_micros: i64,
    /// Explicit idempotency key; `None` means the default `namespace:shard_id:seq`.
    pub idempotency_key: Option<&'a str>,
    /// Payload as JSON object text.
    pub payload: Option<Cow<'a, str>>,
}

impl ValidEvent<'_> {
    /// Bytes this event occupies in memory once in Arrow arrays, roughly.
    /// Used for batching by size and for backpressure, not for billing.
    pub fn approx_bytes(&self) -> usize {
        const FIXED: usize = 4 + 8 + 8 + 8 + 8 + 11 * 4;
        FIXED
            + self.namespace.len() * 2
            + self.partition_key.len()
            + self.entity_type.map_or(0, str::len)
            + self.entity_id.map_or(0, str::len)
            + self.event_type.len()
            + self
                .idempotency_key
                .map_or(self.namespace.len() + 24, str::len)
            + self.payload.as_deref().map_or(0, str::len)
    }
}

fn required<'s>(
    value: Option<&'s str>,
    field: &'static str,
    limits: &EventLimits,
) -> Result<&'s str, EventError> {
    match value {
        None => Err(EventError::new(
            EventErrorCode::MissingField,
            format!("`{field}` is required"),
        )),
        Some("") => Err(EventError::new(
            EventErrorCode::EmptyField,
            format!("`{field}` must not be empty"),
        )),
        Some(s) => bounded(s, field, limits),
    }
}

fn optional<'s>(
    value: Option<&'s str>,
    field: &'static str,
    limits: &EventLimits,
) -> Result<Option<&'s str>, EventError> {
    value.map(|s| bounded(s, field, limits)).transpose()
}

fn bounded<'s>(
    s: &'s str,
    field: &'static str,
    limits: &EventLimits,
) -> Result<&'s str, EventError> {
    if s.len() > limits.max_field_bytes {
        return Err(EventError::new(
            EventErrorCode::FieldTooLong,
            format!(
                "`{field}` is {} bytes, more than the limit of {}",
                s.len(),
                limits.max_field_bytes
            ),
        ));
    }
    Ok(s)
}

/// Checks a namespace: 1 to [`MAX_NAMESPACE_BYTES`] bytes of `[A-Za-z0-9_.-]`,
/// not starting with a dot. Namespaces become partition directory names, so
/// anything that could escape a path or need quoting is refused.
pub fn validate_namespace(ns: &str) -> Result<(), EventError> {
    if ns.is_empty() {
        return Err(EventError::new(
            EventErrorCode::EmptyField,
            "`namespace` must not be empty",
        ));
    }
    let ok_chars = ns
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok_chars || ns.len() > MAX_NAMESPACE_BYTES || ns.starts_with('.') {
        return Err(EventError::new(
            EventErrorCode::InvalidNamespace,
            format!(
                "`namespace` {ns:?} must be 1 to {MAX_NAMESPACE_BYTES} characters of \
                 [A-Za-z0-9_.-] and must not start with '.'"
            ),
        ));
    }
    Ok(())
}

/// Parses an RFC 3339 timestamp into microseconds since the epoch.
pub fn parse_ts_micros(ts: &str) -> Result<i64, EventError> {
    DateTime::parse_from_rfc3339(ts)
        .map(|t| t.timestamp_micros())
        .map_err(|e| {
            EventError::new(
                EventErrorCode::InvalidTimestamp,
                format!("`ts` {ts:?} is not an RFC 3339 timestamp: {e}"),
            )
        })
}

fn validate_payload<'a>(
    raw: &'a RawValue,
    limits: &EventLimits,
) -> Result<Option<Cow<'a, str>>, EventError> {
    let text = raw.get();
    if text.len() > limits.max_payload_bytes {
        return Err(EventError::new(
            EventErrorCode::PayloadTooLarge,
            format!(
                "`payload` is {} bytes, more than the limit of {}",
                text.len(),
                limits.max_payload_bytes
            ),
        ));
    }
    match text.trim_start().as_bytes().first() {
        Some(b'{') => Ok(Some(Cow::Borrowed(text))),
        Some(b'n') => Ok(None),
        // A payload that a producer JSON-encoded twice: accept it if the string
        // holds a JSON object, so the stored text is always an object.
        Some(b'"') => {
            let inner: String = serde_json::from_str(text).map_err(|e| {
                EventError::new(EventErrorCode::InvalidPayload, format!("`payload`: {e}"))
            })?;
            let parsed: &RawValue = serde_json::from_str(&inner).map_err(|e| {
                EventError::new(
                    EventErrorCode::InvalidPayload,
                    format!("`payload` is a string that is not JSON: {e}"),
                )
            })?;
            if !parsed.get().trim_start().starts_with('{') {
                return Err(EventError::new(
                    EventErrorCode::InvalidPayload,
                    "`payload` must be a JSON object or null",
                ));
            }
            Ok(Some(Cow::Owned(inner)))
        }
        _ => Err(EventError::new(
            EventErrorCode::InvalidPayload,
            "`payload` must be a JSON object or null",
        )),
    }
}

impl<'a> RawEvent<'a> {
    /// Parses one JSON document (an NDJSON line or an array element).
    pub fn from_json(bytes: &'a [u8]) -> Result<Self, EventError> {
        serde_json::from_slice(bytes)
            .map_err(|e| EventError::new(EventErrorCode::MalformedJson, e.to_string()))
    }

    /// Applies every rule of the event contract; the first broken rule wins.
    pub fn validate(&'a self, limits: &EventLimits) -> Result<ValidEvent<'a>, EventError> {
        let s = |v: &'a Option<JsonStr<'a>>| v.as_ref().map(|s| &**s);
        let mut valid = Fields {
            namespace: s(&self.namespace),
            shard_id: self.shard_id,
            seq: self.seq,
            partition_key: s(&self.partition_key),
            entity_type: s(&self.entity_type),
            entity_id: s(&self.entity_id),
            event_type: s(&self.event_type),
            version: self.version,
            idempotency_key: s(&self.idempotency_key),
        }
        .validate(limits)?;
        let ts = required(s(&self.ts), "ts", limits)?;
        valid.ts_micros = parse_ts_micros(ts)?;
        valid.payload = match self.payload {
            None => None,
            Some(raw) => validate_payload(raw, limits)?,
        };
        Ok(valid)
    }
}

/// The string and integer fields of an event, typed but not yet checked.
/// Shared by the wire form and the owned form so both obey one set of rules.
struct Fields<'a> {
    namespace: Option<&'a str>,
    shard_id: Option<i64>,
    seq: Option<i64>,
    partition_key: Option<&'a str>,
    entity_type: Option<&'a str>,
    entity_id: Option<&'a str>,
    event_type: Option<&'a str>,
    version: Option<i64>,
    idempotency_key: Option<&'a str>,
}

impl<'a> Fields<'a> {
    /// Checks everything but `ts` and `payload`, which the caller fills in.
    fn validate(self, limits: &EventLimits) -> Result<ValidEvent<'a>, EventError> {
        let namespace = required(self.namespace, "namespace", limits)?;
        validate_namespace(namespace)?;
        let shard_id = match self.shard_id {
            None => {
                return Err(EventError::new(
                    EventErrorCode::MissingField,
                    "`shard_id` is required",
                ));
            }
            Some(id) => i32::try_from(id)
                .ok()
                .filter(|id| *id >= 0)
                .ok_or_else(|| {
                    EventError::new(
                        EventErrorCode::InvalidShardId,
                        format!("`shard_id` {id} must be between 0 and {}", i32::MAX),
                    )
                })?,
        };
        let seq = match self.seq {
            None => {
                return Err(EventError::new(
                    EventErrorCode::MissingField,
                    "`seq` is required",
                ));
            }
            Some(seq) if seq <= 0 => {
                return Err(EventError::new(
                    EventErrorCode::InvalidSeq,
                    format!("`seq` {seq} must be greater than 0"),
                ));
            }
            Some(seq) => seq,
        };
        let entity_type = optional(self.entity_type, "entity_type", limits)?;
        let entity_id = optional(self.entity_id, "entity_id", limits)?;
        let partition_key = match (self.partition_key, entity_type, entity_id) {
            (Some(pk), _, _) => Cow::Borrowed(required(Some(pk), "partition_key", limits)?),
            (None, Some(t), Some(id)) if !t.is_empty() && !id.is_empty() => {
                Cow::Owned(format!("{t}:{id}"))
            }
            (None, _, _) => {
                return Err(EventError::new(
                    EventErrorCode::MissingField,
                    "`partition_key` is required (or both `entity_type` and `entity_id`)",
                ));
            }
        };
        let event_type = required(self.event_type, "event_type", limits)?;
        let idempotency_key = match self.idempotency_key {
            None => None,
            Some(k) => Some(required(Some(k), "idempotency_key", limits)?),
        };
        Ok(ValidEvent {
            namespace,
            shard_id,
            seq,
            partition_key,
            entity_type,
            entity_id,
            event_type,
            version: self.version,
            ts_micros: 0,
            idempotency_key,
            payload: None,
        })
    }
}

/// An event owned by Rust code: what a shard builds and what replay returns.
///
/// Its JSON form is the wire form (README, "The event"): `ts` as RFC 3339, `payload` as
/// a JSON object, `position` only when the event came from the lake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Tenant.
    pub namespace: String,
    /// Emitting shard.
    pub shard_id: i32,
    /// Per-shard sequence number, strictly increasing in emission order.
    pub seq: i64,
    /// Routing key.
    pub partition_key: String,
    /// Entity type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_type: Option<String>,
    /// Entity id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    /// Event type, e.g. `thing.updated`.
    pub event_type: String,
    /// Per-entity version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Event time.
    #[serde(with = "rfc3339_micros")]
    pub ts: DateTime<Utc>,
    /// Idempotency key; `None` means `namespace:shard_id:seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// JSON object text, or `None`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_payload",
        deserialize_with = "deserialize_payload"
    )]
    pub payload: Option<String>,
    /// Commit position, present on events read back from the lake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
}

impl Event {
    /// A new event with the required fields; the rest start empty.
    pub fn new(
        namespace: impl Into<String>,
        shard_id: i32,
        seq: i64,
        partition_key: impl Into<String>,
        event_type: impl Into<String>,
        ts: DateTime<Utc>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            shard_id,
            seq,
            partition_key: partition_key.into(),
            entity_type: None,
            entity_id: None,
            event_type: event_type.into(),
            version: None,
            ts,
            idempotency_key: None,
            payload: None,
            position: None,
        }
    }

    /// Sets the entity this event is about.
    pub fn with_entity(
        mut self,
        entity_type: impl Into<String>,
        entity_id: impl Into<String>,
        version: i64,
    ) -> Self {
        self.entity_type = Some(entity_type.into());
        self.entity_id = Some(entity_id.into());
        self.version = Some(version);
        self
    }

    /// Sets the payload from a JSON value.
    pub fn with_payload(mut self, payload: &serde_json::Value) -> Self {
        self.payload = Some(payload.to_string());
        self
    }

    /// The idempotency key, explicit or default.
    pub fn effective_idempotency_key(&self) -> String {
        self.idempotency_key
            .clone()
            .unwrap_or_else(|| default_idempotency_key(&self.namespace, self.shard_id, self.seq))
    }

    /// Validates this event under `limits`.
    pub fn validate(&self, limits: &EventLimits) -> Result<ValidEvent<'_>, EventError> {
        let mut valid = Fields {
            namespace: Some(&self.namespace),
            shard_id: Some(i64::from(self.shard_id)),
            seq: Some(self.seq),
            partition_key: Some(&self.partition_key),
            entity_type: self.entity_type.as_deref(),
            entity_id: self.entity_id.as_deref(),
            event_type: Some(&self.event_type),
            version: self.version,
            idempotency_key: self.idempotency_key.as_deref(),
        }
        .validate(limits)?;
        valid.ts_micros = self.ts.timestamp_micros();
        valid.payload = match &self.payload {
            None => None,
            Some(text) => {
                let raw: &RawValue = serde_json::from_str(text).map_err(|e| {
                    EventError::new(
                        EventErrorCode::InvalidPayload,
                        format!("`payload` is not JSON: {e}"),
                    )
                })?;
                validate_payload(raw, limits)?
            }
        };
        Ok(valid)
    }
}

/// The default idempotency key of an event: `namespace:shard_id:seq`.
pub fn default_idempotency_key(namespace: &str, shard_id: i32, seq: i64) -> String {
    format!("{namespace}:{shard_id}:{seq}")
}

fn serialize_payload<S: Serializer>(payload: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match payload {
        None => s.serialize_none(),
        Some(text) => {
            let raw: &RawValue = serde_json::from_str(text).map_err(serde::ser::Error::custom)?;
            raw.serialize(s)
        }
    }
}

fn deserialize_payload<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let raw: Option<Box<RawValue>> = Option::deserialize(d)?;
    Ok(raw.map(|r| r.get().to_owned()))
}

/// `ts` as an RFC 3339 string with microsecond precision and a `Z` suffix.
pub mod rfc3339_micros {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes `ts` as RFC 3339.
    pub fn serialize<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&ts.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    /// Parses an RFC 3339 string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// Formats microseconds since the epoch as RFC 3339 (UTC, `Z`).
pub fn format_ts_micros(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| micros.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(json: &str) -> Result<(), EventError> {
        let raw = RawEvent::from_json(json.as_bytes())?;
        raw.validate(&EventLimits::default()).map(|_| ())
    }

    const GOOD: &str = r#"{"namespace":"acme","shard_id":3,"seq":7,"partition_key":"Customer:c1","entity_type":"Customer","entity_id":"c1","event_type":"thing.created","version":1,"ts":"2026-01-02T03:04:05.123456Z","payload":{"name":"Ada"}}"#;

    #[test]
    fn good_event_validates_and_borrows() {
        let raw = RawEvent::from_json(GOOD.as_bytes()).expect("parses");
        let v = raw.validate(&EventLimits::default()).expect("valid");
        assert_eq!(v.namespace, "acme");
        assert_eq!(v.shard_id, 3);
        assert_eq!(v.seq, 7);
        assert!(matches!(v.partition_key, Cow::Borrowed("Customer:c1")));
        assert_eq!(v.payload.as_deref(), Some(r#"{"name":"Ada"}"#));
        assert_eq!(v.ts_micros, 1_767_323_045_123_456);
    }

    #[test]
    fn each_rule_has_its_own_code() {
        let cases = [
            (
                r#"{"shard_id":1,"seq":1,"partition_key":"k","event_type":"e","ts":"2026-01-01T00:00:00Z"}"#,
                EventErrorCode::MissingField,
            ),
            (
                r#"{"namespace":"","shard_id":1,"seq":1,"partition_key":"k","event_type":"e","ts":"2026-01-01T00:00:00Z"}"#,
                EventErrorCode::EmptyField,
            ),
            (
                r#"{"namespace":"a/b","shard_id":1,"seq":1,"partition_key":"k","event_type":"e","ts":"2026-01-01T00:00:00Z"}"#,
                EventErrorCode::InvalidNamespace,
            ),
            (
                r#"{"namespace":"a","shard_id":-1,"seq":1,"partition_key":"k","event_type":"e","ts":"2026-01-01T00:00:00Z"}"#,
                EventErrorCode::InvalidShardId,
            ),
            (
                r#"{"namespace":"a","shard_id":1,"seq":0,"partition_key":"k","event_type":"e","ts":"2026-01-01T00:00:00Z"}"#,
                EventErrorCode::InvalidSeq,
            ),
            (
                r#"{"namespace":"a","shard_id":1,"seq":1,"partition_key":"k","event_type":"e","ts":"yesterday"}"#,
                EventErrorCode::InvalidTimestamp,
            ),
            (
                r#"{"namespace":"a","shard_id":1,"seq":1,"partition_key":"k","event_type":"e","ts":"2026-01-01T00:00:00Z","payload":"not json"}"#,
                EventErrorCode::InvalidPayload,
            ),
            (
                r#"{"namespace":"a","shard_id":1,"seq":1,"partition_key":"k","event_type":"e","ts":"2026-01-01T00:00:00Z","payload":[1]}"#,
                EventErrorCode::InvalidPayload,
            ),
            (
                r#"{"namespace":"a","shard_id":1,"seq":1,"partition_key":"k","event_type":"e","ts":"2026-01-01T00:00:00Z","bogus":1}"#,
                EventErrorCode::MalformedJson,
            ),
            (
                r#"{"namespace":"a","shard_id":1,"seq":"x"}"#,
                EventErrorCode::MalformedJson,
            ),
            ("not json at all", EventErrorCode::MalformedJson),
            (
                r#"{"namespace":"a","shard_id":1,"seq":1,"event_type":"e","ts":"2026-01-01T00:00:00Z"}"#,
                EventErrorCode::MissingField,
            ),
        ];
        for (json, code) in cases {
            let err = line(json).expect_err(json);
            assert_eq!(err.code, code, "{json}: {err}");
        }
    }

    #[test]
    fn oversize_payload_is_refused() {
        let limits = EventLimits {
            max_payload_bytes: 16,
            ..EventLimits::default()
        };
        let json = r#"{"namespace":"a","shard_id":1,"seq":1,"partition_key":"k","event_type":"e","ts":"2026-01-01T00:00:00Z","payload":{"x":"0123456789abcdef"}}"#;
        let raw = RawEvent::from_json(json.as_bytes()).expect("parses");
        let err = raw.validate(&limits).expect_err("too large");
        assert_eq!(err.code, EventErrorCode::PayloadTooLarge);
    }

    #[test]
    fn double_encoded_payload_is_unwrapped() {
        let json = r#"{"namespace":"a","shard_id":1,"seq":1,"partition_key":"k","event_type":"e","ts":"2026-01-01T00:00:00Z","payload":"{\"x\":1}"}"#;
        let raw = RawEvent::from_json(json.as_bytes()).expect("parses");
        let v = raw.validate(&EventLimits::default()).expect("valid");
        assert_eq!(v.payload.as_deref(), Some(r#"{"x":1}"#));
    }

    #[test]
    fn partition_key_defaults_to_entity() {
        let json = r#"{"namespace":"a","shard_id":1,"seq":1,"entity_type":"Order","entity_id":"o-1","event_type":"e","ts":"2026-01-01T00:00:00Z"}"#;
        let raw = RawEvent::from_json(json.as_bytes()).expect("parses");
        let v = raw.validate(&EventLimits::default()).expect("valid");
        assert_eq!(v.partition_key, "Order:o-1");
    }

    #[test]
    fn owned_event_round_trips_through_json() {
        let ts = DateTime::parse_from_rfc3339("2026-03-04T05:06:07.000008Z")
            .expect("ts")
            .with_timezone(&Utc);
        let e = Event::new("acme", 2, 9, "Order:o-1", "thing.updated", ts)
            .with_entity("Order", "o-1", 4)
            .with_payload(&serde_json::json!({"total": 12.5}));
        let text = serde_json::to_string(&e).expect("serializes");
        assert!(text.contains(r#""payload":{"total":12.5}"#), "{text}");
        assert!(
            text.contains(r#""ts":"2026-03-04T05:06:07.000008Z""#),
            "{text}"
        );
        let back: Event = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, e);
        // The owned form and the wire form agree on validity.
        let v = e.validate(&EventLimits::default()).expect("valid");
        assert_eq!(v.ts_micros, ts.timestamp_micros());
        let bad = Event::new("", 2, 9, "k", "t", ts);
        assert_eq!(
            bad.validate(&EventLimits::default())
                .expect_err("empty ns")
                .code,
            EventErrorCode::EmptyField
        );
    }
}
