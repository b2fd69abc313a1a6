use std::fmt;

/// The wire error codes of a 400 rejection (`spec.md` section 3).
///
/// Grouped by what the client should do: fix the frame (`InvalidJson`,
/// `InvalidMessage`, `NoRoute`, `Forbidden`, `BadSignature`) or retry later
/// (`QueueFull`, `RateLimited`, `Unavailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidJson,
    InvalidMessage,
    NoRoute,
    Forbidden,
    BadSignature,
    QueueFull,
    RateLimited,
    Unavailable,
}

impl ErrorCode {
    /// The code as it appears in the `error` field of a 400.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::NoRoute => "no_route",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    /// True when resending the same message later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::QueueFull | ErrorCode::RateLimited | ErrorCode::Unavailable
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a client frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("frame is not valid JSON: {0}")]
    Syntax(String),
    #[error("JSON nesting deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("a message must be a JSON object")]
    NotAnObject,
    #[error("field `{0}` appears twice")]
    DuplicateField(String),
    #[error("`type` must be a string (data message) or an integer (transport message)")]
    BadType,
    #[error("field `{field}` must be {expected}")]
    FieldType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("field `{field}` must be {min}..={max} bytes without control characters")]
    FieldLength {
        field: &'static str,
        min: usize,
        max: usize,
    },
    #[error("transport type {0} is not accepted from clients")]
    UnexpectedTransport(i64),
}

impl ProtoError {
    /// The wire code of the 400 that reports this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtoError::Syntax(_) | ProtoError::TooDeep { .. } => ErrorCode::InvalidJson,
            ProtoError::NotAnObject
            | ProtoError::DuplicateField(_)
            | ProtoError::BadType
            | ProtoError::FieldType { .. }
            | ProtoError::FieldLength { .. }
            | ProtoError::UnexpectedTransport(_) => ErrorCode::InvalidMessage,
        }
    }
}
