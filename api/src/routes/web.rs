//! The pages served at `/` (users) and `/admin` (the operator console),
//! built from `web/` into `web/dist/` and embedded in the binary so that a
//! build needs no Node, and the settings they read from `GET /web/config.json`.

use std::sync::LazyLock;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::state::AppState;

/// One embedded file of the page, with its validator.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    etag: HeaderValue,
}

impl Asset {
    fn new(body: &'static [u8], content_type: &'static str) -> Self {
        let digest = hex::encode(Sha256::digest(body));
        let etag = HeaderValue::from_str(&format!("\"{}\"", &digest[..32]))
            .expect("a hex digest is a valid header value");
        Self {
            body,
            content_type,
            etag,
        }
    }
}

static INDEX: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_bytes!("../../../web/dist/index.html"),
        "text/html; charset=utf-8",
    )
});
static APP_JS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_bytes!("../../../web/dist/app.js"),
        "text/javascript; charset=utf-8",
    )
});
static ADMIN_HTML: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_bytes!("../../../web/dist/admin.html"),
        "text/html; charset=utf-8",
    )
});
static ADMIN_JS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_bytes!("../../../web/dist/admin.js"),
        "text/javascript; charset=utf-8",
    )
});
static APP_CSS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_bytes!("../../../web/dist/app.css"),
        "text/css; charset=utf-8",
    )
});

/// What the page may load: only itself and this API. `blob:` is the video
/// fetched with the bearer token; `data:` the empty favicon.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; media-src 'self' blob:; img-src 'self' data:; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the page.
pub async fn index(headers: HeaderMap) -> Response {
    page(&INDEX, &headers)
}

/// `GET /admin`: the operator console. Served to anyone, like `/`: it holds
/// no data; every read and action is an admin API call that checks the role.
pub async fn admin(headers: HeaderMap) -> Response {
    page(&ADMIN_HTML, &headers)
}

/// `GET /assets/admin.js`.
pub async fn admin_js(headers: HeaderMap) -> Response {
    serve(&ADMIN_JS, &headers)
}

/// An HTML page with the headers that confine it.
fn page(asset: &Asset, headers: &HeaderMap) -> Response {
    let mut response = serve(asset, headers);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// `GET /assets/app.js`.
pub async fn app_js(headers: HeaderMap) -> Response {
    serve(&APP_JS, &headers)
}

/// `GET /assets/app.css`.
pub async fn app_css(headers: HeaderMap) -> Response {
    serve(&APP_CSS, &headers)
}

/// The file, or 304 when the browser's copy is current. The names don't
/// change between releases, so browsers revalidate on every load
/// (`no-cache`) and the ETag makes that a 304 without a body.
fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == "*" || t.as_bytes() == asset.etag.as_bytes())
        });
    let common: [(HeaderName, HeaderValue); 3] = [
        (header::ETAG, asset.etag.clone()),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        StatusCode::OK,
        common,
        [(header::CONTENT_TYPE, asset.content_type)],
        asset.body,
    )
        .into_response()
}

/// What the page needs to know about this deployment.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebConfig {
    /// Where to buy credits (`web.pricing_url`): a path on this site or a URL.
    #[schema(example = "/pricing")]
    pub pricing_url: String,
    /// Whether `POST /v1/dev/sign-in` is on (`web.dev_sign_in`).
    pub dev_sign_in: bool,
    /// Where tokens carry the operator role (`auth.role_claim`: a claim
    /// name, or a JSON pointer); the console reads it to offer only the
    /// actions the role allows (the API decides).
    #[schema(example = "role")]
    pub role_claim: String,
}

/// The page's settings.
#[utoipa::path(get, path = "/web/config.json", tag = "web", operation_id = "get_web_config",
    responses((status = 200, description = "The page's settings", body = WebConfig)))]
pub async fn config(State(state): State<AppState>) -> impl IntoResponse {
    let web = &state.settings.web;
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Json(WebConfig {
            pricing_url: web.pricing_url.clone(),
            dev_sign_in: web.dev_sign_in,
            role_claim: state.settings.auth.role_claim.trim().to_owned(),
        }),
    )
}
