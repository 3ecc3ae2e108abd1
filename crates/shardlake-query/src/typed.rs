//! The typed calls (`queryThings`, `queryEvents`, `aggregate`), built
//! as DataFusion expressions: user values only ever become literals, never
//! SQL text.
//!
//! A field is a column of the table, or `payload.<path>` for a field inside
//! the JSON payload (`payload.address.city`), read with
//! datafusion-functions-json.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::functions_aggregate::count::count_all;
use datafusion::functions_aggregate::expr_fn::{avg, count, max, min, sum};
use datafusion::logical_expr::{Expr, ScalarUDF, SortExpr, col, ident, lit};
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `=`
    Eq,
    /// `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Lte,
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// One of a list (`value` is an array).
    In,
    /// None of a list (`value` is an array).
    NotIn,
    /// SQL `LIKE` pattern.
    Like,
    /// Is null (`value` ignored).
    IsNull,
    /// Is not null (`value` ignored).
    IsNotNull,
}

/// `field op value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// A column, or `payload.<path>`.
    pub field: String,
    /// The comparison.
    pub op: Op,
    /// The value compared with (JSON: string, number, boolean, array).
    #[serde(default)]
    pub value: Value,
}

impl Condition {
    /// `field op value`.
    pub fn new(field: impl Into<String>, op: Op, value: impl Into<Value>) -> Self {
        Self {
            field: field.into(),
            op,
            value: value.into(),
        }
    }
}

/// A sort key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderBy {
    /// A column, an aggregate's alias, or `payload.<path>`.
    pub field: String,
    /// Descending order.
    #[serde(default)]
    pub descending: bool,
}

impl OrderBy {
    /// Ascending by `field`.
    pub fn asc(field: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            descending: false,
        }
    }

    /// Descending by `field`.
    pub fn desc(field: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            descending: true,
        }
    }
}

/// Current entities, `queryThings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThingsQuery {
    /// Only entities of this type.
    #[serde(default, rename = "type")]
    pub entity_type: Option<String>,
    /// Only this namespace (prunes every other partition).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Further conditions, all of which must hold.
    #[serde(default, rename = "where")]
    pub conditions: Vec<Condition>,
    /// Sort order.
    #[serde(default)]
    pub order_by: Vec<OrderBy>,
    /// At most this many rows.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Skip this many rows first.
    #[serde(default)]
    pub offset: Option<usize>,
}

/// Events, `queryEvents`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only this namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Only this event type.
    #[serde(default)]
    pub event_type: Option<String>,
    /// Only this entity type.
    #[serde(default)]
    pub entity_type: Option<String>,
    /// Only this entity.
    #[serde(default)]
    pub entity_id: Option<String>,
    /// Only this partition key.
    #[serde(default)]
    pub partition_key: Option<String>,
    /// Only this shard.
    #[serde(default)]
    pub shard_id: Option<i32>,
    /// Events at or after this time.
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    /// Events before this time.
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    /// Further conditions.
    #[serde(default, rename = "where")]
    pub conditions: Vec<Condition>,
    /// Sort order (default: position).
    #[serde(default)]
    pub order_by: Vec<OrderBy>,
    /// At most this many rows.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Skip this many rows first.
    #[serde(default)]
    pub offset: Option<usize>,
}

/// What to replay: the events of some partition keys, a namespace or a
/// shard, in `position` order (causal per key, also across migrations).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayQuery {
    /// Only this namespace (prunes whole partitions).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Only these partition keys (prunes files and row groups by their
    /// statistics: the files are sorted by key). Empty: every key.
    #[serde(default)]
    pub partition_keys: Vec<String>,
    /// Only events emitted by this shard.
    #[serde(default)]
    pub shard_id: Option<i32>,
    /// Resume after this position (the cursor: the last position seen).
    #[serde(default)]
    pub after_position: Option<i64>,
    /// Only events with a larger `seq` (meaningful with `shard_id`: a
    /// shard's own cursor).
    #[serde(default)]
    pub after_seq: Option<i64>,
    /// Read this snapshot instead of the current one.
    #[serde(default)]
    #[serde(with = "shardlake_core::json_id::option")]
    pub snapshot_id: Option<i64>,
    /// Only events committed after this snapshot (incremental catch-up
    /// between two snapshots, with `snapshot_id` as the upper end).
    #[serde(default)]
    #[serde(with = "shardlake_core::json_id::option")]
    pub since_snapshot: Option<i64>,
    /// Only keys of partition `index` of `count` (`fnv1a_32(key) % count`).
    #[serde(default)]
    pub partition: Option<PartitionOf>,
    /// At most this many events (the first ones in position order).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Partition `index` of `count` partitions of the key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOf {
    /// 0-based partition.
    pub index: u32,
    /// Number of partitions.
    pub count: u32,
}

/// Aggregate functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggregateFunction {
    /// Rows, or non-null values of a field.
    Count,
    /// Sum.
    Sum,
    /// Mean.
    Avg,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
}

/// One aggregate output column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregation {
    /// The function.
    pub function: AggregateFunction,
    /// Its argument; `None` only for `count` (rows).
    #[serde(default)]
    pub field: Option<String>,
    /// The output column's name.
    pub alias: String,
}

/// The table an aggregate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggregateSource {
    /// The event log.
    #[default]
    Events,
    /// Current entities.
    Things,
}

/// Grouped aggregates, `aggregate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateQuery {
    /// The table to aggregate.
    #[serde(default)]
    pub source: AggregateSource,
    /// Only this namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Conditions on rows before grouping.
    #[serde(default, rename = "where")]
    pub conditions: Vec<Condition>,
    /// Grouping fields.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Output aggregates.
    pub aggregations: Vec<Aggregation>,
    /// Conditions on groups (fields are group keys or aggregate aliases).
    #[serde(default)]
    pub having: Vec<Condition>,
    /// Sort order.
    #[serde(default)]
    pub order_by: Vec<OrderBy>,
    /// At most this many groups.
    #[serde(default)]
    pub limit: Option<usize>,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidQuery, message)
}

/// How a payload field is read: as text, or as a number for arithmetic.
#[derive(Clone, Copy)]
enum Want {
    Text,
    Number,
}

fn json_udf(ctx: &SessionContext, name: &str) -> Result<Arc<ScalarUDF>> {
    ctx.state()
        .scalar_functions()
        .get(name)
        .cloned()
        .ok_or_else(|| Error::new(ErrorKind::Unexpected, format!("{name} is not registered")))
}

/// The expression for `field` in `df`: a column, or a JSON path into `payload`.
fn field(ctx: &SessionContext, df: &DataFrame, name: &str, want: Want) -> Result<Expr> {
    if let Some(path) = name.strip_prefix("payload.") {
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(invalid(format!("bad payload path `{name}`")));
        }
        if df.schema().field_with_unqualified_name("payload").is_err() {
            return Err(invalid(format!("`{name}`: this table has no payload")));
        }
        let udf = json_udf(
            ctx,
            match want {
                Want::Text => "json_get_str",
                Want::Number => "json_get_float",
            },
        )?;
        let mut args = vec![col("payload")];
        args.extend(path.split('.').map(lit));
        return Ok(udf.call(args));
    }
    if df.schema().field_with_unqualified_name(name).is_err() {
        let known: Vec<String> = df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        return Err(invalid(format!(
            "unknown field `{name}`; fields are {} or payload.<path>",
            known.join(", ")
        )));
    }
    Ok(ident(name))
}

fn literal(value: &Value) -> Result<Expr> {
    Ok(match value {
        Value::String(s) => lit(s.as_str()),
        Value::Bool(b) => lit(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => lit(i),
            (None, Some(f)) => lit(f),
            _ => return Err(invalid(format!("number {n} is out of range"))),
        },
        Value::Null => lit(ScalarValue::Null),
        other => return Err(invalid(format!("{other} is not a scalar value"))),
    })
}

fn condition(ctx: &SessionContext, df: &DataFrame, c: &Condition) -> Result<Expr> {
    let want = match &c.value {
        Value::Number(_) => Want::Number,
        Value::Array(items) if items.iter().all(Value::is_number) && !items.is_empty() => {
            Want::Number
        }
        _ => Want::Text,
    };
    let f = field(ctx, df, &c.field, want)?;
    let list = || -> Result<Vec<Expr>> {
        match &c.value {
            Value::Array(items) => items.iter().map(literal).collect(),
            other => Err(invalid(format!(
                "`{}`: in/not_in need an array, got {other}",
                c.field
            ))),
        }
    };
    Ok(match c.op {
        Op::Eq => f.eq(literal(&c.value)?),
        Op::Ne => f.not_eq(literal(&c.value)?),
        Op::Lt => f.lt(literal(&c.value)?),
        Op::Lte => f.lt_eq(literal(&c.value)?),
        Op::Gt => f.gt(literal(&c.value)?),
        Op::Gte => f.gt_eq(literal(&c.value)?),
        Op::In => f.in_list(list()?, false),
        Op::NotIn => f.in_list(list()?, true),
        Op::Like => match &c.value {
            Value::String(p) => f.like(lit(p.as_str())),
            other => {
                return Err(invalid(format!(
                    "`{}`: like needs a string, got {other}",
                    c.field
                )));
            }
        },
        Op::IsNull => f.is_null(),
        Op::IsNotNull => f.is_not_null(),
    })
}

fn filter_all(
    ctx: &SessionContext,
    mut df: DataFrame,
    conditions: &[Condition],
) -> Result<DataFrame> {
    for c in conditions {
        let e = condition(ctx, &df, c)?;
        df = df.filter(e)?;
    }
    Ok(df)
}

fn sort_and_page(
    ctx: &SessionContext,
    mut df: DataFrame,
    order_by: &[OrderBy],
    default_order: &[&str],
    offset: Option<usize>,
    limit: Option<usize>,
) -> Result<DataFrame> {
    let mut keys: Vec<SortExpr> = order_by
        .iter()
        .map(|o| Ok(field(ctx, &df, &o.field, Want::Text)?.sort(!o.descending, false)))
        .collect::<Result<_>>()?;
    if keys.is_empty() && (limit.is_some() || offset.is_some()) {
        // Pages must be stable: without an order, use the table's key.
        keys = default_order
            .iter()
            .map(|c| ident(*c).sort(true, false))
            .collect();
    }
    if !keys.is_empty() {
        df = df.sort(keys)?;
    }
    if limit.is_some() || offset.is_some() {
        df = df.limit(offset.unwrap_or(0), limit)?;
    }
    Ok(df)
}

pub(crate) async fn things(ctx: &SessionContext, q: &ThingsQuery) -> Result<DataFrame> {
    let mut df = ctx.table("things").await?;
    if let Some(ns) = &q.namespace {
        df = df.filter(col("namespace").eq(lit(ns.as_str())))?;
    }
    if let Some(t) = &q.entity_type {
        df = df.filter(ident("type").eq(lit(t.as_str())))?;
    }
    let df = filter_all(ctx, df, &q.conditions)?;
    sort_and_page(
        ctx,
        df,
        &q.order_by,
        &["namespace", "type", "id"],
        q.offset,
        q.limit,
    )
}

pub(crate) async fn events(ctx: &SessionContext, q: &EventsQuery) -> Result<DataFrame> {
    let mut df = ctx.table("events").await?;
    let equals = [
        ("namespace", &q.namespace),
        ("event_type", &q.event_type),
        ("entity_type", &q.entity_type),
        ("entity_id", &q.entity_id),
        ("partition_key", &q.partition_key),
    ];
    for (column, value) in equals {
        if let Some(v) = value {
            df = df.filter(col(column).eq(lit(v.as_str())))?;
        }
    }
    if let Some(shard) = q.shard_id {
        df = df.filter(col("shard_id").eq(lit(shard)))?;
    }
    let ts = |t: &DateTime<Utc>| {
        lit(ScalarValue::TimestampMicrosecond(
            Some(t.timestamp_micros()),
            Some(shardlake_core::schema::TS_TIMEZONE.into()),
        ))
    };
    if let Some(since) = &q.since {
        df = df.filter(col("ts").gt_eq(ts(since)))?;
    }
    if let Some(until) = &q.until {
        df = df.filter(col("ts").lt(ts(until)))?;
    }
    let df = filter_all(ctx, df, &q.conditions)?;
    let order = if q.order_by.is_empty() {
        vec![OrderBy::asc("position")]
    } else {
        q.order_by.clone()
    };
    sort_and_page(ctx, df, &order, &["position"], q.offset, q.limit)
}

/// The replay plan: filters that prune (namespace, keys, positions) and
/// `ORDER BY position`. `from_position`: the first position to include
/// (from `since_snapshot`).
pub(crate) async fn replay(
    ctx: &SessionContext,
    q: &ReplayQuery,
    from_position: Option<i64>,
) -> Result<DataFrame> {
    let mut df = ctx.table("events").await?;
    if let Some(ns) = &q.namespace {
        df = df.filter(col("namespace").eq(lit(ns.as_str())))?;
    }
    match q.partition_keys.as_slice() {
        [] => {}
        [key] => df = df.filter(col("partition_key").eq(lit(key.as_str())))?,
        keys => {
            let list = keys.iter().map(|k| lit(k.as_str())).collect();
            df = df.filter(col("partition_key").in_list(list, false))?;
        }
    }
    if let Some(shard) = q.shard_id {
        df = df.filter(col("shard_id").eq(lit(shard)))?;
    }
    if let Some(after) = q.after_position {
        df = df.filter(col("position").gt(lit(after)))?;
    }
    if let Some(from) = from_position {
        df = df.filter(col("position").gt_eq(lit(from)))?;
    }
    if let Some(after) = q.after_seq {
        df = df.filter(col("seq").gt(lit(after)))?;
    }
    if let Some(p) = q.partition {
        if p.count == 0 || p.index >= p.count {
            return Err(invalid(format!(
                "partition {} of {} does not exist",
                p.index, p.count
            )));
        }
        let f = datafusion::execution::FunctionRegistry::udf(ctx, crate::udf::PARTITION_FN)?;
        df = df.filter(
            f.call(vec![col("partition_key"), lit(i64::from(p.count))])
                .eq(lit(i64::from(p.index))),
        )?;
    }
    let df = df.sort(vec![col("position").sort(true, false)])?;
    Ok(match q.limit {
        Some(n) => df.limit(0, Some(n))?,
        None => df,
    })
}

pub(crate) async fn aggregate(ctx: &SessionContext, q: &AggregateQuery) -> Result<DataFrame> {
    if q.aggregations.is_empty() {
        return Err(invalid("an aggregate needs at least one aggregation"));
    }
    let mut df = ctx
        .table(match q.source {
            AggregateSource::Events => "events",
            AggregateSource::Things => "things",
        })
        .await?;
    if let Some(ns) = &q.namespace {
        df = df.filter(col("namespace").eq(lit(ns.as_str())))?;
    }
    df = filter_all(ctx, df, &q.conditions)?;
    let groups: Vec<Expr> = q
        .group_by
        .iter()
        .map(|g| Ok(field(ctx, &df, g, Want::Text)?.alias(g)))
        .collect::<Result<_>>()?;
    let aggregates: Vec<Expr> = q
        .aggregations
        .iter()
        .map(|a| {
            let arg = |want| match &a.field {
                Some(f) => field(ctx, &df, f, want),
                None => Err(invalid(format!(
                    "`{}`: {:?} needs a field",
                    a.alias, a.function
                ))),
            };
            let e = match a.function {
                AggregateFunction::Count => match &a.field {
                    None => count_all(),
                    Some(_) => count(arg(Want::Text)?),
                },
                AggregateFunction::Sum => sum(arg(Want::Number)?),
                AggregateFunction::Avg => avg(arg(Want::Number)?),
                AggregateFunction::Min => min(arg(Want::Text)?),
                AggregateFunction::Max => max(arg(Want::Text)?),
            };
            Ok(e.alias(&a.alias))
        })
        .collect::<Result<_>>()?;
    let df = df.aggregate(groups, aggregates)?;
    let df = filter_all(ctx, df, &q.having)?;
    sort_and_page(ctx, df, &q.order_by, &[], None, q.limit)
}
