//! Users: the caller found or created from the token's claims (with the
//! initial grant), and users named by operators.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use super::{Result, StoreError};

/// Who the bearer token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub external_id: String,
    pub email: Option<String>,
    /// The identity provider checked the email (`email_verified`); only a
    /// verified email names the user to an operator.
    pub email_verified: bool,
    pub name: Option<String>,
}

#[derive(Debug, Clone, FromRow, Serialize)]
pub struct User {
    pub id: Uuid,
    pub external_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

const USER_COLS: &str = "SELECT id, external_id, email, name, created_at, last_seen_at FROM users";

/// Finds or creates the caller's user; a new user gets `initial` credits as a
/// `grant`. Email and name follow the claims; `last_seen_at` is written at
/// most once a minute so that reads stay reads.
pub async fn ensure_user(pool: &PgPool, who: &Identity, initial: i64) -> Result<Uuid> {
    debug_assert!(initial >= 0, "a negative initial grant");
    static UPSERT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let upsert = UPSERT.get_or_init(|| {
        with_initial_grant(
            "$4",
            "$6",
            r#"
        WITH u AS (
            INSERT INTO users (external_id, email, name, email_verified) VALUES ($1, $2, $3, $5)
            ON CONFLICT (external_id) DO UPDATE
               SET email = EXCLUDED.email, name = EXCLUDED.name,
                   email_verified = EXCLUDED.email_verified, last_seen_at = now()
             WHERE users.email IS DISTINCT FROM EXCLUDED.email
                OR users.email_verified IS DISTINCT FROM EXCLUDED.email_verified
                OR users.name IS DISTINCT FROM EXCLUDED.name
                OR users.last_seen_at < now() - interval '1 minute'
            RETURNING id, (xmax = 0) AS created
        ), {initial}
        SELECT id FROM u"#,
        )
    });
    // The upsert returns nothing when the row was already current; the row is
    // then read by a fresh statement, which sees a concurrent creator's commit.
    for _ in 0..3 {
        let created: Option<Uuid> = sqlx::query_scalar(upsert)
            .bind(&who.external_id)
            .bind(&who.email)
            .bind(&who.name)
            .bind(initial)
            .bind(who.email_verified)
            .bind(super::SYSTEM_ACTOR)
            .fetch_optional(pool)
            .await?;
        if let Some(id) = created {
            return Ok(id);
        }
        let existing: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM users WHERE external_id = $1")
                .bind(&who.external_id)
                .fetch_optional(pool)
                .await?;
        if let Some(id) = existing {
            return Ok(id);
        }
    }
    Err(StoreError::Conflict("user could not be created".into()))
}

/// The user whose identity-provider ID is `external_id`, created (with
/// the initial credits, as a first sign-in would) when unknown; an existing
/// user's profile is left as it is. For payments naming a user who has not
/// signed in yet.
pub async fn ensure_external_id(pool: &PgPool, external_id: &str, initial: i64) -> Result<Uuid> {
    static INSERT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let insert = INSERT.get_or_init(|| {
        with_initial_grant(
            "$2",
            "$3",
            r#"
        WITH u AS (
            INSERT INTO users (external_id) VALUES ($1)
            ON CONFLICT (external_id) DO NOTHING
            RETURNING id, true AS created
        ), {initial}
        SELECT id FROM u"#,
        )
    });
    let created: Option<Uuid> = sqlx::query_scalar(insert)
        .bind(external_id)
        .bind(initial)
        .bind(super::SYSTEM_ACTOR)
        .fetch_optional(pool)
        .await?;
    if let Some(id) = created {
        return Ok(id);
    }
    sqlx::query_scalar("SELECT id FROM users WHERE external_id = $1")
        .bind(external_id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| StoreError::Conflict("user could not be created".into()))
}

/// `sql` with its `{initial}` written as a new user's account and initial
/// grant (`amount` credits, by `actor`, a lasting lot), for each row of the
/// CTE `u` (`id`, `created`) that was created.
fn with_initial_grant(amount: &str, actor: &str, sql: &str) -> String {
    let lot = super::lots::new_lot_ctes("initial", "grant_row", "NULL");
    sql.replace(
        "{initial}",
        &format!(
            "acct AS (
            INSERT INTO credit_accounts (user_id, available)
            SELECT id, {amount} FROM u WHERE created
            RETURNING user_id
        ), grant_row AS (
            INSERT INTO credit_ledger (user_id, kind, amount, actor, reason)
            SELECT user_id, 'grant', {amount}, {actor}, 'initial credits' FROM acct WHERE {amount} > 0
            RETURNING id, user_id, amount
        ), {lot}"
        ),
    )
}

pub async fn find_user_by_id(pool: &PgPool, id: Uuid) -> Result<Option<User>> {
    Ok(sqlx::query_as(&format!("{USER_COLS} WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?)
}

/// A user named by an operator: by email, by external ID, or by internal ID.
#[derive(Debug, Clone)]
pub enum UserRef {
    Id(Uuid),
    ExternalId(String),
    Email(String),
}

impl UserRef {
    /// An ID as operators give it: genq's UUID, else the identity provider's `sub`.
    pub fn from_id(id: &str) -> Self {
        match Uuid::parse_str(id) {
            Ok(uuid) => Self::Id(uuid),
            Err(_) => Self::ExternalId(id.to_owned()),
        }
    }
}

/// Resolves an operator's reference; an email shared by several users is a conflict.
pub async fn find_user(pool: &PgPool, by: &UserRef) -> Result<Option<User>> {
    let rows: Vec<User> = match by {
        UserRef::Id(id) => {
            sqlx::query_as(&format!("{USER_COLS} WHERE id = $1"))
                .bind(id)
                .fetch_all(pool)
                .await?
        }
        UserRef::ExternalId(ext) => {
            sqlx::query_as(&format!("{USER_COLS} WHERE external_id = $1"))
                .bind(ext)
                .fetch_all(pool)
                .await?
        }
        UserRef::Email(email) => {
            let rows: Vec<User> = sqlx::query_as(&format!(
                "{USER_COLS} WHERE lower(email) = lower($1) AND email_verified LIMIT 2"
            ))
            .bind(email)
            .fetch_all(pool)
            .await?;
            if rows.is_empty() {
                // Anyone can claim an email their identity provider did not
                // check: such a user is named only by ID.
                let unverified: Option<Uuid> = sqlx::query_scalar(
                    "SELECT id FROM users WHERE lower(email) = lower($1) LIMIT 1",
                )
                .bind(email)
                .fetch_optional(pool)
                .await?;
                if unverified.is_some() {
                    return Err(StoreError::Conflict(
                        "this email is not verified by the identity provider; name the user by ID (the identity provider's user ID, or genq's user UUID)".into(),
                    ));
                }
            }
            rows
        }
    };
    match rows.len() {
        0 => Ok(None),
        1 => Ok(rows.into_iter().next()),
        _ => Err(StoreError::Conflict(
            "several users have this email; name the user by ID".into(),
        )),
    }
}
