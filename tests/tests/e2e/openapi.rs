//! The committed OpenAPI document (`api/openapi.json`, from which clients are
//! generated) is the one the API serves.

use crate::harness::TestEnv;
use reqwest::{Method, StatusCode};
use serde_json::Value;

const COMMITTED: &str = include_str!("../../../api/openapi.json");

#[tokio::test]
async fn the_served_document_is_the_committed_copy() {
    let env = TestEnv::new().await;
    let (s, served) = env
        .call(Method::GET, "/openapi.json", None, None, &[])
        .await;
    assert_eq!(s, StatusCode::OK);
    env.cleanup().await;
    let committed: Value = serde_json::from_str(COMMITTED).expect("api/openapi.json is JSON");
    assert!(
        served == committed,
        "the API serves an OpenAPI document that differs from api/openapi.json; \
         regenerate it with `cargo run -q -p genq-api -- openapi > api/openapi.json` \
         and commit it"
    );
    // The committed copy is exactly what `genq-api openapi` prints.
    assert!(
        COMMITTED == genq_api::openapi::document_json(),
        "api/openapi.json is not formatted as `genq-api openapi` prints it; \
         regenerate it with `cargo run -q -p genq-api -- openapi > api/openapi.json`"
    );
}

#[tokio::test]
async fn a_deployment_with_models_documents_exactly_their_names() {
    let mut settings = crate::harness::test_settings();
    for name in ["fast", "veo"] {
        settings.models.insert(
            name.into(),
            genq_core::config::ModelSettings {
                cost: Some(5),
                ..Default::default()
            },
        );
    }
    let env = TestEnv::with_settings(settings).await;
    let (_, served) = env
        .call(Method::GET, "/openapi.json", None, None, &[])
        .await;
    let model = &served["components"]["schemas"]["CreateGeneration"]["properties"]["model"];
    assert_eq!(model["enum"], serde_json::json!(["fast", "veo"]), "{model}");
    // Without models the field is not documented at all: any value is refused.
    let committed: Value = serde_json::from_str(COMMITTED).unwrap();
    assert!(
        committed["components"]["schemas"]["CreateGeneration"]["properties"]["model"].is_null()
    );
    env.cleanup().await;
}
