//! Builds the API: database (created and migrated), router, listener; runs it
//! until the cancellation token fires, then drains in-flight requests.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use backon::{ExponentialBuilder, Retryable};
use genq_shared::config::Settings;
use genq_shared::queue::{self, Topology};
use genq_shared::{db, telemetry};
use jsonwebtoken::DecodingKey;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use crate::error::{error_json, ApiError};
use crate::openapi::ApiDoc;
use crate::routes::{admin, credits, generations, health, ops};
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
        let state = AppState {
            pool,
            jwt_key: Arc::new(DecodingKey::from_secret(
                settings.auth.jwt_secret.expose_secret().as_bytes(),
            )),
            topology: Arc::new(Topology::new(&settings)),
            submit_limiter: Arc::new(crate::state::submit_limiter(&settings.api)),
            outbox_bell: Arc::default(),
            settings: Arc::new(settings),
            metrics: telemetry::metrics_handle(),
        };
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
        // The API only writes the outbox; it declares the topology so the
        // broker is ready for workers, without making its own start wait.
        tokio::spawn(declare_topology(
            self.state.settings.clone(),
            self.state.topology.clone(),
            shutdown.clone(),
        ));
        // The doorbell: each ring becomes one NOTIFY; rings during a NOTIFY
        // fold into the next one. A lost NOTIFY costs only the relay's
        // safety-net interval.
        let (bell, pool, stop) = (
            self.state.outbox_bell.clone(),
            self.state.pool.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = bell.notified() => {}
                }
                if let Err(e) = genq_shared::store::wake_relays(&pool).await {
                    tracing::debug!(error = %e, "NOTIFY failed; the relay's timer will pick the job up");
                }
            }
        });
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

/// Declares the queues, retrying with backoff while the broker is away.
async fn declare_topology(
    settings: Arc<Settings>,
    topology: Arc<Topology>,
    shutdown: CancellationToken,
) {
    let attempt = || async {
        let connection = queue::connect(&settings).await?;
        let channel = connection.create_channel().await?;
        topology.declare(&channel).await?;
        connection.close(200, "topology declared".into()).await.ok();
        anyhow::Ok(())
    };
    let retried = attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10))
                .with_jitter()
                .with_max_times(1_000),
        )
        .notify(|e, delay| tracing::warn!(error = %e, ?delay, "declaring the queue topology failed; retrying"));
    tokio::select! {
        r = retried => if let Err(e) = r { tracing::error!(error = %e, "could not declare the queue topology") },
        _ = shutdown.cancelled() => {}
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
        .route("/credits", get(credits::balance))
        .route("/credits/ledger", get(credits::ledger))
        .route("/admin/credits", post(admin::add_credits))
        .route("/admin/users/{user}/diagnosis", get(ops::diagnose))
        .route("/admin/jobs", get(ops::jobs))
        .route("/admin/jobs/{id}", get(ops::job))
        .route("/admin/dlq", get(ops::dlq_list))
        .route("/admin/dlq/{id}", get(ops::dlq_show))
        .route("/admin/dlq/{id}/replay", post(ops::dlq_replay))
        .route("/admin/dlq/{id}/discard", post(ops::dlq_discard))
        .route("/admin/ledger/verify", get(ops::ledger_verify));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
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

async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
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
