//! Request extractors whose rejections use the API's error shape: JSON bodies
//! (size-limited, unknown fields refused, the failing field named) and queries.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::{header, request::Parts};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON body, parsed with the field that failed named in the error.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let mime = v.split(';').next().unwrap_or("").trim();
                mime.eq_ignore_ascii_case("application/json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::invalid(
                "body",
                "The body must be JSON, sent with Content-Type: application/json.",
            ));
        }
        let limit = state.settings.api.body_limit_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| {
                ApiError::invalid("body", format!("The body must be at most {limit} bytes."))
            })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses JSON, naming the failing field: `prompt`, `aspect_ratio`, or the
/// unknown or missing field serde reports.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let value = result.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        let field = if path != "." && !path.is_empty() {
            path
        } else {
            quoted_name(&message).unwrap_or_else(|| "body".into())
        };
        ApiError::invalid(&field, format!("Invalid request: {}", clean(&message)))
    })?;
    de.end().map_err(|_| {
        ApiError::invalid(
            "body",
            "Invalid request: trailing characters after the JSON value.",
        )
    })?;
    Ok(value)
}

/// Deserializes a JSON integer, also written with a zero fraction (`35.0`),
/// which JSON Schema counts as an integer too.
pub fn integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    use serde::de::Error;
    let n = serde_json::Number::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        _ => Err(D::Error::custom(format!("expected an integer, found {n}"))),
    }
}

/// [`integer`] for optional fields.
pub fn opt_integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(serde::Deserialize)]
    struct Wrap(#[serde(deserialize_with = "integer")] i64);
    Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
}

/// A field that may be absent (`None`), `null` (`Some(None)`) or an
/// integer; with `#[serde(default)]`.
pub fn opt_opt_integer<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<i64>>, D::Error> {
    opt_integer(d).map(Some)
}

/// The first name between backticks in a serde message (`unknown field `x``).
fn quoted_name(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

/// serde's message without its "at line 1 column 5" suffix.
fn clean(message: &str) -> &str {
    message.split(" at line ").next().unwrap_or(message)
}

/// A path parameter. One that can't be read (percent-encoded bytes that are
/// not UTF-8) names nothing: a 404 in the error shape, as a malformed ID is.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(e) => Err(ApiError::NotFound(format!(
                "Nothing has this name: {}.",
                e.body_text().trim_end_matches('.')
            ))),
        }
    }
}

/// A query string, with the error shape on rejection.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(e) => {
                let text = e.body_text();
                let message = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                let field = message.split(':').next().filter(|f| !f.contains(' '));
                Err(ApiError::invalid(
                    field.unwrap_or("query"),
                    format!("Invalid query: {message}"),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        prompt: String,
        n: Option<i64>,
    }

    fn field(err: ApiError) -> String {
        match err {
            ApiError::Invalid(i) => i.field,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn names_the_failing_field() {
        assert_eq!(
            field(parse_json::<Body>(br#"{"prompt": 1}"#).unwrap_err()),
            "prompt"
        );
        assert_eq!(
            field(parse_json::<Body>(br#"{"prompt": "a", "x": 1}"#).unwrap_err()),
            "x"
        );
        assert_eq!(field(parse_json::<Body>(br#"{}"#).unwrap_err()), "prompt");
        assert_eq!(
            field(parse_json::<Body>(br#"{"prompt": "a", "n": 1.5}"#).unwrap_err()),
            "n"
        );
        assert_eq!(
            field(parse_json::<Body>(b"{\"prompt\": \"a\"} x").unwrap_err()),
            "body"
        );
        let deep = "[".repeat(10_000);
        assert!(parse_json::<serde_json::Value>(deep.as_bytes()).is_err());
    }
}
