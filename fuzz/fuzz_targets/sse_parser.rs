//! The SSE parser, fed the same bytes whole and in arbitrary chunks.
//!
//! Input layout: three configuration bytes, then the stream.
//! - byte 0: the size limit. High bit set: the default (16 MiB); else `1 + (b & 0x3f)`, so
//!   1..=64 bytes, small enough that the fuzzer hits `EventTooLarge` constantly.
//! - byte 1: the largest chunk, `1 + b % 32` bytes.
//! - byte 2: seed of the generator that picks each chunk's length in `1..=largest`.
//!
//! Checked: no panic; the chunked feed gives exactly the frames of the whole feed (same
//! order, same errors) and the same `last_event_id` / `reconnection_time`, whether the chunks
//! go through `push` (copied), `push_bytes` (parsed in place) or alternate between the two;
//! event data is valid UTF-8 (it is read through `from_utf8_unchecked`); a parser reused
//! after `finish` gives the same frames again; and while fed in chunks and drained after each
//! push, the parser never holds more than a small multiple of (limit + chunk) bytes of heap.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use nemo_video::sse::{SseError, SseFrame, SseParser, DEFAULT_MAX_EVENT_SIZE};

/// Counts live heap bytes so the memory bound can be checked without reaching into the
/// parser.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_ptr = System.realloc(ptr, layout, new_size);
        if !new_ptr.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        new_ptr
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

type Frame = Result<SseFrame, SseError>;

struct Outcome {
    frames: Vec<Frame>,
    last_event_id: String,
    reconnection_time: Option<Duration>,
}

fn drain(parser: &mut SseParser, frames: &mut Vec<Frame>) {
    while let Some(frame) = parser.next_frame() {
        frames.push(frame);
    }
}

fn finish(parser: &mut SseParser, frames: &mut Vec<Frame>) {
    while let Some(frame) = parser.finish() {
        frames.push(frame);
    }
}

fn whole(parser: &mut SseParser, input: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    parser.push(input);
    drain(parser, &mut frames);
    finish(parser, &mut frames);
    frames
}

/// Chunk lengths in `1..=largest` from a xorshift generator.
struct Chunks<'a> {
    rest: &'a [u8],
    state: u32,
    largest: usize,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        let len = (1 + self.state as usize % self.largest).min(self.rest.len());
        let (chunk, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(chunk)
    }
}

fn check_frame(frame: &Frame) {
    if let Ok(SseFrame::Event(event)) = frame {
        assert!(
            std::str::from_utf8(event.data_bytes()).is_ok(),
            "event data is not valid UTF-8: {:?}",
            event.data_bytes()
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((config, input)) = data.split_first_chunk::<3>() else {
        return;
    };
    let max_event_size = if config[0] & 0x80 != 0 {
        DEFAULT_MAX_EVENT_SIZE
    } else {
        1 + usize::from(config[0] & 0x3f)
    };
    let largest_chunk = 1 + usize::from(config[1] % 32);
    // xorshift must not start at 0.
    let seed = 0x9E37_79B9 ^ u32::from(config[2]);

    let expected = {
        let mut parser = SseParser::with_max_event_size(max_event_size);
        let frames = whole(&mut parser, input);
        Outcome {
            frames,
            last_event_id: parser.last_event_id().to_owned(),
            reconnection_time: parser.reconnection_time(),
        }
    };
    for frame in &expected.frames {
        check_frame(frame);
    }

    for way in [Way::Copy, Way::Shared, Way::Alternate] {
        let mut parser = chunked(&expected, input, seed, largest_chunk, max_event_size, way);
        // After `finish` the parser is ready for a new stream: the same bytes give the same
        // frames.
        let again = whole(&mut parser, input);
        assert_eq!(
            again, expected.frames,
            "a parser reused after finish differs ({way:?})"
        );
    }
});

/// Which entry point each chunk goes through.
#[derive(Debug, Clone, Copy)]
enum Way {
    Copy,
    Shared,
    Alternate,
}

/// Feeds `input` in chunks, draining after each, comparing each frame with `expected` as it
/// comes and dropping it, so that the heap in use is the parser's own (plus, through
/// `push_bytes`, the one chunk being parsed); checks the heap bound. Returns the parser,
/// finished.
fn chunked(
    expected: &Outcome,
    input: &[u8],
    seed: u32,
    largest_chunk: usize,
    max_event_size: usize,
    way: Way,
) -> SseParser {
    let baseline = LIVE.load(Relaxed);
    PEAK.store(baseline, Relaxed);
    let mut parser = SseParser::with_max_event_size(max_event_size);
    let mut seen = 0;
    let mut compare = |frame: Frame| {
        check_frame(&frame);
        assert!(
            seen < expected.frames.len(),
            "chunked feed gave an extra frame {frame:?}; whole feed gave {:?}",
            expected.frames
        );
        assert_eq!(
            frame, expected.frames[seen],
            "frame {seen} differs between chunked ({way:?}) and whole feeds"
        );
        seen += 1;
    };
    let chunks = Chunks {
        rest: input,
        state: seed,
        largest: largest_chunk,
    };
    for (index, chunk) in chunks.enumerate() {
        let shared = match way {
            Way::Copy => false,
            Way::Shared => true,
            Way::Alternate => index % 2 == 1,
        };
        let held = shared.then(|| Bytes::copy_from_slice(chunk));
        match &held {
            Some(bytes) => parser.push_bytes(bytes.clone()),
            None => parser.push(chunk),
        }
        while let Some(frame) = parser.next_frame() {
            compare(frame);
        }
        // Drained, the parser keeps no reference to a chunk from `push_bytes` (what it still
        // needs of it, it copied).
        if let Some(bytes) = held {
            assert!(bytes.is_unique(), "the parser still holds chunk {index} ({way:?})");
        }
    }
    while let Some(frame) = parser.finish() {
        compare(frame);
    }
    assert_eq!(
        seen,
        expected.frames.len(),
        "chunked feed gave fewer frames than the whole feed"
    );
    let peak = PEAK.load(Relaxed).saturating_sub(baseline);
    // Buffer and scratch may each be twice what they hold (amortised growth), and invalid
    // UTF-8 triples in size when decoded lossily; 16x plus a constant covers all of that
    // and still catches a parser that holds on to input it no longer needs.
    let bound = 16 * (max_event_size + largest_chunk) + 1024;
    assert!(
        peak <= bound,
        "the parser held {peak} heap bytes with a {max_event_size}-byte limit and chunks of \
         at most {largest_chunk} bytes (bound {bound}, {way:?})"
    );
    assert_eq!(parser.last_event_id(), expected.last_event_id);
    assert_eq!(parser.reconnection_time(), expected.reconnection_time);

    parser
}
