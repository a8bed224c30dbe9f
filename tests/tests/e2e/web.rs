//! The page at `/` (embedded from web/dist), its settings at
//! `/web/config.json`, and the development sign-in it may offer. What the
//! page does in a browser is tested by scripts/browser-test.sh.

use crate::harness::{test_settings, TestEnv};
use reqwest::header;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_types_and_validators() {
    let env = TestEnv::new().await;
    for (path, content_type, marker) in [
        ("/", "text/html; charset=utf-8", "<title>genq"),
        (
            "/assets/app.js",
            "text/javascript; charset=utf-8",
            "/v1/events",
        ),
        (
            "/assets/app.css",
            "text/css; charset=utf-8",
            ":focus-visible",
        ),
        ("/admin", "text/html; charset=utf-8", "operator console"),
        (
            "/assets/admin.js",
            "text/javascript; charset=utf-8",
            "/v1/admin/dlq",
        ),
    ] {
        let response = env
            .client
            .get(format!("{}{path}", env.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers[header::CONTENT_TYPE], content_type, "{path}");
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache", "{path}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        let etag = headers[header::ETAG].to_str().unwrap().to_owned();
        let body = response.text().await.unwrap();
        assert!(body.contains(marker), "{path} lacks {marker:?}");
        // The browser's copy is current: 304, no body.
        let again = env
            .client
            .get(format!("{}{path}", env.base))
            .header(header::IF_NONE_MATCH, &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(again.headers()[header::ETAG], etag.as_str());
        assert!(again.text().await.unwrap().is_empty());
    }
    // Each page may load only itself and this API.
    for path in ["/", "/admin"] {
        let page = env
            .client
            .get(format!("{}{path}", env.base))
            .send()
            .await
            .unwrap();
        let csp = page.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
            "{path}"
        );
        assert_eq!(page.headers()[header::X_FRAME_OPTIONS], "DENY", "{path}");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn the_page_settings_and_a_dev_sign_in_that_is_off_by_default() {
    let env = TestEnv::new().await;
    let (status, config) = env
        .call(Method::GET, "/web/config.json", None, None, &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        config,
        json!({"pricing_url": "/pricing", "dev_sign_in": false, "role_claim": "role"})
    );
    let (status, body) = env
        .call(
            Method::POST,
            "/v1/dev/sign-in",
            None,
            Some(&json!({"name": "ada"})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    env.cleanup().await;
}

#[tokio::test]
async fn dev_sign_in_gives_a_user_token_for_dev_name() {
    let mut settings = test_settings();
    settings.web.dev_sign_in = true;
    settings.web.pricing_url = "https://shop.example/credits".into();
    let env = TestEnv::with_settings(settings).await;
    let (_, config) = env
        .call(Method::GET, "/web/config.json", None, None, &[])
        .await;
    assert_eq!(
        config,
        json!({"pricing_url": "https://shop.example/credits", "dev_sign_in": true, "role_claim": "role"})
    );
    let (status, body) = env
        .call(
            Method::POST,
            "/v1/dev/sign-in",
            None,
            Some(&json!({"name": "ada"})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sub"], "dev:ada");
    let token = body["token"].as_str().unwrap();
    // A normal user with the initial credits; not an admin.
    let (status, credits) = env.get("/v1/credits", token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(credits["available"], 8);
    let (status, _) = env.get("/v1/admin/ledger/verify", token).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for bad in [
        json!({"name": ""}),
        json!({"name": "a b"}),
        json!({"name": "x".repeat(65)}),
        json!({}),
    ] {
        let (status, body) = env
            .call(Method::POST, "/v1/dev/sign-in", None, Some(&bad), &[])
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["field"], "name", "{bad}: {body}");
    }
    env.cleanup().await;
}
