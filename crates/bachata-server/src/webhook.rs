//! The undelivered-message webhook: a built-in post-process hook.
//! (Being written: see issue 3.)
