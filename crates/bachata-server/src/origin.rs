//! Browser origins and the `Host` header (protocol.md section 9).
//!
//! A browser sends cookies and reaches `localhost` for any page that asks,
//! so without these checks a page on any site could open a WebSocket to a
//! user's server and read their messages (cross-site WebSocket hijacking),
//! post to `/api/publish` with a `text/plain` form, or, by pointing its own
//! domain name at 127.0.0.1, talk to a server on loopback as if it were
//! that site (DNS rebinding).
//!
//! - **Origin.** An upgrade on `/messages` or a request under `/api/` that
//!   carries `Origin` is served only when that origin is the server's own
//!   (same scheme, host and port as the request's `Host`, the scheme being
//!   `https` behind a proxy that says `X-Forwarded-Proto: https`) or listed
//!   in `--allowed-origins` (`*` allows all); else 403. Native clients and
//!   curl send no `Origin` and are not affected. The demo page and its
//!   assets need no check: reading them is harmless.
//! - **Host.** While anonymous channels are on and every listen address is
//!   loopback, a request whose `Host` is not a loopback name or address is
//!   refused with 421: only a rebound DNS name sends one.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// A browser origin: scheme, host and port (the default port of the scheme
/// when the text has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

impl Origin {
    /// Reads `scheme://host[:port]` (what browsers send; no path).
    pub(crate) fn parse(text: &str) -> Result<Origin, String> {
        let invalid = || format!("invalid origin {text:?}; write it like https://chat.example.com");
        let (scheme, rest) = text.split_once("://").ok_or_else(invalid)?;
        let scheme = scheme.to_ascii_lowercase();
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(invalid());
        }
        let authority: Authority = rest.parse().map_err(|_| invalid())?;
        let port = match authority.port_u16() {
            Some(port) => port,
            None => default_port(&scheme).ok_or_else(invalid)?,
        };
        if authority.host().is_empty() {
            return Err(invalid());
        }
        Ok(Origin {
            host: authority.host().to_ascii_lowercase(),
            scheme,
            port,
        })
    }
}

/// `--allowed-origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AllowedOrigins {
    /// `*`: any origin.
    All,
    List(Vec<Origin>),
}

impl AllowedOrigins {
    /// Reads a comma list of origins, or `*`.
    pub(crate) fn parse(list: &str) -> Result<AllowedOrigins, String> {
        let items: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if items == ["*"] {
            return Ok(AllowedOrigins::All);
        }
        if items.contains(&"*") {
            return Err("allowed_origins: `*` allows every origin and stands alone".into());
        }
        items
            .into_iter()
            .map(Origin::parse)
            .collect::<Result<_, _>>()
            .map(AllowedOrigins::List)
            .map_err(|e| format!("allowed_origins: {e}"))
    }

    fn allows(&self, origin: &Origin) -> bool {
        match self {
            AllowedOrigins::All => true,
            AllowedOrigins::List(list) => list.contains(origin),
        }
    }
}

/// What the guard checks, from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct OriginPolicy {
    pub allowed: AllowedOrigins,
    /// Refuse a `Host` that is not loopback (anonymous mode on loopback).
    pub loopback_hosts_only: bool,
    /// The listener speaks TLS: a same-site page's origin is `https`.
    pub tls: bool,
}

/// Whether `host` (a name or an address, without port) is loopback.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// The request's `Host`, parsed; `None` when absent (HTTP/1.0, no browser)
/// and `Err` when unreadable.
fn host(headers: &HeaderMap) -> Result<Option<Authority>, ()> {
    let Some(value) = headers.get(header::HOST) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| ())?;
    text.parse().map(Some).map_err(|_| ())
}

/// The origin a same-site page of this server would send.
fn own_origin(headers: &HeaderMap, host: &Authority, tls: bool) -> Option<Origin> {
    let https = tls
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let scheme = if https { "https" } else { "http" };
    Some(Origin {
        scheme: scheme.to_owned(),
        host: host.host().to_ascii_lowercase(),
        port: host.port_u16().or(default_port(scheme))?,
    })
}

fn refuse(status: StatusCode, reason: &str) -> Response {
    (status, format!("{reason}\n")).into_response()
}

/// Whether the path is one a foreign page must not reach.
fn guarded(path: &str) -> bool {
    path == "/messages" || path == "/api" || path.starts_with("/api/")
}

/// The middleware: see the module docs.
pub(crate) async fn guard(
    State(policy): State<Arc<OriginPolicy>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let Ok(host) = host(headers) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the Host header is not a host name",
        );
    };
    if policy.loopback_hosts_only
        && let Some(host) = &host
        && !is_loopback_host(host.host())
    {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "this server runs in anonymous mode on loopback and answers only loopback host \
             names (DNS rebinding protection); connect to 127.0.0.1 or localhost",
        );
    }
    if guarded(request.uri().path())
        && let Some(origin) = headers.get(header::ORIGIN)
    {
        let origin = origin.to_str().ok().and_then(|o| Origin::parse(o).ok());
        let own = host
            .as_ref()
            .and_then(|h| own_origin(headers, h, policy.tls));
        let allowed = origin
            .as_ref()
            .is_some_and(|o| own.as_ref() == Some(o) || policy.allowed.allows(o));
        if !allowed {
            return refuse(
                StatusCode::FORBIDDEN,
                "cross-origin request refused: this page's origin is not the server's own and \
                 not in --allowed-origins",
            );
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_with_default_ports() {
        let o = Origin::parse("HTTPS://Chat.Example.com").expect("valid");
        assert_eq!(
            o,
            Origin::parse("https://chat.example.com:443/").expect("valid")
        );
        assert_ne!(o, Origin::parse("http://chat.example.com").expect("valid"));
        assert_eq!(
            Origin::parse("http://[::1]:8000").expect("v6").host,
            "[::1]"
        );
        for bad in [
            "null",
            "chat.example.com",
            "https://",
            "https://a/b",
            "ftp://a",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allowed_origins_lists() {
        assert_eq!(AllowedOrigins::parse(" * "), Ok(AllowedOrigins::All));
        assert!(AllowedOrigins::parse("*,https://a").is_err());
        let list = AllowedOrigins::parse("https://a.example, http://localhost:3000").expect("ok");
        assert!(list.allows(&Origin::parse("http://localhost:3000").expect("ok")));
        assert!(!list.allows(&Origin::parse("http://localhost:3001").expect("ok")));
        assert!(AllowedOrigins::parse("https://a, b").is_err());
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "127.0.0.1",
            "127.1.2.3",
            "[::1]",
            "localhost",
            "app.localhost",
            "LOCALHOST.",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["example.com", "10.0.0.1", "localhost.example.com", "[::2]"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
