//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{admin, credits, generations, health, ops, video};

#[derive(OpenApi)]
#[openapi(
    info(title = "genq", description = "Credit-metered AI video generation.", version = "1"),
    paths(
        generations::create, generations::list, generations::get, generations::cancel,
        video::video,
        credits::balance, credits::ledger,
        admin::add_credits,
        ops::diagnose, ops::jobs, ops::job, ops::dlq_list, ops::dlq_show, ops::dlq_replay,
        ops::dlq_discard, ops::ledger_verify,
        health::healthz, health::readyz, health::metrics,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}
