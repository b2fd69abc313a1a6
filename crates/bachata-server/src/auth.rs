//! Who is connecting (`spec.md` section 2): a JWT (`?token=` or
//! `Authorization: Bearer`) when JWT auth is configured, else `?channel=`
//! where anonymous channels are allowed.
//!
//! Tokens: HS256 with `--jwt-secret`, or RS256 / ES256 with a PEM public key
//! (`--jwt-public-key`). Claims: `sub` = channel (required), `exp`
//! (required: a token that never expires is a liability), `nbf` (honoured
//! when present), optional `device`. Clocks may differ by [`LEEWAY_SECS`].

use std::collections::HashMap;
use std::path::Path;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use bachata_core::Device;
use bachata_proto::{Channel, DeviceId};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::Deserialize;

/// Allowed clock difference for `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 5;

/// A checked connection identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub channel: Channel,
    pub device: Device,
}

/// Why a handshake is refused: the one-line reason of the 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

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
}

/// How this server authenticates WebSocket clients.
#[derive(Clone)]
pub enum Auth {
    /// `?channel=` (and `?device=`), no proof.
    Anonymous,
    /// A signed JWT.
    Jwt {
        key: DecodingKey,
        validation: Box<Validation>,
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
    /// From the configuration: a secret, a public key file, or neither.
    pub fn new(secret: Option<&str>, public_key: Option<&Path>) -> Result<Auth, KeyError> {
        if let Some(secret) = secret {
            return Ok(Auth::Jwt {
                key: DecodingKey::from_secret(secret.as_bytes()),
                validation: validation(Algorithm::HS256),
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
            });
        }
        if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
            return Ok(Auth::Jwt {
                key,
                validation: validation(Algorithm::ES256),
            });
        }
        Err(KeyError::Format {
            path: path.to_owned(),
        })
    }

    /// Checks a handshake's query and headers.
    pub fn identify(
        &self,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> Result<Identity, Refused> {
        let refuse = |m: String| Err(Refused(m));
        let asked_device = match query.get("device").map(|d| DeviceId::new(d)) {
            None => None,
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => return refuse(format!("invalid device: {e}")),
        };
        match self {
            Auth::Anonymous => {
                let Some(channel) = query.get("channel") else {
                    return refuse("missing ?channel=<id> (anonymous channels are on)".into());
                };
                let channel =
                    Channel::new(channel).map_err(|e| Refused(format!("invalid channel: {e}")))?;
                Ok(Identity {
                    channel,
                    device: asked_device,
                })
            }
            Auth::Jwt { key, validation } => {
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
                let sub = claims.sub.as_deref().ok_or_else(|| {
                    Refused("invalid token: missing a required claim (sub, exp)".into())
                })?;
                let channel =
                    Channel::new(sub).map_err(|e| Refused(format!("invalid token: sub: {e}")))?;
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

/// The token from `?token=` or `Authorization: Bearer`, if any.
fn token<'a>(
    query: &'a HashMap<String, String>,
    headers: &'a HeaderMap,
) -> Result<Option<&'a str>, Refused> {
    if let Some(t) = query.get("token") {
        return Ok(Some(t));
    }
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
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
