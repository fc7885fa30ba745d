//! The SSE parser's memory stays proportional to its event limit, measured with a counting
//! allocator (this file is its own test binary, with one test, so nothing else allocates).
//! Regression: the parser used to reserve 32 KiB however small the limit (found by the
//! `sse_parser` fuzz target, input kept in tests/fuzz_regressions/sse_parser/).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use bytes::Bytes;
use nemo_video::sse::{SseFrame, SseParser};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(now, Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn a_small_event_limit_keeps_the_parser_small() {
    // Through `push` (copied) and `push_bytes` (parsed in place, with only cut lines copied).
    for shared in [false, true] {
        let (peak, errors, data) = feed_small_limit(shared);
        assert_eq!(errors, 1, "the long line is refused (push_bytes: {shared})");
        assert_eq!(
            data.len(),
            2,
            "the parser recovers for the later events (push_bytes: {shared}): {data:?}"
        );
        // The frames above allocate a little too, and so do the chunks given to
        // `push_bytes`; 4 KiB is far below the old 32 KiB floor.
        assert!(
            peak < 4096,
            "the parser held {peak} bytes with a 16-byte limit (push_bytes: {shared})"
        );
    }
}

/// Feeds a stream in 3-byte chunks to a parser with a 16-byte limit; returns the peak heap
/// above the start, the error count and the data lengths of the events.
fn feed_small_limit(shared: bool) -> (usize, usize, Vec<usize>) {
    let stream = b"data: this line is far too long for the limit\n\ndata: ok\n\n: ping\n\ndata: a\ndata: b\n\n";
    let baseline = CURRENT.load(Relaxed);
    PEAK.store(baseline, Relaxed);
    let mut parser = SseParser::with_max_event_size(16);
    let mut data = Vec::with_capacity(8);
    let mut errors = 0;
    for chunk in stream.chunks(3) {
        if shared {
            parser.push_bytes(Bytes::copy_from_slice(chunk));
        } else {
            parser.push(chunk);
        }
        while let Some(frame) = parser.next_frame() {
            match frame {
                Ok(SseFrame::Event(event)) => data.push(event.data().len()),
                Ok(_) => {}
                Err(_) => errors += 1,
            }
        }
    }
    while let Some(frame) = parser.finish() {
        if let Ok(SseFrame::Event(event)) = frame {
            data.push(event.data().len());
        }
    }
    let peak = PEAK.load(Relaxed) - baseline;
    drop(parser);
    (peak, errors, data)
}
