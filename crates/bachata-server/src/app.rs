//! The axum application: its routes, the demo page's assets, health and
//! metrics. What the handlers share is in [`crate::state`].

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;

use crate::state::AppState;

/// The application: the demo page, `/messages`, the API, health and
/// metrics, behind the origin and host checks of [`crate::origin`].
pub(crate) fn router(state: Arc<AppState>, origins: crate::origin::OriginPolicy) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/bachata.js", get(bachata_js))
        .route("/app.js", get(app_js))
        .route("/app.css", get(app_css))
        .route("/messages", get(crate::ws::upgrade))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .nest("/api", crate::api::router())
        // A nested router does not see its own root with a trailing slash.
        .route("/api/", axum::routing::any(crate::api::not_found))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(origins),
            crate::origin::guard,
        ))
}

/// What a connection beyond `--max-connections` is served
/// ([`crate::listener`]): health and metrics, and 503 for the rest.
pub(crate) fn overflow_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(crate::listener::at_capacity)
        .with_state(state)
}

async fn index() -> Html<&'static str> {
    Html(include_str!("../assets/index.html"))
}

/// The demo page's assets, embedded in the binary: no CDN, no build step.
/// `/bachata.js` is the JavaScript client itself (one copy, in `clients/js`).
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

async fn bachata_js() -> impl IntoResponse {
    static_asset(JAVASCRIPT, include_str!("../assets/bachata.js"))
}

async fn app_js() -> impl IntoResponse {
    static_asset(JAVASCRIPT, include_str!("../assets/app.js"))
}

async fn app_css() -> impl IntoResponse {
    static_asset("text/css; charset=utf-8", include_str!("../assets/app.css"))
}

fn static_asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Revalidate on every load: a new server binary brings new assets.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// 200 `ok` while the server accepts connections and its store answers;
/// 503 with the reason while the store (Redis) is unreachable.
async fn healthz(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    match app.center.store().health().await {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("degraded: store unavailable ({e})\n"),
        ),
    }
}

async fn metrics(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
}
