//! Who is connecting (protocol.md section 2): a JWT (`?token=` or
//! `Authorization: Bearer`) when JWT auth is configured, else `?channel=`
//! where anonymous channels are allowed.
//!
//! Tokens: HS256 with `--jwt-secret`, or RS256 / ES256 with a PEM public key
//! (`--jwt-public-key`). Claims: `sub` = channel (required), `exp`
//! (required, and at most `--max-token-lifetime` ahead: a token that never
//! expires is a liability), `nbf` (honoured when present), optional
//! `device`. Clocks may differ by [`LEEWAY_SECS`].
//!
//! The query is read strictly (protocol.md section 9): a parameter that is not
//! UTF-8 once percent-decoded, or that comes twice, refuses the handshake
//! instead of being guessed at; so does a token given both in the query
//! and in a header, and a `?channel=` that differs from the token's.

use std::path::Path;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use bachata_core::Device;
use bachata_proto::{Channel, DeviceId};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::Deserialize;

/// Allowed clock difference for `exp` and `nbf`, in seconds.
pub(crate) const LEEWAY_SECS: u64 = 5;

/// A checked connection identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub channel: Channel,
    pub device: Device,
}

/// Why a handshake is refused: the one-line reason of the 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(pub String);

/// Why the JWT settings are unusable (a start-up error).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read JWT public key {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is neither an RSA nor an EC public key in PEM format")]
    Format { path: std::path::PathBuf },
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    device: Option<String>,
    /// Checked by jsonwebtoken to be present and not past; read here for the
    /// upper bound. A float, as some issuers write one.
    #[serde(default)]
    exp: Option<f64>,
}

/// The query parameters of a `/messages` handshake, percent-decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HandshakeQuery {
    pub channel: Option<String>,
    pub device: Option<String>,
    pub token: Option<String>,
}

impl HandshakeQuery {
    /// Reads `channel`, `device` and `token` from a raw query string
    /// (`application/x-www-form-urlencoded`: `+` is a space); other
    /// parameters are ignored. Refuses a value that is not UTF-8 once
    /// decoded (rather than replacing bytes, which would connect a client
    /// to a channel it did not name) and a parameter given twice.
    pub(crate) fn parse(raw: Option<&str>) -> Result<HandshakeQuery, Refused> {
        let mut query = HandshakeQuery::default();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "channel" => &mut query.channel,
                "device" => &mut query.device,
                "token" => &mut query.token,
                _ => continue,
            };
            if slot.is_some() {
                return Err(Refused(format!("?{name}= appears twice; send it once")));
            }
            let plus_as_space = value.replace('+', " ");
            let decoded = percent_encoding::percent_decode_str(&plus_as_space)
                .decode_utf8()
                .map_err(|_| {
                    Refused(format!("?{name}= is not valid UTF-8 once percent-decoded"))
                })?;
            *slot = Some(decoded.into_owned());
        }
        Ok(query)
    }
}

/// How this server authenticates WebSocket clients.
#[derive(Clone)]
pub(crate) enum Auth {
    /// `?channel=` (and `?device=`), no proof.
    Anonymous,
    /// A signed JWT.
    Jwt {
        key: DecodingKey,
        validation: Box<Validation>,
        /// How far ahead `exp` may be.
        max_lifetime: Duration,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Anonymous => f.write_str("Anonymous"),
            Auth::Jwt { validation, .. } => write!(f, "Jwt({:?})", validation.algorithms),
        }
    }
}

fn validation(algorithm: Algorithm) -> Box<Validation> {
    let mut v = Validation::new(algorithm);
    v.leeway = LEEWAY_SECS;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp", "sub"]);
    Box::new(v)
}

impl Auth {
    /// No JWT is configured: `?channel=` names the channel.
    pub(crate) fn is_anonymous(&self) -> bool {
        matches!(self, Auth::Anonymous)
    }

    /// From the configuration: a secret, a public key file, or neither;
    /// tokens whose `exp` is more than `max_lifetime` ahead are refused.
    pub(crate) fn new(
        secret: Option<&str>,
        public_key: Option<&Path>,
        max_lifetime: Duration,
    ) -> Result<Auth, KeyError> {
        if let Some(secret) = secret {
            return Ok(Auth::Jwt {
                key: DecodingKey::from_secret(secret.as_bytes()),
                validation: validation(Algorithm::HS256),
                max_lifetime,
            });
        }
        let Some(path) = public_key else {
            return Ok(Auth::Anonymous);
        };
        let pem = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            return Ok(Auth::Jwt {
                key,
                validation: validation(Algorithm::RS256),
                max_lifetime,
            });
        }
        if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
            return Ok(Auth::Jwt {
                key,
                validation: validation(Algorithm::ES256),
                max_lifetime,
            });
        }
        Err(KeyError::Format {
            path: path.to_owned(),
        })
    }

    /// Checks a handshake's query and headers.
    pub(crate) fn identify(
        &self,
        query: &HandshakeQuery,
        headers: &HeaderMap,
    ) -> Result<Identity, Refused> {
        let refuse = |m: String| Err(Refused(m));
        let asked_device = match query.device.as_deref().map(DeviceId::new) {
            None => None,
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => return refuse(format!("invalid device: {e}")),
        };
        match self {
            Auth::Anonymous => {
                let Some(channel) = &query.channel else {
                    return refuse("missing ?channel=<id> (anonymous channels are on)".into());
                };
                let channel =
                    Channel::new(channel).map_err(|e| Refused(format!("invalid channel: {e}")))?;
                Ok(Identity {
                    channel,
                    device: asked_device,
                })
            }
            Auth::Jwt {
                key,
                validation,
                max_lifetime,
            } => {
                let Some(token) = token(query, headers)? else {
                    return refuse(
                        "missing token: send a JWT as ?token= or Authorization: Bearer \
                         (anonymous channels are off)"
                            .into(),
                    );
                };
                let claims = decode::<Claims>(token, key, validation)
                    .map_err(|e| Refused(format!("invalid token: {}", reason(&e))))?
                    .claims;
                let latest = now_secs() + max_lifetime.as_secs_f64() + LEEWAY_SECS as f64;
                if claims.exp.is_some_and(|exp| exp > latest) {
                    return refuse(format!(
                        "invalid token: exp is more than max_token_lifetime ({}) ahead",
                        humantime::format_duration(*max_lifetime)
                    ));
                }
                let sub = claims.sub.as_deref().ok_or_else(|| {
                    Refused("invalid token: missing a required claim (sub, exp)".into())
                })?;
                let channel =
                    Channel::new(sub).map_err(|e| Refused(format!("invalid token: sub: {e}")))?;
                if query.channel.as_deref().is_some_and(|c| c != sub) {
                    return refuse(format!(
                        "?channel= differs from the token's channel {sub}; leave it out"
                    ));
                }
                let claimed = match claims.device.as_deref().map(DeviceId::new) {
                    None => None,
                    Some(Ok(d)) => Some(d),
                    Some(Err(e)) => return refuse(format!("invalid token: device: {e}")),
                };
                let device = match (claimed, asked_device) {
                    (Some(c), Some(a)) if c != a => {
                        return refuse(format!("?device={a} differs from the token's device {c}"));
                    }
                    (Some(c), _) => Some(c),
                    (None, asked) => asked,
                };
                Ok(Identity { channel, device })
            }
        }
    }
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The token from `?token=` or `Authorization: Bearer`, if any; both at once
/// is refused (which one would count?).
fn token<'a>(
    query: &'a HandshakeQuery,
    headers: &'a HeaderMap,
) -> Result<Option<&'a str>, Refused> {
    let mut authorization = headers.get_all(AUTHORIZATION).iter();
    let header = authorization.next();
    if authorization.next().is_some() {
        return Err(Refused("Authorization appears twice; send it once".into()));
    }
    let Some(value) = header else {
        return Ok(query.token.as_deref());
    };
    if query.token.is_some() {
        return Err(Refused(
            "a token both in ?token= and in Authorization; send it once".into(),
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| Refused("Authorization header is not text".into()))?;
    match value.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(t.trim())),
        _ => Err(Refused("Authorization must be `Bearer <token>`".into())),
    }
}

/// A short reason that tells the client what to fix, without internals.
fn reason(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "expired",
        K::ImmatureSignature => "not valid yet (nbf)",
        K::InvalidSignature => "wrong signature",
        K::InvalidAlgorithm | K::InvalidAlgorithmName => "wrong algorithm",
        K::MissingRequiredClaim(_) => "missing a required claim (sub, exp)",
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => "malformed",
        _ => "rejected",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(raw: &str) -> Result<HandshakeQuery, Refused> {
        HandshakeQuery::parse(Some(raw))
    }

    #[test]
    fn the_query_is_decoded_strictly() {
        let q = query("channel=al%C3%ADce&device=a+b&x=1&x=2").expect("valid");
        assert_eq!(q.channel.as_deref(), Some("alíce"));
        assert_eq!(q.device.as_deref(), Some("a b"));
        assert_eq!(q.token, None);
        let e = query("channel=%ff").expect_err("not UTF-8");
        assert!(e.0.contains("UTF-8"), "{e}");
        for twice in ["token=a&token=b", "channel=a&channel=a", "device=&device=x"] {
            let e = query(twice).expect_err(twice);
            assert!(e.0.contains("twice"), "{e}");
        }
        assert_eq!(HandshakeQuery::parse(None), Ok(HandshakeQuery::default()));
        assert_eq!(
            query("channel").expect("empty").channel.as_deref(),
            Some("")
        );
    }
}
