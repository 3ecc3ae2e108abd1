//! `/v1/migrations` (admin): plan, start, watch, resume and roll back
//! shard migrations. A migration runs in the background (one per server at
//! a time); its record, in the catalog database, is what `GET` shows, also
//! after a restart. A server stopped mid-migration leaves it `running`:
//! `POST /v1/migrations/{id}/resume` continues it.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use shardlake_migrate::{
    ControlStore, MigrationConfig, MigrationPlan, MigrationReport, MigrationSetup, Migrator,
    TopologyChange, current_topology, migration_not_found, migration_report, migration_reports,
    plan_change, plan_shards, publish_topology,
};
use shardlake_routing::Topology;

use crate::auth::Authenticated;
use crate::config::Permission;
use crate::error::ApiError;
use crate::routes::JsonBody;
use crate::state::AppState;

/// A topology change: exactly one of `add_shard`, `remove_shard`,
/// `topology` (a rebalance; its version becomes the next one).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeRequest {
    add_shard: Option<u32>,
    remove_shard: Option<u32>,
    topology: Option<Topology>,
    /// The topology in use, for a lake that has none recorded yet.
    current: Option<Topology>,
}

/// The recorded topology, else the request's `current` (recorded if
/// `record`).
async fn topology_in_use(
    state: &AppState,
    current: Option<Topology>,
    record: bool,
) -> Result<Topology, ApiError> {
    let control = ControlStore::open(state.lake())
        .await
        .map_err(ApiError::from)?;
    if let Some(t) = current_topology(&control).await.map_err(ApiError::from)? {
        return Ok(t);
    }
    let Some(t) = current else {
        return Err(ApiError::bad_request(
            "no_topology",
            "the lake has no recorded topology yet: send the one in use as `current`",
        ));
    };
    if record {
        publish_topology(&control, &t)
            .await
            .map_err(ApiError::from)?;
    }
    Ok(t)
}

async fn plan(
    state: &AppState,
    request: ChangeRequest,
    record: bool,
) -> Result<MigrationPlan, ApiError> {
    let change = match (request.add_shard, request.remove_shard, request.topology) {
        (Some(id), None, None) => TopologyChange::AddShard(id),
        (None, Some(id), None) => TopologyChange::RemoveShard(id),
        (None, None, Some(to)) => TopologyChange::RebalanceTo(to),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_plan",
                "give exactly one of `add_shard`, `remove_shard`, `topology`",
            ));
        }
    };
    let from = topology_in_use(state, request.current, record).await?;
    let rate = state.config().migration.replay_events_per_second;
    Ok(plan_change(state.engine(), &from, change, rate).await?)
}

/// A migrator over the configured shard endpoints; every shard the plan
/// touches must have one.
async fn migrator(state: &AppState, plan: &MigrationPlan) -> Result<Migrator, ApiError> {
    let settings = &state.config().migration;
    let setup = MigrationSetup::new(
        state.config().shards.iter().map(|e| (e.id, e.url.clone())),
        MigrationConfig {
            timeout: Duration::from_secs(settings.timeout_secs),
            batch_size: settings.batch_size.max(1),
            rollback_on_failure: settings.rollback_on_failure,
            lease: Duration::from_secs(settings.lease_secs.max(1)),
            ..MigrationConfig::default()
        },
    );
    let missing = setup.missing_endpoints(plan_shards(plan));
    if !missing.is_empty() {
        return Err(ApiError::bad_request(
            "shard_endpoint_missing",
            format!("configure [[shards]] endpoints for shards {missing:?}"),
        ));
    }
    Ok(setup
        .migrator(state.lake(), state.engine().clone(), plan)
        .await?)
}

/// A record without its (possibly long) list of key moves.
fn summary(report: &MigrationReport) -> Value {
    let mut value = json!(report);
    value["keys_moving"] = json!(report.plan.moves.len());
    if let Some(plan) = value["plan"].as_object_mut() {
        plan.remove("moves");
    }
    value
}

fn accepted(id: &str, status: &str) -> Response {
    let location = format!("/v1/migrations/{id}");
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location.clone())],
        Json(json!({"id": id, "status": status, "location": location})),
    )
        .into_response()
}

fn busy() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "migration_in_progress",
        "this server is running a migration; watch GET /v1/migrations",
    )
}

/// `GET /v1/migrations`: the recorded topology and every migration.
pub async fn list(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::Admin)?;
    let control = ControlStore::open(state.lake())
        .await
        .map_err(ApiError::from)?;
    let topology = current_topology(&control).await.map_err(ApiError::from)?;
    let migrations: Vec<Value> = migration_reports(&control)
        .await
        .map_err(ApiError::from)?
        .iter()
        .map(summary)
        .collect();
    Ok(Json(
        json!({"topology": topology, "migrations": migrations}),
    ))
}

/// `GET /v1/migrations/{id}`: one migration's whole record.
pub async fn get(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<MigrationReport>, ApiError> {
    caller.require(Permission::Admin)?;
    let control = ControlStore::open(state.lake())
        .await
        .map_err(ApiError::from)?;
    migration_report(&control, &id)
        .await
        .map_err(ApiError::from)?
        .map(Json)
        .ok_or_else(|| ApiError::from(migration_not_found(&id)))
}

/// `POST /v1/migrations/plan`: what a change would move (changes nothing).
pub async fn dry_run(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    JsonBody(request): JsonBody<ChangeRequest>,
) -> Result<Json<MigrationPlan>, ApiError> {
    caller.require(Permission::Admin)?;
    Ok(Json(plan(&state, request, false).await?))
}

/// `POST /v1/migrations`: plans the change and starts it in the
/// background; 202 with the migration's location.
pub async fn start(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    JsonBody(request): JsonBody<ChangeRequest>,
) -> Result<Response, ApiError> {
    caller.require(Permission::Admin)?;
    let slot = state.migration_slot().ok_or_else(busy)?;
    let control = ControlStore::open(state.lake())
        .await
        .map_err(ApiError::from)?;
    if let Some(open) = migration_reports(&control)
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .find(|r| r.status.is_open())
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "migration_unfinished",
            format!(
                "migration {} is unfinished (phase {}): resume or roll it back first",
                open.id, open.phase
            ),
        ));
    }
    let plan = plan(&state, request, true).await?;
    let migrator = migrator(&state, &plan).await?;
    let prepared = migrator.prepare(plan).await.map_err(ApiError::from)?;
    let (id, status) = (prepared.id.clone(), prepared.status);
    tokio::spawn(async move {
        let _slot = slot;
        let report = migrator.run_prepared(prepared).await;
        tracing::info!(migration = %report.id, status = report.status.as_str(), "migration finished");
    });
    Ok(accepted(&id, status.as_str()))
}

/// `POST /v1/migrations/{id}/resume` and `/rollback`: continue or undo an
/// unfinished migration in the background.
pub async fn act(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require(Permission::Admin)?;
    if action != "resume" && action != "rollback" {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no action `{action}` (resume, rollback)"),
        ));
    }
    let slot = state.migration_slot().ok_or_else(busy)?;
    let control = ControlStore::open(state.lake())
        .await
        .map_err(ApiError::from)?;
    let report = migration_report(&control, &id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::from(migration_not_found(&id)))?;
    if !report.status.is_open() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "migration_finished",
            format!("migration {id} is {}", report.status.as_str()),
        ));
    }
    let migrator = migrator(&state, &report.plan).await?;
    tokio::spawn(async move {
        let _slot = slot;
        let result = if action == "resume" {
            migrator.resume(&id).await
        } else {
            migrator.rollback(&id).await
        };
        match result {
            Ok(r) => {
                tracing::info!(migration = %r.id, status = r.status.as_str(), "migration finished")
            }
            Err(e) => tracing::warn!(migration = %id, error = %e, "migration could not continue"),
        }
    });
    Ok(accepted(&report.id, "running"))
}
