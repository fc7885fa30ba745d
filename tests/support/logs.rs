//! A `tracing` capture into memory, for tests that check what the SDK logs.

use std::io;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::fmt::MakeWriter;

/// Everything the installed subscriber wrote, shared with the test.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    /// The captured text so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// One write handle into a [`LogBuffer`].
pub struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogBuffer {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter(Arc::clone(&self.0))
    }
}

/// Installs a TRACE-level `fmt` subscriber writing into memory for the current thread (use a
/// current-thread runtime so every task of the test logs into it). Span opening and closing
/// are logged too, with their fields, so the `nemo.request` spans show up even when no
/// event fires inside them.
///
/// Tests that capture logs run one at a time: `tracing` caches each callsite's interest
/// process-wide, and thread-local subscribers coming and going in parallel tests can leave a
/// callsite cached as uninteresting, so a span would silently be missing from the capture.
pub fn capture_logs() -> (LogBuffer, CaptureGuard) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let serial = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let buffer = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
        .with_writer(buffer.clone())
        .finish();
    let subscriber = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    (
        buffer,
        CaptureGuard {
            _subscriber: subscriber,
            _serial: serial,
        },
    )
}

/// Keeps the capturing subscriber installed, and other capturing tests waiting, until dropped.
pub struct CaptureGuard {
    _subscriber: tracing::subscriber::DefaultGuard,
    _serial: std::sync::MutexGuard<'static, ()>,
}
