//! What every handler of the application can reach, in a module of its
//! own so that the router (`app.rs`) and the handlers (`api.rs`, `ws.rs`)
//! all depend on it and not on each other.

use std::sync::Arc;

use bachata_core::MessagesCenter;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::config::Config;
use crate::hooks::ConnectHook;
use crate::metrics::Metrics;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) config: Config,
    /// How WebSocket clients prove who they are.
    pub(crate) auth: Auth,
    /// `--connect-hook`: the application decides who connects without a
    /// valid JWT.
    pub(crate) connect_hook: Option<ConnectHook>,
    pub(crate) center: Arc<MessagesCenter>,
    pub(crate) metrics: Metrics,
    /// Every WebSocket task, so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
}
