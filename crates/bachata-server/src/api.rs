//! The HTTP API for application backends (protocol.md section 7), under `/api/`.
//!
//! - `POST /api/publish`: a data message sent by system (no `from`), routed
//!   like any other.
//! - `PUT` / `DELETE /api/groups/{group}/members/{channel}`,
//!   `GET /api/groups/{group}`: group membership.
//! - `GET /api/channels/{channel}`: live connections and pending messages.
//! - `GET /api/openapi.json`: the OpenAPI 3 document of all of this,
//!   generated from the handlers below (no key needed).
//!
//! Auth is `Authorization: Bearer <api key>` (see [`authorize`]). Every error
//! is JSON `{"error": code, "reason": text}` ([`ApiError`]); see
//! `docs/api.md` for the table of codes and statuses.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bachata_core::{Accepted, Rejection, now_millis};
use bachata_proto::{Channel, ErrorCode, GroupId, Inbound, Limits, MessageId, parse_frame};
use futures_util::StreamExt;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::config::Config;
use crate::state::AppState;

/// The `/api` routes, nested by [`crate::app::router`].
///
/// The body limit of `POST /api/publish` is `--max-frame-bytes`, which is
/// only known from the state, so the handler enforces it while reading the
/// body instead of through a `DefaultBodyLimit` layer (which needs the limit
/// when the router is built, before the state exists).
pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/publish", post(publish))
        .route(
            "/groups/{group}/members/{channel}",
            put(add_member).delete(remove_member),
        )
        .route("/groups/{group}", get(group_members))
        .route("/channels/{channel}", get(channel_info))
        .route("/openapi.json", get(openapi))
        // Both only apply to the routes registered above.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
}

// ---------------------------------------------------------------------------
// Errors

/// An error answer: `{"error": code, "reason": text}` with an HTTP status.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub reason: String,
}

/// The JSON body of every error.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// A stable code: one of the WebSocket 400 codes (`invalid_json`,
    /// `invalid_message`, `no_route`, `forbidden`, `bad_signature`,
    /// `queue_full`, `store_full`, `rate_limited`, `unavailable`) or an HTTP one
    /// (`unauthorized`, `not_found`, `method_not_allowed`, `too_large`,
    /// `request_timeout`).
    #[schema(example = "no_route")]
    pub error: String,
    /// Human-readable; may change between versions.
    #[schema(example = "no route takes messages of type \"chat\" without dest")]
    pub reason: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            reason: reason.into(),
        }
    }

    /// An error with a wire code of the WebSocket protocol, at its status.
    pub(crate) fn from_code(code: ErrorCode, reason: impl Into<String>) -> Self {
        ApiError::new(status_of(code), code.as_str(), reason)
    }

    fn unauthorized(reason: &str) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", reason)
    }

    /// A store failure: logged here, reported without its details.
    fn store(e: &bachata_core::StoreError) -> Self {
        tracing::warn!(error = %e, "api: store failed");
        ApiError::from_code(
            ErrorCode::Unavailable,
            "storage is unavailable; retry later",
        )
    }
}

/// The HTTP status for a wire error code.
pub(crate) fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidJson | ErrorCode::InvalidMessage | ErrorCode::BadSignature => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::NoRoute => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::QueueFull | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        // The server as a whole is out of room for pending messages.
        ErrorCode::StoreFull => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        ApiError::from_code(r.code, r.reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::INSUFFICIENT_STORAGE
        );
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let body = ErrorBody {
            error: self.code.to_owned(),
            reason: self.reason,
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if unauthorized {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if retry {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The JSON 404 for unknown `/api` paths.
pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such API endpoint; see /api/openapi.json",
    )
}

/// axum adds the `Allow` header to this answer.
async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method; see the Allow header",
    )
}

// ---------------------------------------------------------------------------
// Auth

/// Proof that the request passed [`authorize`]; the first argument of every
/// protected handler, so auth runs before anything else is read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Authorized;

impl FromRequestParts<Arc<AppState>> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        authorize(&app.config, parts.headers.get(AUTHORIZATION)).map(|()| Authorized)
    }
}

/// The API's auth rules (protocol.md section 7):
/// - with `--api-key`: `Authorization: Bearer <key>` must match it (the
///   scheme is case-insensitive), else 401;
/// - without one: 403, except on a server in anonymous mode (no JWT
///   configured) that listens on a loopback address, where anyone who can
///   reach it could connect as any channel anyway; there the API is open.
pub(crate) fn authorize(config: &Config, header: Option<&HeaderValue>) -> Result<(), ApiError> {
    let Some(key) = config.api_key.as_deref() else {
        if config.anonymous() && config.listen.ip().is_loopback() {
            return Ok(());
        }
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "no --api-key configured: the HTTP API is off (without a key it is open only on a \
             loopback address in anonymous mode)",
        ));
    };
    let Some(header) = header else {
        return Err(ApiError::unauthorized(
            "missing header Authorization: Bearer <api key>",
        ));
    };
    let Some(token) = header.to_str().ok().and_then(bearer_token) else {
        return Err(ApiError::unauthorized(
            "the Authorization header must be Bearer <api key>",
        ));
    };
    if keys_match(token.as_bytes(), key.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("wrong API key"))
    }
}

/// The credentials of a `Bearer` Authorization header.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares a presented key with the configured one in time that depends
/// only on the length of the presented key (known to the caller anyway),
/// never on where the keys differ nor on the configured key's length: every
/// byte of `given` is compared with the key repeated, and a length mismatch
/// is folded into the same accumulator. `black_box` keeps the compiler from
/// turning the loop into an early exit.
fn keys_match(given: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    // Config validation refuses empty keys; be safe anyway. (A different
    // length is refused at once: the length of a key is no secret worth
    // hiding, its bytes are.)
    !expected.is_empty() && bool::from(given.ct_eq(expected))
}

// ---------------------------------------------------------------------------
// Types of the API (also the OpenAPI schemas)

/// A data message, as a WebSocket client would send it (`docs/protocol.md`).
/// Fields other than these are kept and forwarded untouched. `from` is
/// ignored: the server sends API messages as the system (no `from`).
#[derive(Debug, ToSchema)]
#[allow(dead_code, reason = "only describes the body in the OpenAPI document")]
#[schema(example = json!({"id": "order-42-shipped", "type": "direct", "dest": "bob",
                          "data": {"text": "Your order shipped"}}))]
pub(crate) struct PublishRequest {
    /// The message id (1..=128 bytes). With an id the message is stored
    /// durably and delivered until acked; without one it goes only to
    /// connections that are online now, at most once.
    #[schema(nullable = false, example = "order-42-shipped")]
    id: Option<String>,
    /// The message type; routes pick messages by it (`"group"`: `dest` is a
    /// group id).
    #[schema(rename = "type", example = "direct")]
    kind: String,
    /// Unix time in ms; set by the server when absent. Must be an integer.
    #[schema(nullable = false)]
    time: Option<i64>,
    /// The destination channel (or group, for `type` `"group"`).
    #[schema(nullable = false, example = "bob")]
    dest: Option<String>,
    /// Any JSON value, forwarded as written.
    #[schema(value_type = Option<Value>)]
    data: Option<serde_json::Value>,
    /// A signature; the API does not require one.
    #[schema(nullable = false)]
    sign: Option<String>,
}

/// A published message.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Published {
    /// The message id, `null` for a message without id.
    #[schema(required = true, example = "order-42-shipped")]
    pub id: Option<String>,
    /// The channels the message was routed to (for a message without id:
    /// handed to whatever connections of them are online).
    #[schema(example = json!(["bob"]))]
    pub channels: Vec<String>,
}

/// The answer to adding a member.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MemberAdded {
    pub group: String,
    pub channel: String,
    /// False when the channel was a member already.
    pub added: bool,
}

/// The answer to removing a member.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MemberRemoved {
    pub group: String,
    pub channel: String,
    /// False when the channel was not a member.
    pub removed: bool,
}

/// A group's members.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupMembers {
    pub group: String,
    /// Sorted; empty for an unknown group.
    pub members: Vec<String>,
}

/// A channel's live connections and pending messages.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChannelInfo {
    pub channel: String,
    /// Open WebSocket connections of the channel on this server.
    pub online: usize,
    /// Connections per device; `""` is the default device (connections
    /// without `?device=`). Devices without connections are not listed.
    #[schema(example = json!({"": 1, "phone": 2}))]
    pub devices: BTreeMap<String, usize>,
    /// Messages not yet acked by any device of the channel and not expired.
    pub pending: u64,
}

// ---------------------------------------------------------------------------
// Handlers

/// Publish a data message as the system.
///
/// The body is a data message, checked like a WebSocket frame (size at most
/// `--max-frame-bytes`, JSON nesting, field types), then routed like any
/// other message. It is sent by the system: receivers see no `from`, group
/// messages need no membership, and no 100/300 receipts are produced. A
/// repeated id within the dedupe window is accepted again without being
/// stored twice.
#[utoipa::path(
    post,
    path = "/api/publish",
    tag = "messages",
    request_body(content = PublishRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored durably for every destination (with id) or handed to live connections (without id)", body = Published),
        (status = 400, description = "invalid_json, invalid_message", body = ErrorBody),
        (status = 401, description = "unauthorized: missing or wrong API key", body = ErrorBody),
        (status = 403, description = "forbidden: the API is off (no key configured)", body = ErrorBody),
        (status = 408, description = "request_timeout: the body did not arrive within --header-timeout", body = ErrorBody),
        (status = 413, description = "too_large: body over --max-frame-bytes", body = ErrorBody),
        (status = 422, description = "no_route: no route takes the message", body = ErrorBody),
        (status = 429, description = "queue_full, rate_limited: retry later", body = ErrorBody),
        (status = 507, description = "store_full: the server keeps --max-retained-bytes of pending messages; retry later", body = ErrorBody),
        (status = 503, description = "unavailable: storage failed, retry later", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn publish(
    _auth: Authorized,
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Published>, ApiError> {
    // The body, like the headers, within --header-timeout: a client that
    // trickles it would otherwise hold a connection slot for as long as it
    // likes (protocol.md section 9).
    let bytes = tokio::time::timeout(
        app.config.header_timeout,
        read_body(&headers, body, app.config.max_frame_bytes),
    )
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the body did not arrive within header_timeout",
        )
    })??;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::from_code(ErrorCode::InvalidJson, "the body is not valid UTF-8"))?;
    let limits = Limits {
        max_depth: app.config.max_json_depth,
    };
    let msg = match parse_frame(text, &limits) {
        Ok(Inbound::Data(msg)) => msg,
        Ok(_) => {
            return Err(ApiError::from_code(
                ErrorCode::InvalidMessage,
                "the API publishes data messages (`type` a string); transport messages \
                 (integer `type`) are for WebSocket connections",
            ));
        }
        Err(rejected) => {
            return Err(ApiError::from_code(
                rejected.error.code(),
                rejected.error.to_string(),
            ));
        }
    };
    let (id, channels) = match app.center.submit(None, msg).await? {
        Accepted::Stored { id, channels } => (Some(id), channels),
        Accepted::Live { channels } => (None, channels),
    };
    Ok(Json(Published {
        id: id.as_ref().map(MessageId::as_str).map(str::to_owned),
        channels: channels.iter().map(|c| c.as_str().to_owned()).collect(),
    }))
}

/// Reads at most `limit` bytes of body: a `Content-Length` over it is
/// refused before reading, and a body without one (chunked) is counted as
/// it streams in.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than max_frame_bytes ({limit} bytes)"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut out = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::from_code(
                ErrorCode::InvalidJson,
                format!("cannot read the request body: {e}"),
            )
        })?;
        if out.len() + chunk.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn path_error(e: &PathRejection) -> ApiError {
    ApiError::from_code(ErrorCode::InvalidMessage, e.body_text())
}

fn group_and_channel(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(GroupId, Channel), ApiError> {
    let Path((group, channel)) = path.map_err(|e| path_error(&e))?;
    Ok((parse_group(&group)?, parse_channel(&channel)?))
}

fn parse_group(text: &str) -> Result<GroupId, ApiError> {
    GroupId::new(text).map_err(|e| ApiError::from_code(ErrorCode::InvalidMessage, e.to_string()))
}

fn parse_channel(text: &str) -> Result<Channel, ApiError> {
    Channel::new(text).map_err(|e| ApiError::from_code(ErrorCode::InvalidMessage, e.to_string()))
}

/// Add a channel to a group.
///
/// Idempotent: `added` is false when the channel was a member already. The
/// group exists as long as it has members.
#[utoipa::path(
    put,
    path = "/api/groups/{group}/members/{channel}",
    tag = "groups",
    params(
        ("group" = String, Path, description = "Group id, 1..=128 bytes without control characters"),
        ("channel" = String, Path, description = "Channel, 1..=128 bytes without control characters"),
    ),
    responses(
        (status = 200, description = "The channel is a member", body = MemberAdded),
        (status = 400, description = "invalid_message: invalid group or channel", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden: the API is off", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn add_member(
    _auth: Authorized,
    State(app): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<MemberAdded>, ApiError> {
    let (group, channel) = group_and_channel(path)?;
    let added = app
        .center
        .store()
        .add_member(&group, &channel)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(Json(MemberAdded {
        group: group.as_str().to_owned(),
        channel: channel.as_str().to_owned(),
        added,
    }))
}

/// Remove a channel from a group.
///
/// Idempotent: `removed` is false when the channel was not a member.
#[utoipa::path(
    delete,
    path = "/api/groups/{group}/members/{channel}",
    tag = "groups",
    params(
        ("group" = String, Path, description = "Group id"),
        ("channel" = String, Path, description = "Channel"),
    ),
    responses(
        (status = 200, description = "The channel is not a member", body = MemberRemoved),
        (status = 400, description = "invalid_message: invalid group or channel", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden: the API is off", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn remove_member(
    _auth: Authorized,
    State(app): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<MemberRemoved>, ApiError> {
    let (group, channel) = group_and_channel(path)?;
    let removed = app
        .center
        .store()
        .remove_member(&group, &channel)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(Json(MemberRemoved {
        group: group.as_str().to_owned(),
        channel: channel.as_str().to_owned(),
        removed,
    }))
}

/// List a group's members.
#[utoipa::path(
    get,
    path = "/api/groups/{group}",
    tag = "groups",
    params(("group" = String, Path, description = "Group id")),
    responses(
        (status = 200, description = "The members, sorted (empty for an unknown group)", body = GroupMembers),
        (status = 400, description = "invalid_message: invalid group", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden: the API is off", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn group_members(
    _auth: Authorized,
    State(app): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<GroupMembers>, ApiError> {
    let Path(group) = path.map_err(|e| path_error(&e))?;
    let group = parse_group(&group)?;
    let members = app
        .center
        .store()
        .members(&group)
        .await
        .map_err(|e| ApiError::store(&e))?;
    let mut members: Vec<String> = members.iter().map(|c| c.as_str().to_owned()).collect();
    members.sort_unstable(); // the store sorts already; the contract is ours
    Ok(Json(GroupMembers {
        group: group.as_str().to_owned(),
        members,
    }))
}

/// Show a channel's live connections and pending messages.
///
/// `online` and `devices` count the WebSocket connections to this server
/// process.
#[utoipa::path(
    get,
    path = "/api/channels/{channel}",
    tag = "channels",
    params(("channel" = String, Path, description = "Channel")),
    responses(
        (status = 200, description = "The channel's state", body = ChannelInfo),
        (status = 400, description = "invalid_message: invalid channel", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden: the API is off", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn channel_info(
    _auth: Authorized,
    State(app): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ChannelInfo>, ApiError> {
    let Path(channel) = path.map_err(|e| path_error(&e))?;
    let channel = parse_channel(&channel)?;
    let mut devices = BTreeMap::new();
    let online = app
        .center
        .online(&channel)
        .await
        .map_err(|e| ApiError::store(&e))?;
    for (device, connections) in online {
        let name = device.as_ref().map_or("", |d| d.as_str()).to_owned();
        *devices.entry(name).or_insert(0) += connections;
    }
    let pending = app
        .center
        .store()
        .pending_count(&channel, now_millis())
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(Json(ChannelInfo {
        channel: channel.as_str().to_owned(),
        online: devices.values().sum(),
        devices,
        pending,
    }))
}

// ---------------------------------------------------------------------------
// OpenAPI

/// The OpenAPI document of this module.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "bachata HTTP API",
        description = "For application backends: publish messages as the system, manage group \
                       membership, look at channels. See docs/api.md."
    ),
    paths(publish, add_member, remove_member, group_members, channel_info, openapi),
    components(schemas(
        PublishRequest,
        Published,
        MemberAdded,
        MemberRemoved,
        GroupMembers,
        ChannelInfo,
        ErrorBody
    )),
    modifiers(&BearerScheme),
    tags(
        (name = "messages", description = "Publishing"),
        (name = "groups", description = "Group membership (for messages of type \"group\")"),
        (name = "channels", description = "Channel state"),
        (name = "meta", description = "This document"),
    )
)]
pub(crate) struct ApiDoc;

/// Adds the `api_key` security scheme: `Authorization: Bearer <api key>`.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The key given to the server with --api-key. Without a configured key \
                         the API answers 403, except on a loopback address in anonymous mode \
                         where it needs no key.",
                    ))
                    .build(),
            ),
        );
    }
}

static OPENAPI: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(ApiDoc::openapi);

/// This OpenAPI document. Needs no key.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json"))
)]
async fn openapi() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(&OPENAPI)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_only_equal_keys() {
        assert!(keys_match(b"secret", b"secret"));
        assert!(!keys_match(b"secreT", b"secret"));
        assert!(!keys_match(b"secret!", b"secret"));
        assert!(!keys_match(b"secretsecret", b"secret"));
        assert!(!keys_match(b"secre", b"secret"));
        assert!(!keys_match(b"", b"secret"));
        assert!(!keys_match(b"", b""));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer k"), Some("k"));
        assert_eq!(bearer_token("bearer  k "), Some("k"));
        assert_eq!(bearer_token("Basic k"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }

    #[test]
    fn every_code_has_a_status() {
        for code in ErrorCode::ALL {
            let expected = match code {
                ErrorCode::InvalidJson | ErrorCode::InvalidMessage | ErrorCode::BadSignature => {
                    StatusCode::BAD_REQUEST
                }
                ErrorCode::NoRoute => StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::Forbidden => StatusCode::FORBIDDEN,
                ErrorCode::QueueFull | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::StoreFull => StatusCode::INSUFFICIENT_STORAGE,
                ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            };
            assert_eq!(status_of(code), expected, "{code}");
            // A retryable code is answered with a status that says retry.
            let retry = matches!(
                expected,
                StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::INSUFFICIENT_STORAGE
            );
            assert_eq!(code.is_retryable(), retry, "{code}");
        }
    }
}
