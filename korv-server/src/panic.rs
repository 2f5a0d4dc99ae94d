//! Turning a handler's panic into a `500` with its message and location.
//!
//! A panic's location is only known to the panic hook. While a handler future is
//! polled, a thread-local flag is set; the hook (installed once, chaining to the
//! previous one for every other panic) records the message and location for
//! that thread instead of printing, and the poll wrapper picks them up after
//! `catch_unwind`. Every other request on the thread is unaffected.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};

thread_local! {
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<Panic>> = const { RefCell::new(None) };
}

/// A caught panic: its message and where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Panic {
    pub(crate) message: String,
    pub(crate) location: String,
}

fn install_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CAPTURING.with(Cell::get) {
                let location = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                    .unwrap_or_else(|| "unknown location".into());
                let message = payload_message(info.payload());
                LAST_PANIC.with(|last| *last.borrow_mut() = Some(Panic { message, location }));
            } else {
                previous(info);
            }
        }));
    });
}

fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".into()
    }
}

/// Polls a handler future, turning a panic into `Err(Panic)`.
pub(crate) struct CatchPanic<F> {
    future: F,
}

impl<F: Future + Unpin> CatchPanic<F> {
    pub(crate) fn new(future: F) -> Self {
        install_hook();
        CatchPanic { future }
    }
}

impl<F: Future + Unpin> Future for CatchPanic<F> {
    type Output = Result<F::Output, Panic>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let was = CAPTURING.with(|c| c.replace(true));
        let result = catch_unwind(AssertUnwindSafe(|| Pin::new(&mut self.future).poll(cx)));
        CAPTURING.with(|c| c.set(was));
        match result {
            Ok(poll) => poll.map(Ok),
            Err(payload) => {
                let recorded = LAST_PANIC.with(|last| last.borrow_mut().take());
                Poll::Ready(Err(recorded.unwrap_or_else(|| Panic {
                    message: payload_message(&*payload),
                    location: "unknown location".into(),
                })))
            }
        }
    }
}
