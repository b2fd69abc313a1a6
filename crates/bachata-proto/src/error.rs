use std::fmt;

/// The wire error codes of a 400 rejection (protocol.md section 3).
///
/// Grouped by what the client should do: fix the frame (`InvalidJson`,
/// `InvalidMessage`, `NoRoute`, `Forbidden`, `BadSignature`) or retry later
/// (`QueueFull`, `StoreFull`, `RateLimited`, `Unavailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidJson,
    InvalidMessage,
    NoRoute,
    Forbidden,
    BadSignature,
    QueueFull,
    /// The server keeps `--max-retained-bytes` of pending payloads already
    /// (protocol.md section 9): retry once receivers caught up.
    StoreFull,
    RateLimited,
    Unavailable,
}

impl ErrorCode {
    /// Every code, so that a client can read them all back (a test checks
    /// that none is missing).
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidMessage,
        ErrorCode::NoRoute,
        ErrorCode::Forbidden,
        ErrorCode::BadSignature,
        ErrorCode::QueueFull,
        ErrorCode::StoreFull,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
    ];

    /// The code whose wire text is `text`, if it is one of ours.
    pub fn from_wire(text: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// The code as it appears in the `error` field of a 400.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::NoRoute => "no_route",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::StoreFull => "store_full",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    /// True when resending the same message later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::QueueFull
                | ErrorCode::StoreFull
                | ErrorCode::RateLimited
                | ErrorCode::Unavailable
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
    /// A key repeated inside one object nested in field `field` (`data` or
    /// an unknown field): refused like a repeated field, so that every
    /// reader of the message sees the same values.
    #[error("key `{key}` appears twice in one object inside `{field}`")]
    DuplicateKey { field: String, key: String },
    #[error("`type` must be a string (data message) or an integer (transport message)")]
    BadType,
    #[error("field `{field}` must be {expected}")]
    FieldType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("field `{field}` must be {min}..={max} bytes")]
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
            | ProtoError::DuplicateKey { .. }
            | ProtoError::BadType
            | ProtoError::FieldType { .. }
            | ProtoError::FieldLength { .. }
            | ProtoError::UnexpectedTransport(_) => ErrorCode::InvalidMessage,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed_once_and_reads_back() {
        for code in ErrorCode::ALL {
            // An exhaustive match: a new code fails to compile here until
            // it is added to `ALL` (and the count below).
            match code {
                ErrorCode::InvalidJson
                | ErrorCode::InvalidMessage
                | ErrorCode::NoRoute
                | ErrorCode::Forbidden
                | ErrorCode::BadSignature
                | ErrorCode::QueueFull
                | ErrorCode::StoreFull
                | ErrorCode::RateLimited
                | ErrorCode::Unavailable => {}
            }
            assert_eq!(ErrorCode::from_wire(code.as_str()), Some(code));
        }
        let mut texts: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        texts.dedup();
        assert_eq!(texts.len(), 9);
        assert_eq!(
            ErrorCode::from_wire("store_full"),
            Some(ErrorCode::StoreFull)
        );
        assert!(ErrorCode::StoreFull.is_retryable());
        assert_eq!(ErrorCode::from_wire("app_muted"), None);
    }
}
