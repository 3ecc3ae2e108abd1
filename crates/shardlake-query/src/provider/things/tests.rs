//! The fold against hand-made events, and how a fold follows file changes.

use std::sync::Arc;

use arrow::array::{
    Array, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use datafusion::common::ScalarValue;
use object_store::path::Path;
use shardlake_core::schema::TS_TIMEZONE;

use super::FoldPlan;
use super::state::{DELETED, FOLD_COLUMNS, Fold};
use crate::snapshot::{ColumnBounds, LakeFile};

/// (namespace, type, id, event type, version, ts, payload, position)
type Row<'a> = (
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    &'a str,
    Option<i64>,
    i64,
    Option<&'a str>,
    i64,
);

fn events(rows: &[Row]) -> RecordBatch {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some(TS_TIMEZONE.into()));
    let schema = Schema::new(
        FOLD_COLUMNS
            .iter()
            .map(|c| match *c {
                "version" | "position" => Field::new(*c, DataType::Int64, true),
                "ts" => Field::new(*c, ts.clone(), true),
                _ => Field::new(*c, DataType::Utf8, true),
            })
            .collect::<Vec<_>>(),
    );
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(rows.iter().map(|r| Some(r.0)).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| r.1).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| r.2).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| Some(r.3)).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| r.4).collect::<Int64Array>()),
            Arc::new(
                rows.iter()
                    .map(|r| Some(r.5))
                    .collect::<TimestampMicrosecondArray>()
                    .with_timezone(TS_TIMEZONE),
            ),
            Arc::new(rows.iter().map(|r| r.6).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| Some(r.7)).collect::<Int64Array>()),
        ],
    )
    .expect("batch")
}

fn things_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some(TS_TIMEZONE.into()));
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("type", DataType::Utf8, true),
        Field::new("version", DataType::Int64, true),
        Field::new("created_at", ts.clone(), true),
        Field::new("updated_at", ts, true),
        Field::new("namespace", DataType::Utf8, false),
        Field::new("payload", DataType::Utf8, true),
        Field::new("events", DataType::Int64, false),
        Field::new("position", DataType::Int64, true),
    ]))
}

/// (type, id, version, created_at, updated_at, payload, events, position), sorted.
type Thing = (
    String,
    String,
    Option<i64>,
    i64,
    i64,
    Option<String>,
    i64,
    i64,
);

fn things(fold: &mut Fold, batch_rows: usize) -> Vec<Thing> {
    let mut out = Vec::new();
    for b in fold
        .batches("ns", &things_schema(), batch_rows)
        .expect("batches")
        .iter()
    {
        let s = |i: usize| b.column(i).as_string::<i32>();
        let n = |i: usize| b.column(i).as_primitive::<Int64Type>();
        let t = |i: usize| {
            b.column(i)
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
        };
        assert!(s(5).iter().all(|ns| ns == Some("ns")));
        for r in 0..b.num_rows() {
            out.push((
                s(1).value(r).to_owned(),
                s(0).value(r).to_owned(),
                n(2).is_valid(r).then(|| n(2).value(r)),
                t(3).value(r),
                t(4).value(r),
                s(6).is_valid(r).then(|| s(6).value(r).to_owned()),
                n(7).value(r),
                n(8).value(r),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn the_fold_is_the_same_in_any_order_and_follows_deletions() {
    let rows: Vec<Row> = vec![
        (
            "ns",
            Some("Order"),
            Some("1"),
            "thing.created",
            Some(1),
            100,
            Some("a"),
            10,
        ),
        (
            "ns",
            Some("Order"),
            Some("1"),
            "thing.updated",
            Some(2),
            200,
            None,
            20,
        ),
        (
            "ns",
            Some("Order"),
            Some("2"),
            "thing.created",
            Some(1),
            150,
            Some("x"),
            15,
        ),
        (
            "ns",
            Some("Order"),
            Some("2"),
            DELETED,
            Some(2),
            250,
            None,
            25,
        ),
        // Revived after deletion: live again, all four events counted.
        (
            "ns",
            Some("Order"),
            Some("3"),
            "thing.created",
            Some(1),
            110,
            Some("p"),
            11,
        ),
        (
            "ns",
            Some("Order"),
            Some("3"),
            DELETED,
            Some(2),
            120,
            None,
            12,
        ),
        (
            "ns",
            Some("Order"),
            Some("3"),
            "thing.created",
            None,
            130,
            Some("q"),
            13,
        ),
        // A type and id that concatenate alike stay two entities.
        (
            "ns",
            Some("a"),
            Some("bc"),
            "thing.created",
            Some(7),
            1,
            Some("1"),
            1,
        ),
        (
            "ns",
            Some("ab"),
            Some("c"),
            "thing.created",
            Some(8),
            2,
            Some("2"),
            2,
        ),
        // No entity, or another namespace: not part of `things` here.
        ("ns", None, Some("9"), "thing.created", Some(1), 5, None, 5),
        (
            "ns",
            Some("Order"),
            None,
            "thing.created",
            Some(1),
            6,
            None,
            6,
        ),
        (
            "other",
            Some("Order"),
            Some("1"),
            "thing.updated",
            Some(99),
            999,
            None,
            99,
        ),
    ];
    let expected: Vec<Thing> = vec![
        ("Order".into(), "1".into(), Some(2), 100, 200, None, 2, 20),
        (
            "Order".into(),
            "3".into(),
            None,
            110,
            130,
            Some("q".into()),
            3,
            13,
        ),
        (
            "a".into(),
            "bc".into(),
            Some(7),
            1,
            1,
            Some("1".into()),
            1,
            1,
        ),
        (
            "ab".into(),
            "c".into(),
            Some(8),
            2,
            2,
            Some("2".into()),
            1,
            2,
        ),
    ];
    let mut forward = Fold::default();
    forward.add(&events(&rows), "ns").expect("fold");
    assert_eq!(things(&mut forward, 2), expected);
    assert_eq!(forward.rows, rows.len() as u64);
    assert_eq!(forward.max_position, 99);

    // Reversed, and one row at a time: the same.
    let mut backward = Fold::default();
    for row in rows.iter().rev() {
        backward
            .add(&events(std::slice::from_ref(row)), "ns")
            .expect("fold");
    }
    assert_eq!(things(&mut backward, 1000), expected);
    assert!(backward.bytes() > 0);

    // Deleting the last live ones leaves an empty (not missing) answer.
    let mut gone = Fold::default();
    gone.add(&events(&rows[2..4]), "ns").expect("fold");
    assert_eq!(things(&mut gone, 8), vec![]);
}

fn file(name: &str, rows: u64, positions: Option<(i64, i64)>) -> Arc<LakeFile> {
    let mut columns = vec![ColumnBounds::default(); shardlake_core::event_schema().fields().len()];
    if let Some((min, max)) = positions {
        let position = shardlake_core::event_schema()
            .index_of(shardlake_core::schema::columns::POSITION)
            .expect("position");
        columns[position].min = Some(ScalarValue::Int64(Some(min)));
        columns[position].max = Some(ScalarValue::Int64(Some(max)));
    }
    Arc::new(LakeFile {
        location: format!("file:///{name}"),
        path: Path::from(name),
        size: rows * 100,
        namespace: "ns".into(),
        rows,
        columns,
    })
}

/// A fold of `files`, as if their rows (positions up to `max`) were read.
fn folded(files: &[Arc<LakeFile>], max: i64) -> Fold {
    let mut fold = Fold::default();
    fold.add(
        &events(&[(
            "ns",
            Some("T"),
            Some("1"),
            "thing.created",
            Some(1),
            0,
            None,
            max,
        )]),
        "ns",
    )
    .expect("fold");
    fold.finish(files.iter().map(|f| (f.path.clone(), f.rows)).collect());
    fold
}

#[test]
fn a_fold_follows_appends_and_compactions_and_rebuilds_otherwise() {
    let (a, b) = (file("a", 10, Some((1, 10))), file("b", 5, Some((11, 15))));
    let fold = folded(&[Arc::clone(&a), Arc::clone(&b)], 15);
    let paths =
        |read: &[Arc<LakeFile>]| read.iter().map(|f| f.path.to_string()).collect::<Vec<_>>();

    // Nothing new: nothing read.
    let same = FoldPlan::of(&fold, &[Arc::clone(&a), Arc::clone(&b)]).expect("same");
    assert!(!same.rebuild && same.read.is_empty());

    // A commit: only its file is read.
    let c = file("c", 3, Some((16, 18)));
    let append =
        FoldPlan::of(&fold, &[Arc::clone(&a), Arc::clone(&b), Arc::clone(&c)]).expect("append");
    assert!(!append.rebuild);
    assert_eq!(paths(&append.read), vec!["c"]);
    assert_eq!(append.files.len(), 3);

    // A compaction of a and b (same rows) plus a later commit: only the
    // commit's file is read, the fold is relabeled.
    let ab = file("ab", 15, Some((1, 15)));
    let compacted = FoldPlan::of(&fold, &[Arc::clone(&ab), Arc::clone(&c)]).expect("compacted");
    assert!(!compacted.rebuild);
    assert_eq!(paths(&compacted.read), vec!["c"]);
    assert!(compacted.files.contains_key(&ab.path));

    // Retention dropped rows while rewriting: rebuilt from every file.
    let trimmed = file("trimmed", 12, Some((3, 15)));
    let rebuilt = FoldPlan::of(&fold, &[Arc::clone(&trimmed)]).expect("rebuilt");
    assert!(rebuilt.rebuild);
    assert_eq!(paths(&rebuilt.read), vec!["trimmed"]);

    // A file without position bounds cannot be placed: rebuilt.
    let unknown = file("unknown", 15, None);
    assert!(FoldPlan::of(&fold, &[unknown]).expect("rebuilt").rebuild);

    // An older snapshot (fewer files, lower positions): not the fold's to
    // answer, and the fold is left as it is.
    assert!(FoldPlan::of(&fold, &[Arc::clone(&a)]).is_none());

    // A fold never finished (a query cancelled while folding): rebuilt.
    let mut interrupted = folded(&[Arc::clone(&a)], 10);
    interrupted.begin();
    assert!(
        FoldPlan::of(&interrupted, &[a, b])
            .expect("rebuilt")
            .rebuild
    );
}
