//! Throughput of `nemo_video::sse` against two published SSE parsers and a bare `memmem` scan.
//!
//! Run: `cargo bench -p nemo-video-benches --bench sse` (from the repository root)
//!
//! Every parser gets its input as an HTTP client hands it out: one owned `Bytes` per chunk, a
//! new handle on a shared buffer (made and dropped inside the timed loop, for every parser
//! alike). `nemo_video_sse` passes each chunk to `SseParser::push(&chunk)`, which copies it;
//! `nemo_video_sse_push_bytes` gives it to `SseParser::push_bytes(chunk)`, which parses it in
//! place; `sse-stream` and `eventsource-stream` get the stream of `Bytes` itself.
//! `sse_stream_0.3_borrowed_slices` feeds `sse-stream` borrowed slices instead, as this bench
//! did before `push_bytes` existed, for reference.
//!
//! - `adk_50MB/16KiB` and `adk_50MB/random_1_4096`: 50 MB of ADK-like events (~1.1 KB of
//!   JSON on one `data:` line each, some multi-line, with heartbeats mixed in: `: ping`,
//!   empty `data:`, `data: heartbeat`), generated from a fixed seed, fed in 16 KiB chunks or
//!   in random 1–4096 B chunks. `memmem_lf_lf` counts `\n\n` over the same bytes in one
//!   piece: a floor no parser can beat by much.
//! - `one_2MB_event/1460B`: one 2 MB event arriving in 1460-byte chunks (one TCP segment
//!   each), to show the work stays linear when a line arrives in many pieces.
//!
//! Before timing, each group asserts that all parsers report the same number of events and
//! the same hash over the concatenated event data.

use std::convert::Infallible;
use std::hint::black_box;
use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use eventsource_stream::Eventsource;
use futures::executor::block_on;
use futures::stream::{self, StreamExt};
use nemo_video::sse::{SseFrame, SseParser};

const SEED: u64 = 0x5EED_2024_0000_0001;
const STREAM_LEN: usize = 50_000_000;
/// A stream that fits in the last-level cache.
const CACHED_STREAM_LEN: usize = 4_000_000;

/// splitmix64: small, deterministic, good enough to vary lengths and words.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "the",
    "clip",
    "timeline",
    "track",
    "segment",
    "object",
    "remove",
    "background",
    "music",
    "subtitle",
    "export",
    "render",
    "frame",
    "scene",
    "cut",
    "fade",
    "transition",
    "volume",
    "title",
    "caption",
    "video",
    "audio",
    "draft",
    "canvas",
    "I",
    "will",
    "now",
    "apply",
    "点击",
    "导出",
    "拖拽",
    "打开",
    "café",
    "naïve",
    "✓",
];

/// Deterministic ADK-like event stream of at least `len` bytes, ending with a blank line.
fn generate(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(len + 4096);
    let mut n = 0u64;
    while out.len() < len {
        n += 1;
        match rng.below(100) {
            0..=2 => out.extend_from_slice(b": ping\n\n"),
            3..=5 => out.extend_from_slice(b"data:\n\n"),
            6..=8 => out.extend_from_slice(b"data: heartbeat\n\n"),
            roll => {
                let mut text = String::new();
                let target = 700 + rng.below(300) as usize;
                while text.len() < target {
                    text.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
                    text.push(' ');
                }
                let partial = rng.below(2) == 0;
                let head = format!(
                    "{{\"invocationId\":\"e-{:016x}\",\"author\":\"nemo_agent\",\"actions\":\
                     {{\"stateDelta\":{{}},\"artifactDelta\":{{}},\"requestedAuthConfigs\":{{}}}},\
                     \"id\":\"{:08x}\",\"timestamp\":{}.{:03},\"partial\":{partial},",
                    rng.next(),
                    rng.next() as u32,
                    1_718_000_000 + n,
                    rng.below(1000),
                );
                let body = format!(
                    "\"content\":{{\"role\":\"model\",\"parts\":[{{\"text\":\"{text}\"}}]}}}}"
                );
                if roll < 12 {
                    // A pretty-printed payload over two data lines.
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(head.as_bytes());
                    out.extend_from_slice(b"\ndata: ");
                    out.extend_from_slice(body.as_bytes());
                } else {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(head.as_bytes());
                    out.extend_from_slice(body.as_bytes());
                }
                out.extend_from_slice(b"\n\n");
            }
        }
    }
    out
}

fn fixed_chunks(input: &[u8], size: usize) -> Vec<&[u8]> {
    input.chunks(size).collect()
}

fn random_chunks(input: &[u8], seed: u64, max: u64) -> Vec<&[u8]> {
    let mut rng = Rng(seed);
    let mut chunks = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let take = (1 + rng.below(max) as usize).min(rest.len());
        let (chunk, tail) = rest.split_at(take);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// What a consumer sees: an event count plus either a hash or a byte total.
#[derive(Debug, PartialEq, Eq, Default)]
struct Seen {
    events: u64,
    hash: u64,
}

impl Seen {
    /// FNV-1a over each event's data followed by 0xFF (never in UTF-8), so event
    /// boundaries count too. Used only for the agreement check.
    fn hash(&mut self, data: &str) {
        self.events += 1;
        let mut h = if self.hash == 0 {
            0xCBF2_9CE4_8422_2325
        } else {
            self.hash
        };
        for &b in data.as_bytes().iter().chain(&[0xFF]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01B3);
        }
        self.hash = h;
    }

    /// The cheap consumption used while timing.
    fn count(&mut self, data: &str) {
        self.events += 1;
        self.hash = self.hash.wrapping_add(data.len() as u64);
    }
}

/// The chunks of one stream, as slices of one shared buffer.
struct Chunks(Vec<Bytes>);

impl Chunks {
    /// `slices` must lie inside `whole`'s bytes.
    fn new(whole: &Bytes, slices: Vec<&[u8]>) -> Self {
        Chunks(slices.iter().map(|slice| whole.slice_ref(slice)).collect())
    }

    /// The chunks as a network read hands them out: each a new owned handle.
    fn received(&self) -> impl Iterator<Item = Bytes> + '_ {
        self.0.iter().cloned()
    }
}

fn run_ours(chunks: &Chunks, mut seen: impl FnMut(&str)) {
    let mut parser = SseParser::new();
    for chunk in chunks.received() {
        parser.push(&chunk);
        drain(&mut parser, &mut seen);
    }
    finish(&mut parser, &mut seen);
}

fn run_ours_bytes(chunks: &Chunks, mut seen: impl FnMut(&str)) {
    let mut parser = SseParser::new();
    for chunk in chunks.received() {
        parser.push_bytes(chunk);
        drain(&mut parser, &mut seen);
    }
    finish(&mut parser, &mut seen);
}

#[inline]
fn drain(parser: &mut SseParser, seen: &mut impl FnMut(&str)) {
    while let Some(frame) = parser.next_frame() {
        if let Ok(SseFrame::Event(event)) = frame {
            seen(event.data());
        }
    }
}

fn finish(parser: &mut SseParser, seen: &mut impl FnMut(&str)) {
    while let Some(frame) = parser.finish() {
        if let Ok(SseFrame::Event(event)) = frame {
            seen(event.data());
        }
    }
}

fn run_sse_stream(chunks: &Chunks, mut seen: impl FnMut(&str)) {
    let input = stream::iter(chunks.received().map(Ok::<Bytes, Infallible>));
    let mut events = pin!(sse_stream::SseByteStream::new(input));
    block_on(async {
        while let Some(item) = events.next().await {
            let sse = item.expect("the generated stream is valid");
            if let Some(data) = &sse.data {
                seen(data);
            }
        }
    });
}

/// `sse-stream` fed borrowed slices of the chunks, as this bench did before `push_bytes`:
/// no handle per chunk to make and drop, which no network stream offers. Shown for reference.
fn run_sse_stream_slices(chunks: &Chunks, mut seen: impl FnMut(&str)) {
    let input = stream::iter(chunks.0.iter().map(|chunk| Ok::<&[u8], Infallible>(chunk)));
    let mut events = pin!(sse_stream::SseByteStream::new(input));
    block_on(async {
        while let Some(item) = events.next().await {
            let sse = item.expect("the generated stream is valid");
            if let Some(data) = &sse.data {
                seen(data);
            }
        }
    });
}

fn run_eventsource_stream(chunks: &Chunks, mut seen: impl FnMut(&str)) {
    let input = stream::iter(chunks.received().map(Ok::<Bytes, Infallible>));
    let mut events = pin!(input.eventsource());
    block_on(async {
        while let Some(item) = events.next().await {
            let event = item.expect("the generated stream is valid");
            seen(&event.data);
        }
    });
}

type Runner = fn(&Chunks, &mut dyn FnMut(&str));

fn check_agreement(chunks: &Chunks, with_eventsource: bool) -> Seen {
    let mut ours = Seen::default();
    run_ours(chunks, |d| ours.hash(d));
    let mut ours_bytes = Seen::default();
    run_ours_bytes(chunks, |d| ours_bytes.hash(d));
    assert_eq!(ours, ours_bytes, "push and push_bytes disagree");
    let mut peer = Seen::default();
    run_sse_stream(chunks, |d| peer.hash(d));
    assert_eq!(ours, peer, "nemo_video::sse and sse-stream disagree");
    if with_eventsource {
        let mut peer = Seen::default();
        run_eventsource_stream(chunks, |d| peer.hash(d));
        assert_eq!(
            ours, peer,
            "nemo_video::sse and eventsource-stream disagree"
        );
    }
    assert!(ours.events > 0);
    ours
}

fn adk_stream(c: &mut Criterion) {
    adk_stream_of(c, STREAM_LEN, "adk_50MB");
    // The same kind of stream small enough to stay in cache, as bytes fresh from the network
    // usually are: the 50 MB groups mostly measure copying input that comes from main memory.
    adk_stream_of(c, CACHED_STREAM_LEN, "adk_4MB_cached");
}

fn adk_stream_of(c: &mut Criterion, len: usize, prefix: &str) {
    let whole = Bytes::from(generate(SEED, len));
    let input: &[u8] = &whole;
    let chunkings: [(&str, Chunks); 2] = [
        ("16KiB", Chunks::new(&whole, fixed_chunks(input, 16 * 1024))),
        (
            "random_1_4096",
            Chunks::new(&whole, random_chunks(input, SEED ^ 0xC4A7, 4096)),
        ),
    ];
    let lf_lf = memchr::memmem::Finder::new(b"\n\n");
    for (name, chunks) in &chunkings {
        let seen = check_agreement(chunks, true);
        eprintln!(
            "{prefix}/{name}: {} bytes, {} chunks, {} events (all parsers agree)",
            input.len(),
            chunks.0.len(),
            seen.events
        );
        let mut group = c.benchmark_group(format!("{prefix}/{name}"));
        group
            .throughput(Throughput::Bytes(input.len() as u64))
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4));
        let runners: [(&str, Runner); 5] = [
            ("nemo_video_sse", |c, f| run_ours(c, f)),
            ("nemo_video_sse_push_bytes", |c, f| run_ours_bytes(c, f)),
            ("sse_stream_0.3", |c, f| run_sse_stream(c, f)),
            ("sse_stream_0.3_borrowed_slices", |c, f| {
                run_sse_stream_slices(c, f)
            }),
            ("eventsource_stream_0.2.3", |c, f| {
                run_eventsource_stream(c, f)
            }),
        ];
        for (label, run) in runners {
            group.bench_function(label, |b| {
                b.iter(|| {
                    let mut seen = Seen::default();
                    run(black_box(chunks), &mut |d| seen.count(d));
                    black_box(seen)
                })
            });
        }
        group.bench_function("memmem_lf_lf", |b| {
            b.iter(|| lf_lf.find_iter(black_box(input)).count())
        });
        group.finish();
    }
}

fn one_long_event(c: &mut Criterion) {
    let mut input = b"data: ".to_vec();
    let mut rng = Rng(SEED);
    while input.len() < 2_000_000 {
        input.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
        input.push(b' ');
    }
    input.extend_from_slice(b"\n\n");
    let whole = Bytes::from(input);
    let chunks = Chunks::new(&whole, fixed_chunks(&whole, 1460));
    let seen = check_agreement(&chunks, false);
    assert_eq!(seen.events, 1);
    let mut group = c.benchmark_group("one_2MB_event");
    group
        .throughput(Throughput::Bytes(whole.len() as u64))
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("1460B/nemo_video_sse", |b| {
        b.iter(|| {
            let mut seen = Seen::default();
            run_ours(black_box(&chunks), |d| seen.count(d));
            black_box(seen)
        })
    });
    group.bench_function("1460B/nemo_video_sse_push_bytes", |b| {
        b.iter(|| {
            let mut seen = Seen::default();
            run_ours_bytes(black_box(&chunks), |d| seen.count(d));
            black_box(seen)
        })
    });
    group.bench_function("1460B/sse_stream_0.3", |b| {
        b.iter(|| {
            let mut seen = Seen::default();
            run_sse_stream(black_box(&chunks), |d| seen.count(d));
            black_box(seen)
        })
    });
    group.finish();
}

criterion_group!(benches, adk_stream, one_long_event);
criterion_main!(benches);
