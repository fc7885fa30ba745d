//! An in-memory `tracing` capture for tests that check what the SDK logs, one per test, that
//! cannot miss a span or an event.
//!
//! Why not a subscriber per test (`tracing::subscriber::set_default`): `tracing` caches each
//! callsite's interest process-wide, computed when the callsite is first hit and, while only
//! one subscriber exists, from the subscriber *of the thread that hits it*. A parallel test's
//! thread without a capture then caches "never" for a callsite, and the capturing test loses
//! every span and event of it ("the log has no nemo.request spans").
//!
//! So one subscriber is installed globally, once per test binary. It answers "sometimes" for
//! every callsite, so it is asked on every hit; it enables only threads that hold a capture,
//! and writes into that thread's buffer. Rules for a test binary that captures:
//!
//! - every test in it starts with [`capture_logs`] (that installs the subscriber before any
//!   SDK callsite can be hit, so none is ever cached as "never");
//! - a capturing test runs on a current-thread runtime (`#[tokio::test]`), so every task of
//!   the test runs on the thread holding the capture. Records of other threads (other tests,
//!   worker threads) never reach its buffer.

use std::cell::RefCell;
use std::io;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, Once};

use tracing::subscriber::Interest;
use tracing::Metadata;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::prelude::*;

/// Everything logged on the capturing thread, shared with the test.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    /// The captured text so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

thread_local! {
    /// The buffer of the capture this thread holds, if any.
    static SINK: RefCell<Option<LogBuffer>> = const { RefCell::new(None) };
}

fn capturing() -> bool {
    SINK.with(|sink| sink.borrow().is_some())
}

/// Enables every record of a capturing thread and nothing else, deciding on every hit: its
/// callsite interest is always "sometimes", never a cached yes or no. (`filter_fn` would not
/// do: it caches its answer for the thread that registers the callsite.)
struct CapturingThreads;

impl<S> Filter<S> for CapturingThreads {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        capturing()
    }

    fn callsite_enabled(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::sometimes()
    }
}

/// Writes each formatted record into the current thread's buffer (nothing without one).
struct ThreadSink;

/// One record's write handle.
struct SinkWriter;

impl io::Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        SINK.with(|sink| {
            if let Some(buffer) = sink.borrow().as_ref() {
                buffer.0.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for ThreadSink {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> SinkWriter {
        SinkWriter
    }
}

/// Installs the global subscriber once: every level, span opening and closing with their
/// fields (so `nemo.request` spans show up even when no event fires inside them), enabled
/// only on capturing threads.
fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let layer = tracing_subscriber::fmt::layer()
            .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
            .with_writer(ThreadSink)
            .with_filter(CapturingThreads);
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the log capture is the test binary's only global subscriber");
    });
}

/// Starts capturing everything logged on this thread, at every level, until the guard drops.
///
/// ```ignore
/// let (log, _guard) = capture_logs();
/// client.credits().await?;
/// assert!(log.text().contains("nemo.request"));
/// ```
pub fn capture_logs() -> (LogBuffer, CaptureGuard) {
    install();
    let buffer = LogBuffer::default();
    let previous = SINK.with(|sink| sink.replace(Some(buffer.clone())));
    (
        buffer,
        CaptureGuard {
            previous,
            _not_send: PhantomData,
        },
    )
}

/// Keeps this thread capturing until dropped. Tied to the thread (not `Send`).
pub struct CaptureGuard {
    previous: Option<LogBuffer>,
    _not_send: PhantomData<*const ()>,
}

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SINK.with(|sink| *sink.borrow_mut() = previous);
    }
}
