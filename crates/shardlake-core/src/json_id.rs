//! 64-bit ids (snapshot ids) in JSON as strings.
//!
//! Iceberg snapshot ids use all 63 bits; JSON numbers past 2^53 are rounded
//! by JavaScript and jq (`5158387385636600483` becomes
//! `5158387385636600000`), and the rounded id names no snapshot. Every JSON
//! answer therefore writes ids as decimal strings, and every JSON input
//! takes a string or a number. Use with `#[serde(with = "...")]`:
//! [`self`] for `i64`, [`option`] for `Option<i64>`, [`vec`] for `Vec<i64>`.

use serde::de::{self, Deserializer, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// Writes `id` as a string.
pub fn serialize<S: Serializer>(id: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(id)
}

/// Reads a string or a number.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    deserializer.deserialize_any(IdVisitor)
}

struct IdVisitor;

impl Visitor<'_> for IdVisitor {
    type Value = i64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a 64-bit id, as a string or an integer")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("id {v} is out of range")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        Err(E::custom(format!(
            "id {v} is not an integer (ids past 2^53 must be sent as strings)"
        )))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        v.trim()
            .parse()
            .map_err(|_| E::custom(format!("`{v}` is not a 64-bit id")))
    }
}

/// A transparent wrapper that (de)serializes through the functions above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Id(i64);

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize(deserializer).map(Id)
    }
}

/// `Option<i64>` ids: `null` or a string.
pub mod option {
    use super::*;

    /// Writes `null` or the id as a string.
    pub fn serialize<S: Serializer>(id: &Option<i64>, serializer: S) -> Result<S::Ok, S::Error> {
        id.map(Id).serialize(serializer)
    }

    /// Reads `null`, a string or a number.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<i64>, D::Error> {
        Ok(Option::<Id>::deserialize(deserializer)?.map(|id| id.0))
    }
}

/// `Vec<i64>` ids: an array of strings.
pub mod vec {
    use super::*;

    /// Writes each id as a string.
    pub fn serialize<S: Serializer>(ids: &[i64], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(ids.len()))?;
        for id in ids {
            seq.serialize_element(&Id(*id))?;
        }
        seq.end()
    }

    /// Reads an array of strings or numbers.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<i64>, D::Error> {
        Ok(Vec::<Id>::deserialize(deserializer)?
            .into_iter()
            .map(|id| id.0)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Ids {
        #[serde(with = "super")]
        one: i64,
        #[serde(with = "super::option", default)]
        maybe: Option<i64>,
        #[serde(with = "super::vec", default)]
        many: Vec<i64>,
    }

    #[test]
    fn ids_past_two_to_the_53_survive_json_as_strings() {
        let ids = Ids {
            one: 5_158_387_385_636_600_483,
            maybe: Some(-1),
            many: vec![i64::MAX, 7],
        };
        let text = serde_json::to_string(&ids).expect("serializes");
        assert_eq!(
            text,
            r#"{"one":"5158387385636600483","maybe":"-1","many":["9223372036854775807","7"]}"#
        );
        assert_eq!(serde_json::from_str::<Ids>(&text).expect("reads back"), ids);
        // Numbers are accepted too, and absent options.
        let numbers: Ids = serde_json::from_str(r#"{"one":42,"many":[1,"2"]}"#).expect("numbers");
        assert_eq!(numbers.one, 42);
        assert_eq!((numbers.maybe, numbers.many), (None, vec![1, 2]));
        assert!(serde_json::from_str::<Ids>(r#"{"one":1.5}"#).is_err());
        assert!(serde_json::from_str::<Ids>(r#"{"one":"x"}"#).is_err());
    }
}
