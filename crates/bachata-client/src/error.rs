//! What can go wrong, and the server's refusal of a message.

use bachata_proto::ErrorCode;

/// The server refused a message (its 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rejected ({code}): {reason}")]
pub struct Rejected {
    /// The wire code (`queue_full`, `no_route`, ...).
    pub code: String,
    pub reason: String,
}

impl Rejected {
    /// The code as a typed [`ErrorCode`], when it is one the client knows.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_wire(&self.code)
    }

    /// True when sending the same message again later may succeed
    /// (`queue_full`, `store_full`, `rate_limited`, `unavailable`).
    pub fn is_retryable(&self) -> bool {
        self.error_code().is_some_and(ErrorCode::is_retryable)
    }
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the server refused the connection: HTTP {status}: {reason}")]
    Refused { status: u16, reason: String },
    #[error(transparent)]
    Rejected(#[from] Rejected),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("the client is closed")]
    Closed,
    #[error("invalid input: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_read_every_wire_code() {
        let rejected = |code: &str| Rejected {
            code: code.into(),
            reason: String::new(),
        };
        let full = rejected("store_full");
        assert_eq!(full.error_code(), Some(ErrorCode::StoreFull));
        assert!(full.is_retryable());
        for code in ErrorCode::ALL {
            assert_eq!(rejected(code.as_str()).error_code(), Some(code));
        }
        assert_eq!(rejected("app_muted").error_code(), None);
        assert!(!rejected("no_route").is_retryable());
    }
}
