//! The one API error type and its one mapping to HTTP status and `{code, message}`.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use weft_proto::api::ErrorBody;

/// Everything a request can fail with. `code` strings are stable API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or a field is invalid (code says which).
    #[error("{message}")]
    Invalid {
        /// For example `malformed_json`, `invalid_cidr`, `invalid_name`.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// 401: no or unknown bearer credential.
    #[error("missing or invalid credential")]
    Unauthorized,
    /// 401: the join token is unknown.
    #[error("join token is not valid")]
    InvalidToken,
    /// 401: the registration signature does not verify.
    #[error("signature does not verify for this key, challenge and token")]
    BadSignature,
    /// 403: the node was disabled by an admin.
    #[error("node is disabled")]
    NodeDisabled,
    /// 403: the identity's proof of work is below the network's difficulty.
    #[error(
        "proof of work too weak: {achieved} bits, the network requires {required}. Mint a new \
         identity with at least {required} bits: stop weftd, move STATE_DIR/identity.key aside, \
         start weftd with --mint-difficulty {required} (or mint one with `weft identity new \
         --difficulty {required} --out STATE_DIR/identity.key`), then run `weft up` again"
    )]
    PowTooWeak {
        /// Bits the proof reaches.
        achieved: u32,
        /// Bits required.
        required: u32,
    },
    /// 403: the caller may not do this (code says which).
    #[error("{message}")]
    Forbidden {
        /// `route_not_permitted`.
        code: &'static str,
        /// Why, and what would permit it.
        message: String,
    },
    /// 404: the named object does not exist.
    #[error("{message}")]
    NotFound {
        /// `not_found`, `network_not_found`, `node_not_found`, `token_not_found`,
        /// `relay_not_found`.
        code: &'static str,
        /// What was not found.
        message: String,
    },
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: conflicts with existing state.
    #[error("{message}")]
    Conflict {
        /// `network_exists`, `cidr_overlap`, `name_taken`, `network_full`,
        /// `relay_exists`.
        code: &'static str,
        /// What conflicts.
        message: String,
    },
    /// 410: the join token can no longer be used.
    #[error("{message}")]
    TokenGone {
        /// `token_expired`, `token_exhausted`, `token_revoked`.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// 413.
    #[error("request body too large (limit {limit} bytes)")]
    PayloadTooLarge {
        /// The limit.
        limit: usize,
    },
    /// 415.
    #[error("request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// 422: well-formed but refused (a policy whose tests fail).
    #[error("{message}")]
    Unprocessable {
        /// `policy_tests_failed`.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// 429: a per-node or global limit was hit.
    #[error("{message}")]
    TooMany {
        /// `too_many_streams`.
        code: &'static str,
        /// Which limit.
        message: String,
    },
    /// 429 with `Retry-After`: a source sent too many unauthenticated requests.
    #[error("too many requests from this address; retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until a request would be accepted.
        retry_after_secs: u64,
    },
    /// 503: temporarily unable to serve (storage failure, overload, shutdown).
    #[error("{message}")]
    Unavailable {
        /// `storage_unavailable`, `too_many_challenges`, `shutting_down`.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// 500: a bug. Never caused by input.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// Shorthand for [`ApiError::Invalid`].
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            code,
            message: message.into(),
        }
    }

    /// Shorthand for [`ApiError::NotFound`].
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::NotFound {
            code,
            message: message.into(),
        }
    }

    /// Shorthand for [`ApiError::Conflict`].
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Conflict {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::InvalidToken | ApiError::BadSignature => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::NodeDisabled | ApiError::PowTooWeak { .. } | ApiError::Forbidden { .. } => {
                StatusCode::FORBIDDEN
            }
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::TokenGone { .. } => StatusCode::GONE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooMany { .. } | ApiError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Invalid { code, .. }
            | ApiError::Forbidden { code, .. }
            | ApiError::NotFound { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::TokenGone { code, .. }
            | ApiError::Unprocessable { code, .. }
            | ApiError::TooMany { code, .. }
            | ApiError::Unavailable { code, .. } => code,
            ApiError::Unauthorized => "unauthorized",
            ApiError::InvalidToken => "invalid_token",
            ApiError::BadSignature => "bad_signature",
            ApiError::NodeDisabled => "node_disabled",
            ApiError::PowTooWeak { .. } => "pow_too_weak",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Internal => "internal",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code().to_owned(),
            message: self.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), Json(self.body())).into_response();
        if let ApiError::RateLimited { retry_after_secs } = self {
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(retry_after_secs),
            );
        }
        if self.status() == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pow_too_weak_says_how_to_mint_again() {
        let msg = ApiError::PowTooWeak {
            achieved: 12,
            required: 26,
        }
        .to_string();
        assert!(msg.contains("12 bits, the network requires 26"), "{msg}");
        assert!(msg.contains("weftd with --mint-difficulty 26"), "{msg}");
        assert!(msg.contains("weft identity new --difficulty 26"), "{msg}");
    }

    #[test]
    fn every_error_is_4xx_or_5xx_with_a_code() {
        let all = [
            ApiError::invalid("malformed_json", "x"),
            ApiError::Unauthorized,
            ApiError::InvalidToken,
            ApiError::BadSignature,
            ApiError::NodeDisabled,
            ApiError::PowTooWeak {
                achieved: 3,
                required: 8,
            },
            ApiError::not_found("node_not_found", "x"),
            ApiError::MethodNotAllowed,
            ApiError::conflict("network_full", "x"),
            ApiError::TokenGone {
                code: "token_expired",
                message: "x".into(),
            },
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::RateLimited {
                retry_after_secs: 1,
            },
            ApiError::UnsupportedMediaType,
            ApiError::Unprocessable {
                code: "policy_tests_failed",
                message: "x".into(),
            },
            ApiError::TooMany {
                code: "too_many_streams",
                message: "x".into(),
            },
            ApiError::Unavailable {
                code: "storage_unavailable",
                message: "x".into(),
            },
            ApiError::Internal,
        ];
        for e in all {
            assert!(e.status().is_client_error() || e.status().is_server_error());
            assert!(!e.code().is_empty());
        }
    }
}
