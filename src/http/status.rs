//! Errors at the HTTP edge: each protocol [`Code`] has its HTTP status here, and the few
//! failures only HTTP has (a foreign origin, a body that stopped arriving) have theirs.

use std::borrow::Cow;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::{ChatError, Code};

/// The HTTP status for a protocol code.
pub fn status_of(code: Code) -> StatusCode {
    match code {
        Code::BadArgs | Code::BadEncoding => StatusCode::BAD_REQUEST,
        Code::BadCredentials | Code::AuthRequired => StatusCode::UNAUTHORIZED,
        Code::UnknownCommand | Code::NoSuchUser | Code::NoSuchRoom => StatusCode::NOT_FOUND,
        Code::NotMember | Code::Forbidden => StatusCode::FORBIDDEN,
        Code::UserExists => StatusCode::CONFLICT,
        Code::LineTooLong => StatusCode::PAYLOAD_TOO_LARGE,
        Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Code::ServerBusy => StatusCode::SERVICE_UNAVAILABLE,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error answer: `{"status": "<CODE>", "message": "..."}` with its HTTP status.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Cow<'static, str>,
}

pub type HttpResult<T> = Result<T, HttpError>;

impl HttpError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> HttpError {
        HttpError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<ChatError> for HttpError {
    fn from(error: ChatError) -> HttpError {
        // Logged here, where it is answered, once.
        error.log();
        // A store that cannot be reached: the request may succeed if retried.
        let status = if error.unavailable {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            status_of(error.code)
        };
        HttpError::new(status, error.code.as_str(), error.message)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = json!({ "status": self.code, "message": self.message });
        (self.status, Json(body)).into_response()
    }
}

impl IntoResponse for ChatError {
    fn into_response(self) -> Response {
        HttpError::from(self).into_response()
    }
}
