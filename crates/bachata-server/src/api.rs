//! The HTTP API for application backends (`spec.md` section 7), under `/api/`.
//! (Being written: see issue 3.)

use std::sync::Arc;

use axum::Router;

use crate::app::AppState;

/// The `/api` routes, nested by [`crate::app::router`].
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
}
