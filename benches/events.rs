//! Decoding SSE frames into `AgentEvent`s, against the baseline of decoding each frame into a
//! `serde_json::Value`.
//!
//! The corpus is 10,000 deterministic, realistic Google ADK events (about 1.1 KB each):
//! partial and final text, function calls with nested arguments, function responses with
//! nested results, state deltas and a few heartbeats.
//!
//! Two groups: `decode_10k_frames` decodes ready-made frame strings; `sse_to_events` starts
//! from the SSE bytes on the wire (16 KiB chunks through `nemo_video::sse`), so it measures
//! the whole path a message stream takes, parse + JSON.
//!
//! Run: `cargo bench -p nemo-video-benches --bench events` (from the repository root; the benches are the
//! `nemo-video-benches` package). Throughput is reported in frames per second.

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nemo_video::events::decode_frame;
use nemo_video::sse::{SseFrame, SseParser};

/// A small deterministic generator (64-bit LCG), so every run decodes the same bytes.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn uuid(&mut self) -> String {
        let (a, b, c) = (self.next(), self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            a & 0xffff_ffff,
            b & 0xffff,
            (b >> 16) & 0xfff,
            c & 0xfff,
            (c << 16 | a) & 0xffff_ffff_ffff
        )
    }

    fn sentence(&mut self, min_len: usize) -> String {
        const WORDS: &[&str] = &[
            "the",
            "person",
            "background",
            "removed",
            "tracking",
            "frame",
            "color",
            "solid",
            "replace",
            "clip",
            "timeline",
            "segment",
            "mask",
            "object",
            "render",
            "export",
            "1080p",
            "title",
            "\\\"Urban Dreams\\\"",
            "lo-fi",
            "music",
            "35%",
            "volume",
            "已完成",
            "背景",
            "人物",
            "轨道",
            "\\n",
            "edges",
            "smoothed",
            "feathered",
        ];
        let mut out = String::new();
        while out.len() < min_len {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(WORDS[self.below(WORDS.len() as u64) as usize]);
        }
        out.push('.');
        out
    }
}

fn actions(state_delta: &str) -> String {
    format!(
        r#""actions":{{"stateDelta":{state_delta},"artifactDelta":{{}},"requestedAuthConfigs":{{}},"requestedToolConfirmations":{{}}}}"#
    )
}

fn usage(rng: &mut Lcg) -> String {
    let prompt = 8_000 + rng.below(20_000);
    let out = 20 + rng.below(600);
    format!(
        r#""usageMetadata":{{"candidatesTokenCount":{out},"promptTokenCount":{prompt},"promptTokensDetails":[{{"modality":"TEXT","tokenCount":{prompt}}}],"thoughtsTokenCount":{},"totalTokenCount":{}}}"#,
        rng.below(300),
        prompt + out
    )
}

fn envelope(rng: &mut Lcg, body: &str, state_delta: &str) -> String {
    format!(
        r#"{{{body},{},"invocationId":"e-{}","author":"nemo_agent",{},"id":"{}","timestamp":{}.{:06}}}"#,
        usage(rng),
        rng.uuid(),
        actions(state_delta),
        rng.uuid(),
        1_760_000_000 + rng.below(1_000_000),
        rng.below(1_000_000)
    )
}

fn text_event(rng: &mut Lcg, partial: bool) -> String {
    let text = rng.sentence(if partial { 420 } else { 780 });
    let body = format!(
        r#""modelVersion":"gemini-2.5-flash","content":{{"parts":[{{"text":"{text}"}}],"role":"model"}},"partial":{partial}"#
    );
    envelope(rng, &body, "{}")
}

fn function_call_event(rng: &mut Lcg) -> String {
    let mut operations = String::new();
    for index in 0..2 + rng.below(2) {
        if index > 0 {
            operations.push(',');
        }
        let _ = write!(
            operations,
            r##"{{"type":"add_text","track":{},"params":{{"text":"{}","start_ms":{},"end_ms":{},"style":{{"font":"Inter","size":{},"color":"#ffffff","shadow":{{"x":2,"y":2,"blur":4.5}}}},"position":{{"x":0.5,"y":0.85}}}}}}"##,
            rng.below(4),
            rng.sentence(30),
            rng.below(10_000),
            10_000 + rng.below(20_000),
            24 + rng.below(48)
        );
    }
    let body = format!(
        r#""content":{{"parts":[{{"functionCall":{{"id":"adk-{}","args":{{"session_id":"7391823749182374912","operations":[{operations}],"dry_run":false}},"name":"apply_timeline_edits"}}}}],"role":"model"}},"longRunningToolIds":[]"#,
        rng.uuid()
    );
    envelope(rng, &body, "{}")
}

fn function_response_event(rng: &mut Lcg) -> String {
    let mut segments = String::new();
    for index in 0..2 + rng.below(3) {
        if index > 0 {
            segments.push(',');
        }
        let _ = write!(
            segments,
            r#"{{"id":"sg_{}","d":{},"m":{{"src":"https://cdn.nemovideo.ai/u/{}.mp4","volume":{}}}}}"#,
            rng.below(1_000),
            1_000 + rng.below(30_000),
            rng.uuid(),
            rng.below(100)
        );
    }
    let body = format!(
        r#""content":{{"parts":[{{"functionResponse":{{"id":"adk-{}","name":"apply_timeline_edits","response":{{"result":{{"status":"ok","applied":3,"tracks":[{{"tt":0,"sg":[{segments}]}}],"warnings":[]}}}}}}}}],"role":"user"}}"#,
        rng.uuid()
    );
    envelope(rng, &body, "{}")
}

fn state_delta_event(rng: &mut Lcg) -> String {
    let delta = format!(
        r#"{{"draft":{{"t":[{{"tt":0,"sg":[{{"d":{},"m":{{"name":"city timelapse"}}}}]}},{{"tt":1,"sg":[{{"d":{},"m":{{"name":"Lo-fi","volume":35}}}}]}},{{"tt":7,"sg":[{{"d":3000,"m":{{"text":"Urban Dreams"}}}}]}}]}},"draft_version":{},"last_edit":"{}"}}"#,
        10_000 + rng.below(5_000),
        10_000 + rng.below(5_000),
        rng.below(100),
        rng.sentence(60)
    );
    let body = format!(
        r#""content":{{"parts":[{{"text":"{}"}}],"role":"model"}}"#,
        rng.sentence(200)
    );
    envelope(rng, &body, &delta)
}

/// 10,000 frames: 34% partial text, 14% final text, 20% function calls, 20% function
/// responses, 10% text with a state delta, 2% heartbeats.
fn corpus() -> Vec<String> {
    let mut rng = Lcg(0x005e_ed0f_a6e7);
    (0..10_000)
        .map(|_| match rng.below(100) {
            0..=33 => text_event(&mut rng, true),
            34..=47 => text_event(&mut rng, false),
            48..=67 => function_call_event(&mut rng),
            68..=87 => function_response_event(&mut rng),
            88..=97 => state_delta_event(&mut rng),
            98 => String::new(),
            _ => r#"{"type":"heartbeat"}"#.to_owned(),
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let frames = corpus();
    let bytes: usize = frames.iter().map(String::len).sum();
    let not_json = frames
        .iter()
        .filter(|frame| serde_json::from_str::<serde_json::Value>(frame).is_err())
        .count();
    eprintln!(
        "corpus: {} frames, {} bytes, {} bytes/frame on average, {} not JSON (heartbeats)",
        frames.len(),
        bytes,
        bytes / frames.len(),
        not_json
    );

    let mut group = c.benchmark_group("decode_10k_frames");
    group.sample_size(15);
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function("agent_events", |b| {
        b.iter(|| {
            let mut events = 0;
            for frame in &frames {
                let decoded = decode_frame(black_box(frame));
                events += decoded.len();
                black_box(decoded);
            }
            events
        })
    });
    group.bench_function("serde_json_value", |b| {
        b.iter(|| {
            let mut values = 0;
            for frame in &frames {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(black_box(frame)) {
                    values += 1;
                    black_box(value);
                }
            }
            values
        })
    });
    group.finish();
}

/// The corpus as it arrives on the wire: one `data:` line per frame, blank line after.
fn wire_bytes(frames: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(frame.as_bytes());
        out.extend_from_slice(b"\n\n");
    }
    out
}

/// Feeds `wire` through the SSE parser in 16 KiB chunks and hands each event's data to `sink`.
fn parse_wire(wire: &[u8], mut sink: impl FnMut(&str)) {
    let mut parser = SseParser::new();
    for chunk in wire.chunks(16 * 1024) {
        parser.push(chunk);
        while let Some(frame) = parser.next_frame() {
            if let Ok(SseFrame::Event(event)) = frame {
                sink(event.data());
            }
        }
    }
    while let Some(frame) = parser.finish() {
        if let Ok(SseFrame::Event(event)) = frame {
            sink(event.data());
        }
    }
}

fn sse_to_events(c: &mut Criterion) {
    let frames = corpus();
    let wire = wire_bytes(&frames);
    // Both sides must see the same frames before anything is timed.
    let mut seen = 0;
    parse_wire(&wire, |_| seen += 1);
    assert_eq!(seen, frames.len(), "the parser must yield every frame");

    let mut group = c.benchmark_group("sse_to_events");
    group.sample_size(15);
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function("agent_events", |b| {
        b.iter(|| {
            let mut events = 0;
            parse_wire(black_box(&wire), |data| {
                let decoded = decode_frame(data);
                events += decoded.len();
                black_box(decoded);
            });
            events
        })
    });
    group.bench_function("serde_json_value", |b| {
        b.iter(|| {
            let mut values = 0;
            parse_wire(black_box(&wire), |data| {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(data) {
                    values += 1;
                    black_box(value);
                }
            });
            values
        })
    });
    group.finish();
}

criterion_group!(benches, decode, sse_to_events);
criterion_main!(benches);
