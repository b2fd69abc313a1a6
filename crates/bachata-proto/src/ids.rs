//! Validated identifiers. Holding a [`Channel`] means its text was checked.

use std::fmt;
use std::sync::Arc;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdError {
    pub what: &'static str,
    pub min: usize,
    pub max: usize,
    /// Whether control characters are refused too (they are in names,
    /// not in message ids), so the reason states the rule that applies.
    pub no_control: bool,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} must be {}..={} bytes", self.what, self.min, self.max)?;
        if self.no_control {
            f.write_str(" without control characters")?;
        }
        Ok(())
    }
}

impl std::error::Error for IdError {}

fn check(text: &str, what: &'static str, max: usize, allow_control: bool) -> Result<(), IdError> {
    let ok = !text.is_empty()
        && text.len() <= max
        && (allow_control || !text.chars().any(char::is_control));
    if ok {
        Ok(())
    } else {
        Err(IdError {
            what,
            min: 1,
            max,
            no_control: !allow_control,
        })
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, $allow_control:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The longest accepted text, in bytes.
            pub const MAX_BYTES: usize = $max;

            /// Checks `text` and wraps it.
            pub fn new(text: &str) -> Result<Self, IdError> {
                check(text, $what, $max, $allow_control)?;
                Ok(Self(Arc::from(text)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A channel: a user id or any string of 1..=128 bytes without control
    /// characters. Every connection is bound to one.
    Channel,
    "channel",
    128,
    false
);
id_type!(
    /// A group of channels (the `dest` of a `"group"` message), 1..=128 bytes
    /// without control characters.
    GroupId,
    "group",
    128,
    false
);
id_type!(
    /// A device of a channel, 1..=64 bytes without control characters. Each
    /// device acknowledges messages on its own.
    DeviceId,
    "device",
    64,
    false
);
id_type!(
    /// A message id chosen by the sender, 1..=128 bytes.
    MessageId,
    "id",
    128,
    true
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_limits() {
        assert!(Channel::new("alice").is_ok());
        assert!(Channel::new("").is_err());
        assert!(Channel::new(&"a".repeat(128)).is_ok());
        assert!(Channel::new(&"a".repeat(129)).is_err());
        assert!(Channel::new("a\nb").is_err());
        assert!(Channel::new("a\u{7f}").is_err());
        assert!(Channel::new("ünïcødé").is_ok());
    }

    #[test]
    fn device_limits() {
        assert!(DeviceId::new(&"d".repeat(64)).is_ok());
        assert!(DeviceId::new(&"d".repeat(65)).is_err());
    }

    #[test]
    fn message_id_allows_any_text() {
        assert!(MessageId::new("a\tb").is_ok());
        assert!(MessageId::new("").is_err());
        assert!(MessageId::new(&"i".repeat(129)).is_err());
    }
}
