//! Builds the API: database (created and migrated), router, listener; runs it
//! until the cancellation token fires, then drains in-flight requests.

use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use genq_shared::config::Settings;
use genq_shared::db;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::error::{error_json, ApiError};
use crate::routes::{admin, credits, dev, events, generations, health, ops, video, web, webhooks};
use crate::state::AppState;

pub struct Application {
    listener: TcpListener,
    port: u16,
    state: AppState,
}

impl Application {
    /// Connects (creating and migrating the database) and binds `api.addr`;
    /// port 0 picks a free port.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        settings.validate_api()?;
        let pool = db::connect_and_migrate(&settings.database).await?;
        let listener = TcpListener::bind(&settings.api.addr).await?;
        let port = listener.local_addr()?.port();
        let state = AppState::new(settings, pool)?;
        Ok(Self {
            listener,
            port,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        &self.state.pool
    }

    /// Serves until `shutdown` is cancelled, then finishes in-flight requests.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // The API writes the outbox; the doorbell wakes the relays.
        tokio::spawn(
            self.state
                .outbox_bell
                .clone()
                .run(self.state.pool.clone(), shutdown.clone()),
        );
        // A broker connection of its own, for lone submissions (eager.rs).
        tokio::spawn(
            self.state
                .eager
                .clone()
                .run(self.state.settings.clone(), shutdown.clone()),
        );
        // One feed per process tails the job events for every open stream.
        tokio::spawn(self.state.events.clone().run(
            self.state.pool.clone(),
            Duration::from_millis(self.state.settings.events.poll_interval_ms),
            shutdown.clone(),
        ));
        // The limiter keeps a state per user; forget the idle ones now and then.
        let limiter = self.state.submit_limiter.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => limiter.retain_recent(),
                }
            }
        });
        let app = router(self.state);
        tracing::info!(port = self.port, "genq-api listening");
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await?;
        Ok(())
    }
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route(
            "/generations",
            post(generations::create).get(generations::list),
        )
        .route("/generations/{id}", get(generations::get))
        .route("/generations/{id}/cancel", post(generations::cancel))
        .route("/generations/{id}/video", get(video::video))
        .route("/generations/{id}/events", get(events::job_events))
        .route("/events", get(events::user_events))
        .route("/stream-tokens", post(events::create_stream_token))
        .route("/credits", get(credits::balance))
        .route("/credits/ledger", get(credits::ledger))
        .route("/admin/credits", post(admin::add_credits))
        .route("/admin/users/{user}/diagnosis", get(ops::diagnose))
        .route("/admin/jobs", get(ops::jobs))
        .route("/admin/jobs/{id}", get(ops::job))
        .route("/admin/jobs/{id}/ledger", get(ops::job_ledger))
        .route("/admin/jobs/{id}/cancel", post(ops::job_cancel))
        .route("/admin/dlq", get(ops::dlq_list))
        .route("/admin/dlq/{id}", get(ops::dlq_show))
        .route("/admin/dlq/{id}/replay", post(ops::dlq_replay))
        .route("/admin/dlq/{id}/discard", post(ops::dlq_discard))
        .route("/admin/ledger/verify", get(ops::ledger_verify))
        .route("/admin/system", get(ops::system))
        .route(
            "/admin/webhooks",
            post(webhooks::webhook_create).get(webhooks::webhook_list),
        )
        .route(
            "/admin/webhooks/{id}",
            get(webhooks::webhook_show).delete(webhooks::webhook_delete),
        )
        .route(
            "/admin/webhooks/{id}/rotate",
            post(webhooks::webhook_rotate),
        )
        .route("/admin/webhook-deliveries", get(webhooks::delivery_list))
        .route(
            "/admin/webhook-deliveries/{id}",
            get(webhooks::delivery_show),
        )
        .route(
            "/admin/webhook-deliveries/{id}/replay",
            post(webhooks::delivery_replay),
        )
        .route("/dev/sign-in", post(dev::sign_in));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi))
        // The page (not part of the API document, except its settings).
        .route("/", get(web::index))
        .route("/assets/app.js", get(web::app_js))
        .route("/admin", get(web::admin))
        .route("/assets/admin.js", get(web::admin_js))
        .route("/assets/app.css", get(web::app_css))
        .route("/web/config.json", get(web::config))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Duration::from_millis(state.settings.api.request_timeout_ms),
            request_timeout,
        ))
        .layer(middleware::from_fn(count_requests))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a handler panicked");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(error_json("internal", "internal error")),
            )
                .into_response()
        }))
        .with_state(state)
}

/// The document, with this deployment's models (see [`crate::openapi::document`]).
async fn openapi(axum::extract::State(state): axum::extract::State<AppState>) -> impl IntoResponse {
    let models: Vec<&str> = state.settings.models.keys().map(String::as_str).collect();
    Json(crate::openapi::document(&models))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("No such endpoint.".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("This method is not allowed here.".into())
}

/// Counts responses by route and status class.
async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let response = next.run(request).await;
    metrics::counter!(
        "genq_http_responses_total",
        "route" => route, "method" => method, "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}

/// Answers 503 `unavailable` when a request takes longer than
/// `api.request_timeout_ms` (a stuck database, say), instead of hanging.
/// The 503 is safe to retry: a submission whose statement did commit is
/// found again by its `Idempotency-Key`.
async fn request_timeout(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("genq_http_timeouts_total").increment(1);
            ApiError::Unavailable(anyhow::anyhow!("the request took longer than {limit:?}"))
                .into_response()
        }
    }
}
