//! The small parts the connection loop waits with (see `Connection::serve`
//! in `ws.rs`). Each exists to keep the connection's task small: a task is
//! as large as the largest set of futures it may wait on, and every idle
//! connection pays for it (docs/performance.md, "Idle memory, step by step").

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use futures_util::StreamExt;
use futures_util::stream::{FuturesOrdered, FuturesUnordered};

/// A timer made on its first use and kept for the next ones. A `Sleep` is
/// ~100 bytes, and a connection's task is as large as the largest set of
/// futures it may wait on, so an inline one is paid by every idle
/// connection; this is one pointer until it is first needed.
#[derive(Default)]
pub(super) struct Timer(Option<Pin<Box<tokio::time::Sleep>>>);

impl Timer {
    /// Ready once `at` has passed; never for `None`.
    pub(super) fn poll_until(
        &mut self,
        cx: &mut std::task::Context<'_>,
        at: Option<tokio::time::Instant>,
    ) -> std::task::Poll<()> {
        let Some(at) = at else {
            return std::task::Poll::Pending;
        };
        let sleep = match &mut self.0 {
            Some(sleep) => {
                if sleep.deadline() != at {
                    sleep.as_mut().reset(at);
                }
                sleep
            }
            None => self.0.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        sleep.as_mut().poll(cx)
    }
}

/// How a write to the socket ended.
pub(super) enum Written {
    Done,
    Failed(crate::websocket::Error),
    /// Still waiting when the slow consumer timeout ran out.
    TimedOut,
}

impl From<Result<Result<(), crate::websocket::Error>, tokio::time::error::Elapsed>> for Written {
    fn from(
        outcome: Result<Result<(), crate::websocket::Error>, tokio::time::error::Elapsed>,
    ) -> Self {
        match outcome {
            Ok(Ok(())) => Written::Done,
            Ok(Err(e)) => Written::Failed(e),
            Err(_) => Written::TimedOut,
        }
    }
}

impl From<Result<(), crate::websocket::Error>> for Written {
    fn from(result: Result<(), crate::websocket::Error>) -> Self {
        match result {
            Ok(()) => Written::Done,
            Err(e) => Written::Failed(e),
        }
    }
}

/// A set of futures that exists only while it is in use. Made empty,
/// `FuturesUnordered` allocates ~150 bytes, which an idle connection kept
/// for its whole life: this is made at its first push and given back by
/// [`Pending::release`] once empty. Boxed, so that an idle connection's
/// task holds 8 bytes for it rather than the set itself (64 bytes for a
/// `FuturesOrdered`: with it inline the task was one allocator size class
/// larger, docs/performance.md "Idle memory, step by step").
pub(super) struct Pending<S>(Option<Box<S>>);

impl<S> Default for Pending<S> {
    fn default() -> Self {
        Pending(None)
    }
}

/// What [`Pending`] needs of the set it holds.
pub(super) trait FutureSet: futures_util::Stream + Unpin + Default {
    fn len(&self) -> usize;
}

impl<F: Future> FutureSet for FuturesOrdered<F> {
    fn len(&self) -> usize {
        FuturesOrdered::len(self)
    }
}

impl<F: Future> FutureSet for FuturesUnordered<F> {
    fn len(&self) -> usize {
        FuturesUnordered::len(self)
    }
}

impl<S: FutureSet> Pending<S> {
    /// The set, made if it was not.
    pub(super) fn get(&mut self) -> &mut S {
        self.0.get_or_insert_with(Box::default)
    }

    pub(super) fn len(&self) -> usize {
        self.0.as_deref().map_or(0, S::len)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next output; `None` when the set is empty.
    pub(super) fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<S::Item>> {
        match &mut self.0 {
            Some(set) => set.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }

    /// [`Pending::poll_next`] as a future.
    pub(super) fn next(&mut self) -> impl Future<Output = Option<S::Item>> + Unpin + '_ {
        std::future::poll_fn(|cx| self.poll_next(cx))
    }

    /// Gives the set's memory back if it is empty.
    pub(super) fn release(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }
}

/// Polls `future` once, in the calling task's context (so a `Pending`
/// leaves that task's waker registered): its output if it is ready now.
/// (`futures_util::poll!` does the same, but in `serve` it made an idle
/// connection 0.4 KB larger: 6.2 against 5.8 KB over 10k connections.)
pub(super) async fn poll_once<F: Future + Unpin>(mut future: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match Pin::new(&mut future).poll(cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// A poll's output, if it is ready.
pub(super) fn ready<T>(poll: Poll<T>) -> Option<T> {
    match poll {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// Polls once with a waker that does nothing: the output if it is ready
/// now. For a poll nobody waits on: whoever gets `None` polls again with
/// the task's waker (see `Connection::feed_now`).
pub(super) fn poll_now<T>(poll: impl FnOnce(&mut std::task::Context<'_>) -> Poll<T>) -> Option<T> {
    ready(poll(&mut std::task::Context::from_waker(
        std::task::Waker::noop(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_pending_set_exists_only_while_in_use() {
        let mut set: Pending<FuturesOrdered<std::future::Ready<u32>>> = Pending::default();
        assert!(set.0.is_none(), "made before its first push");
        assert_eq!(set.next().await, None, "an unmade set is an empty one");
        set.get().push_back(std::future::ready(1));
        set.get().push_back(std::future::ready(2));
        assert_eq!(set.len(), 2);
        // Not given back while it holds work.
        set.release();
        assert_eq!(set.len(), 2);
        assert_eq!(set.next().await, Some(1));
        assert_eq!(set.next().await, Some(2));
        assert!(set.is_empty());
        set.release();
        assert!(set.0.is_none(), "an empty set is given back");
    }

    #[tokio::test]
    async fn a_timer_waits_for_its_deadline_and_follows_a_new_one() {
        let mut timer = Timer::default();
        let never = tokio::time::timeout(
            Duration::from_millis(50),
            std::future::poll_fn(|cx| timer.poll_until(cx, None)),
        )
        .await;
        assert!(never.is_err(), "no deadline, no wake-up");
        assert!(timer.0.is_none(), "no deadline, no timer made");
        for wait in [30, 10] {
            let at = tokio::time::Instant::now() + Duration::from_millis(wait);
            let fired = std::future::poll_fn(|cx| timer.poll_until(cx, Some(at)));
            tokio::time::timeout(Duration::from_secs(5), fired)
                .await
                .expect("the timer fires");
            assert!(tokio::time::Instant::now() >= at, "not before its deadline");
        }
    }
}
