//! The handlers' error type: a wire error code and a message for the user.
//! Store failures map to UNAVAILABLE (retryable), never to a silent success.

use dak_proto::v1::{self, ErrorCode};
use dak_store::StoreError;

#[derive(Debug)]
pub struct ApiError(pub v1::Error);

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError(v1::Error::new(code, message))
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.0.retry_after_secs = secs.min(u32::MAX as u64) as u32;
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TooManyDevices { .. } => {
                ApiError::new(ErrorCode::TooManyDevices, e.to_string())
            }
            StoreError::Full => {
                tracing::error!("store is full; refusing writes");
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the server is out of storage; nothing was stored, try again later",
                )
            }
            StoreError::NotFound(what) => {
                ApiError::new(ErrorCode::BadRequest, format!("{what} not found"))
            }
            StoreError::Unavailable(_) | StoreError::Backend(_) => {
                tracing::error!(error = %e, "store error");
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the server could not store this; nothing was stored, try again",
                )
            }
        }
    }
}
