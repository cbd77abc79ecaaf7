//! Request input: JSON bodies parsed with the failing field named, size limits mapped to 413,
//! read-consistency options, and ids generated for create requests that carry none.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::Query;
use axum::http::StatusCode;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::ApiError;

/// Largest request body the API accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Unwraps a body, turning an oversized one into 413 with the limit in the message.
pub fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body exceeds {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::bad_request(format!("cannot read request body: {e}"))
        }
    })
}

/// Parses a JSON body; the error names the field at fault.
pub fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request(
            "request body is empty; send a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("malformed JSON: {inner}"))
        } else if path == "." || path.is_empty() {
            ApiError::bad_request(format!("invalid request: {inner}"))
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                field_message(&path, &inner.to_string()),
            )
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// `path: message`, without serde's internal type names and without naming the field twice
/// (the domain's own messages already start with it).
fn field_message(path: &str, inner: &str) -> String {
    let inner = if inner.contains("untagged enum RawId") {
        "must be a string or a whole number (ids are kept as strings)"
    } else {
        inner
    };
    if inner.starts_with(&format!("{path}: ")) {
        inner.to_string()
    } else {
        format!("{path}: {inner}")
    }
}

/// Query options of read routes; unknown keys are ignored so cache-busters do no harm.
#[derive(Debug, Default, Deserialize)]
pub struct ReadOptions {
    pub consistency: Option<String>,
    pub status: Option<String>,
}

impl ReadOptions {
    /// `true` for the default linearizable read, `false` for `?consistency=stale`.
    pub fn linearizable(&self) -> Result<bool, ApiError> {
        match self
            .consistency
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("linearizable") | Some("strong") => Ok(true),
            Some("stale") | Some("local") => Ok(false),
            Some(other) => Err(ApiError::bad_request(format!(
                "consistency: must be 'linearizable' (default) or 'stale', got {other:?}"
            ))),
        }
    }
}

/// A short random id for create requests without one, e.g. `job-3f9a1c2b`.
pub fn generated_id(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::thread_rng().gen::<u32>())
}

/// Unwraps a query string, answering a malformed one in the API's error shape.
pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))
}
