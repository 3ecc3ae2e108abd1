//! Partition-key helpers: one shape per consistency boundary, a
//! recommended parallelism for each, and a start-up check of configs.
//!
//! | boundary | key | example |
//! |---|---|---|
//! | one entity | `Type:id` | `Order:ord-123` |
//! | one customer | the customer id | `cust-123` |
//! | one saga / workflow | the correlation id | `corr-123` |
//! | global rollup | `global` | `global` |
//! | a DCB scope (retries) | `dcb:<scope>` | `dcb:tenant:T:entity:Order:ord-123` |

use serde::{Deserialize, Serialize};

/// The partition key of global rollups: everything serializes.
pub const GLOBAL_PARTITION_KEY: &str = "global";

/// Prefix of DCB (dynamic consistency boundary) scope keys.
pub const DCB_PREFIX: &str = "dcb:";

/// `Type:id`: events of one entity serialize, entities run in parallel.
pub fn entity_partition_key(entity_type: &str, id: &str) -> String {
    format!("{entity_type}:{id}")
}

/// The customer id: every event affecting the customer serializes.
pub fn customer_partition_key(customer_id: &str) -> String {
    customer_id.to_owned()
}

/// The correlation id: a saga's events keep causal order across contexts.
pub fn saga_partition_key(correlation_id: &str) -> String {
    correlation_id.to_owned()
}

/// `dcb:<scope>`: a DCB retry serializes with new work on the same scope.
pub fn dcb_partition_key(scope_key: &str) -> String {
    format!("{DCB_PREFIX}{scope_key}")
}

/// The kinds of partitioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionStrategy {
    /// Per entity (`Type:id`).
    Entity,
    /// Per customer.
    Customer,
    /// Per saga (correlation id).
    Saga,
    /// Everything in one partition.
    Global,
    /// Per DCB scope.
    Dcb,
}

impl PartitionStrategy {
    /// Workers worth running for this strategy: entity keys are many and
    /// independent; customer and saga keys are broader; a global key admits
    /// exactly one writer (more would only conflict).
    pub fn recommended_parallelism(self) -> usize {
        match self {
            Self::Entity => 10,
            Self::Customer | Self::Saga | Self::Dcb => 5,
            Self::Global => 1,
        }
    }

    /// Whether `key` has this strategy's shape.
    pub fn accepts(self, key: &str) -> bool {
        match self {
            Self::Entity => key
                .split_once(':')
                .is_some_and(|(t, id)| !t.is_empty() && !id.is_empty()),
            Self::Customer | Self::Saga => !key.is_empty() && !key.contains(char::is_whitespace),
            Self::Global => key == GLOBAL_PARTITION_KEY,
            Self::Dcb => key.strip_prefix(DCB_PREFIX).is_some_and(|s| !s.is_empty()),
        }
    }
}

/// One projection or command config, as far as partitioning is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionKeyConfig {
    /// Name of the config (projection or command), for the report.
    pub name: String,
    /// Its partitioning, if it declares one.
    pub strategy: Option<PartitionStrategy>,
    /// Example keys it produces (from fixtures or a dry run), checked
    /// against the strategy's shape.
    #[serde(default)]
    pub sample_keys: Vec<String>,
}

/// Codes of partition-key problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PartitionKeyProblemCode {
    /// The config declares no partition key.
    MissingPartitionKey,
    /// A key does not have its strategy's shape.
    InvalidPartitionKeyShape,
    /// A key (or one of its parts) is empty.
    EmptyPartitionValue,
}

/// One problem found by [`validate_partition_keys`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionKeyProblem {
    /// Stable code.
    pub code: PartitionKeyProblemCode,
    /// The config it concerns.
    pub config: String,
    /// Explanation.
    pub message: String,
}

/// Checks every config at start-up and returns every problem (not just the
/// first), so one deploy fixes them all.
pub fn validate_partition_keys(configs: &[PartitionKeyConfig]) -> Vec<PartitionKeyProblem> {
    use PartitionKeyProblemCode as C;
    let mut problems = Vec::new();
    for config in configs {
        let problem = |code, message: String| PartitionKeyProblem {
            code,
            config: config.name.clone(),
            message,
        };
        let Some(strategy) = config.strategy else {
            problems.push(problem(
                C::MissingPartitionKey,
                "no partition key: events would be processed without per-key ordering".into(),
            ));
            continue;
        };
        for key in &config.sample_keys {
            let empty_part = key.is_empty()
                || (strategy == PartitionStrategy::Entity
                    && key
                        .split_once(':')
                        .is_some_and(|(t, id)| t.is_empty() || id.is_empty()));
            if empty_part {
                problems.push(problem(
                    C::EmptyPartitionValue,
                    format!("key `{key}` has an empty value"),
                ));
            } else if !strategy.accepts(key) {
                problems.push(problem(
                    C::InvalidPartitionKeyShape,
                    format!("key `{key}` does not have the {strategy:?} shape"),
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_produce_the_documented_shapes() {
        assert_eq!(entity_partition_key("Order", "ord-123"), "Order:ord-123");
        assert_eq!(customer_partition_key("cust-123"), "cust-123");
        assert_eq!(saga_partition_key("corr-123"), "corr-123");
        assert_eq!(
            dcb_partition_key("tenant:T:entity:Order:ord-123"),
            "dcb:tenant:T:entity:Order:ord-123"
        );
        assert_eq!(PartitionStrategy::Entity.recommended_parallelism(), 10);
        assert_eq!(PartitionStrategy::Customer.recommended_parallelism(), 5);
        assert_eq!(PartitionStrategy::Saga.recommended_parallelism(), 5);
        assert_eq!(PartitionStrategy::Global.recommended_parallelism(), 1);
    }

    #[test]
    fn validation_reports_every_problem_with_its_code() {
        let config = |name: &str, strategy, keys: &[&str]| PartitionKeyConfig {
            name: name.into(),
            strategy,
            sample_keys: keys.iter().map(|k| k.to_string()).collect(),
        };
        let problems = validate_partition_keys(&[
            config(
                "orderSummary",
                Some(PartitionStrategy::Entity),
                &["Order:o-1"],
            ),
            config("noKey", None, &[]),
            config(
                "badEntity",
                Some(PartitionStrategy::Entity),
                &["o-1", "Order:"],
            ),
            config("rollup", Some(PartitionStrategy::Global), &["daily"]),
            config("retry", Some(PartitionStrategy::Dcb), &["dcb:scope", ""]),
        ]);
        let got: Vec<(&str, PartitionKeyProblemCode)> = problems
            .iter()
            .map(|p| (p.config.as_str(), p.code))
            .collect();
        use PartitionKeyProblemCode as C;
        assert_eq!(
            got,
            vec![
                ("noKey", C::MissingPartitionKey),
                ("badEntity", C::InvalidPartitionKeyShape),
                ("badEntity", C::EmptyPartitionValue),
                ("rollup", C::InvalidPartitionKeyShape),
                ("retry", C::EmptyPartitionValue),
            ]
        );
        let codes = serde_json::to_value(C::MissingPartitionKey).expect("json");
        assert_eq!(codes, "MISSING_PARTITION_KEY");
    }
}
