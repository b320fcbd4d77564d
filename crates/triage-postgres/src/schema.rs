//! Tables, versioned migrations and day partitions.
//!
//! Migrations are embedded and applied in order at start-up, each in its own transaction and
//! recorded in `triage_migrations`, all under one session advisory lock: replicas starting
//! together queue behind each other instead of racing, and a later one finds the work done.
//!
//! `decisions`, `feedback` and `verifications` are range-partitioned by day (days since the
//! epoch, UTC). A report and a verdict lie in the partition of their *request's* day (taken
//! from its UUIDv7 id), so a lookup touches one partition and retention drops whole days.
//! A report's key is (request day, request id, feedback id): feedback ids are scoped to their
//! request (migration 2; before it, one tenant's `fb-1` made another tenant's `fb-1` a
//! conflict), and a partitioned table's unique key must include the partition key.

use std::collections::HashSet;

use deadpool_postgres::Client;

use crate::PgError;

/// The advisory lock key migrations and partition creation hold (`"triage"` in ASCII).
const LOCK_KEY: i64 = 0x7472_6961_6765;

/// Versioned migrations, applied in order; never edit one that shipped, add the next.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE decisions (
        day int4 NOT NULL,
        request_id text NOT NULL,
        time_ms int8 NOT NULL,
        api_key text,
        candidates text NOT NULL,
        reserved_usd float8 NOT NULL,
        planned boolean NOT NULL,
        settled boolean NOT NULL DEFAULT false,
        verified int8,
        record bytea NOT NULL,
        PRIMARY KEY (day, request_id)
    ) PARTITION BY RANGE (day);
    CREATE TABLE feedback (
        day int4 NOT NULL,
        feedback_id text NOT NULL,
        request_id text NOT NULL,
        time_ms int8 NOT NULL,
        record bytea NOT NULL,
        PRIMARY KEY (day, feedback_id)
    ) PARTITION BY RANGE (day);
    CREATE TABLE verifications (
        day int4 NOT NULL,
        request_id text NOT NULL,
        time_ms int8 NOT NULL,
        record bytea NOT NULL,
        PRIMARY KEY (day, request_id)
    ) PARTITION BY RANGE (day);
    CREATE TABLE budgets (
        api_key text PRIMARY KEY,
        day int4 NOT NULL,
        day_usd float8 NOT NULL,
        month int4 NOT NULL,
        month_usd float8 NOT NULL
    );",
    ),
    (
        2,
        "ALTER TABLE feedback DROP CONSTRAINT feedback_pkey;
         ALTER TABLE feedback ADD PRIMARY KEY (day, request_id, feedback_id);",
    ),
];

/// The partitioned tables.
pub(crate) const PARTITIONED: [&str; 3] = ["decisions", "feedback", "verifications"];

/// Applies the migrations this database lacks.
pub(crate) async fn migrate(client: &mut Client) -> Result<(), PgError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS triage_migrations (
                version int4 PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .or_else(|e| {
            // Two replicas creating the bookkeeping table at once: one wins, which is enough.
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                Ok(())
            } else {
                Err(e)
            }
        })?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let applied = apply_missing(client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await?;
    applied
}

async fn apply_missing(client: &mut Client) -> Result<(), PgError> {
    let done: HashSet<i32> = client
        .query("SELECT version FROM triage_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (version, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO triage_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, "PostgreSQL log: migration applied");
    }
    Ok(())
}

/// The name of `table`'s partition for `day`.
fn partition(table: &str, day: i32) -> String {
    format!("{table}_d{day}")
}

/// Creates the partitions of `days` that `known` does not list yet (every replica may ask at
/// once: creation holds the advisory lock for its transaction).
pub(crate) async fn ensure_partitions(
    client: &mut Client,
    known: &mut HashSet<i32>,
    days: impl IntoIterator<Item = i32>,
) -> Result<(), PgError> {
    let missing: Vec<i32> = days.into_iter().filter(|d| !known.contains(d)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    for day in &missing {
        for table in PARTITIONED {
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF {table} FOR VALUES FROM ({day}) TO ({})",
                partition(table, *day),
                day + 1
            ))
            .await?;
        }
    }
    tx.commit().await?;
    known.extend(missing);
    Ok(())
}

/// Drops the partitions of days before `oldest_day` (retention); returns how many went.
pub(crate) async fn drop_before(client: &mut Client, oldest_day: i32) -> Result<usize, PgError> {
    let rows = client
        .query(
            "SELECT c.relname FROM pg_inherits i
               JOIN pg_class c ON c.oid = i.inhrelid
               JOIN pg_class p ON p.oid = i.inhparent
              WHERE p.relname = ANY($1)",
            &[&PARTITIONED.to_vec()],
        )
        .await?;
    let mut dropped = 0;
    for row in rows {
        let name: String = row.get(0);
        let day = name
            .rsplit_once("_d")
            .and_then(|(_, d)| d.parse::<i32>().ok());
        if day.is_some_and(|d| d < oldest_day) {
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                .await?;
            dropped += 1;
        }
    }
    Ok(dropped)
}
