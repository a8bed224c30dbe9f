//! Builds the API: database (created and migrated), router, listeners (the
//! public one and `/metrics` on its own); runs it until the cancellation
//! token fires, then drains in-flight requests.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use genq_core::config::Settings;
use genq_store::db;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::error::{error_json, ApiError};
use crate::routes::web;
use crate::state::AppState;

pub struct Application {
    listener: TcpListener,
    metrics_listener: TcpListener,
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
        let metrics_listener = TcpListener::bind(&settings.api.metrics_addr)
            .await
            .map_err(|e| anyhow::anyhow!("api.metrics_addr {}: {e}", settings.api.metrics_addr))?;
        let port = listener.local_addr()?.port();
        if settings.web.dev_sign_in {
            tracing::warn!(
                addr = %settings.api.addr,
                "web.dev_sign_in is on: anyone who reaches this address can sign in as any dev:<name> user; never turn it on in production"
            );
        }
        let state = AppState::new(settings, pool)?;
        Ok(Self {
            listener,
            metrics_listener,
            port,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of `/metrics` (`api.metrics_addr`).
    pub fn metrics_port(&self) -> u16 {
        self.metrics_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
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
        if let Some(jwks) = &self.state.jwks {
            tokio::spawn(jwks.clone().run(shutdown.clone()));
        }
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
        // Prometheus on its own listener, never on the public port.
        let handle = self.state.metrics.clone();
        let metrics =
            Router::new().route("/metrics", get(move || std::future::ready(handle.render())));
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(self.metrics_listener, metrics)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the metrics listener failed");
            }
        });
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_millis(
                self.state.settings.api.header_read_timeout_ms,
            ),
            max_connections: self.state.settings.api.max_connections,
        };
        let app = router(self.state);
        tracing::info!(port = self.port, "genq-api listening");
        serve(self.listener, app, limits, shutdown).await;
        Ok(())
    }
}

/// What one client connection may hold.
struct ConnectionLimits {
    /// A request head not complete this long after the connection opened
    /// (or after its last response) closes the connection (slowloris).
    header_read_timeout: Duration,
    max_connections: usize,
}

/// Serves HTTP/1.1 on `listener` until `shutdown`, then lets the requests in
/// flight finish. axum's own `serve` offers no header read timeout, so the
/// accept loop is here, on hyper's connection builder.
async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection =
            graceful.watch(http.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A client that went away or timed out its head: nothing to do.
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

pub fn router(state: AppState) -> Router {
    // The documented endpoints, each routed from its own annotation.
    let (api, _) = crate::openapi::api_routes().split_for_parts();
    api.route("/openapi.json", get(openapi))
        // The page (not part of the API document, except its settings).
        .route("/", get(web::index))
        .route("/assets/app.js", get(web::app_js))
        .route("/admin", get(web::admin))
        .route("/assets/admin.js", get(web::admin_js))
        .route("/assets/app.css", get(web::app_css))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Duration::from_millis(state.settings.api.request_timeout_ms),
            request_timeout,
        ))
        .layer(middleware::from_fn(count_requests))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
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

/// The span of one request, at DEBUG as tower-http's own, with the URI's
/// `access_token` (a stream token, sent in the query because `EventSource`
/// can't send headers) redacted. With traces on, it is the trace's server
/// span, child of the caller's `traceparent` when one is sent and valid.
fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    // The route's template (never the raw path), known here: the layer runs
    // after routing.
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    let method = method_label(request.method());
    let span = tracing::debug_span!(
        "request",
        method = %request.method(),
        uri = %redact_uri(request.uri()),
        version = ?request.version(),
        "otel.name" = %format_args!("{method} {route}"),
        "otel.kind" = "server",
        "http.request.method" = method,
        "http.route" = route,
        "http.response.status_code" = tracing::field::Empty,
        "otel.status_code" = tracing::field::Empty,
    );
    if !span.is_disabled() {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        if let Some(traceparent) = header("traceparent") {
            let parent = genq_core::trace::TraceParent::parse(traceparent, header("tracestate"));
            genq_core::trace::set_parent(&span, parent.as_ref());
        }
    }
    span
}

/// The URI as logged: every `access_token` value in the query replaced.
pub fn redact_uri(uri: &axum::http::Uri) -> String {
    let Some(query) = uri.query() else {
        return uri.path().to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key == "access_token" => format!("{key}=[redacted]"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{}?{}", uri.path(), query.join("&"))
}

/// The method as a metric label: one of the methods the API routes, or
/// `other`. A client may send any method token, and labels must stay few.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts responses by route template (never the raw path), method label
/// and status.
async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = method_label(request.method());
    let span = tracing::Span::current();
    let response = next.run(request).await;
    span.record("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_tokens_are_redacted_from_logged_uris() {
        let uri: axum::http::Uri = "/v1/events?after=3&access_token=eyJ.secret.sig&x=1"
            .parse()
            .unwrap();
        let logged = redact_uri(&uri);
        assert_eq!(logged, "/v1/events?after=3&access_token=[redacted]&x=1");
        assert!(!logged.contains("secret"));
    }

    #[test]
    fn made_up_methods_share_one_label() {
        let made_up = axum::http::Method::from_bytes(&[b'X'; 4096]).unwrap();
        assert_eq!(method_label(&made_up), "other");
        assert_eq!(method_label(&axum::http::Method::POST), "POST");
    }
}
