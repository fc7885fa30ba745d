//! Decoding and re-encoding a session state: the lossless typed `SessionState` against
//! `serde_json::Value`, on generated documents of about 64 KB and 2 MB.
//!
//! Run: `cargo bench -p nemo-video-benches --bench state` (from the repository root)

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nemo_video::state::SessionState;
use serde_json::Value;
use std::fmt::Write as _;
use std::time::Duration;

/// A deterministic pseudo-random sequence (xorshift), so every run decodes the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn segment(rng: &mut Rng, out: &mut String, start: u64, kind: u32, index: usize) -> u64 {
    let duration = 500 + rng.below(4000);
    let name = match kind {
        7 => format!(r#""text":"Caption {index} — caf\u00e9 \"quoted\"""#),
        1 => format!(
            r#""name":"track {index}.mp3","volume":0.{:02}"#,
            rng.below(100)
        ),
        _ => format!(r#""name":"clip {index}","file_name":"uploads/clip_{index}.mp4""#),
    };
    let _ = write!(
        out,
        r#"{{"id":"sg_{index}_{r}","st":{start},"d":{duration},"so":905.4000000000001,"sp":1.0,"m":{{{name},"src":"https://cdn.example/media/{r:x}.mp4","fx":[{{"k":"blur","v":{v}e-3}},{{"k":"lut","p":[0.1,0.2,0.30000000000000004]}}],"tr":{{"x":{x},"y":-0.0,"s":1E+0}}}},"kf":[{{"t":0,"v":1}},{{"t":{duration},"v":0.5}}]}}"#,
        r = rng.next() % 1_000_000,
        v = rng.below(1000),
        x = rng.below(1080),
    );
    start + duration
}

/// A compact `data` object of at least `target` bytes, shaped like a real state.
fn state_document(target: usize) -> (String, String) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut draft = String::from(r#"{"v":3,"fps":30,"ratio":"9:16","t":["#);
    let kinds = [0u32, 0, 1, 7];
    // Grow four tracks round-robin until the draft is big enough.
    let mut tracks: Vec<(u32, String, u64)> =
        kinds.iter().map(|k| (*k, String::new(), 0)).collect();
    let mut index = 0;
    while tracks.iter().map(|t| t.1.len()).sum::<usize>() < target * 9 / 10 {
        for (kind, body, end) in tracks.iter_mut() {
            if !body.is_empty() {
                body.push(',');
            }
            *end = segment(&mut rng, body, *end, *kind, index);
            index += 1;
        }
    }
    for (i, (kind, body, end)) in tracks.iter().enumerate() {
        if i > 0 {
            draft.push(',');
        }
        let _ = write!(
            draft,
            r#"{{"tt":{kind},"id":"track_{i}","d":{end},"m":{{"lock":false,"z":{i}}},"sg":[{body}],"extra":{{"muted":false}}}}"#
        );
    }
    let total = tracks.iter().map(|t| t.2).max().unwrap_or(0);
    let _ = write!(
        draft,
        r#"],"d":{total},"meta":{{"created":"2024-05-01T10:00:00Z"}}}}"#
    );

    let mut infos = String::new();
    for i in 0..8 {
        if i > 0 {
            infos.push(',');
        }
        let _ = write!(
            infos,
            r#"{{"filename":"clip_{i}.mp4","file_type":"video","cdn_url":"https://cdn.example/u/{i}.mp4","duration":{}.{},"width":1080,"height":1920,"fps":29.97,"hash":"h{i}","codec":"h264"}}"#,
            rng.below(60),
            rng.below(1000)
        );
    }
    let document = format!(
        r#"{{"session_id":"7301234567890123456","task_id":"task_1","task_name":"project","state":{{"draft":{draft},"video_infos":[{infos}],"generated_media":[{{"name":"fill","url":"https://cdn.example/g/1.mp4"}}],"canvas_config":{{"w":1080,"h":1920}},"video_analyses":{{"scenes":[1.5,3.25,905.4000000000001]}},"memory":{{"turns":12}}}},"updated_at":"2024-05-01T10:01:00Z"}}"#
    );
    (document, draft)
}

fn bench(c: &mut Criterion) {
    for (label, target) in [("64KB", 64 * 1024), ("2MB", 2 * 1024 * 1024)] {
        let (document, draft) = state_document(target);
        let bytes = document.as_bytes();

        // Exactness first: the draft comes back byte for byte, and so does the whole
        // (compact, duplicate-free) document.
        let state = SessionState::from_slice(bytes).expect("generated document decodes");
        let decoded = state.draft().expect("generated document has a draft");
        assert_eq!(
            decoded.as_json_str(),
            draft,
            "draft bytes must survive decoding"
        );
        assert!(decoded.is_ready_for_export());
        let encoded = serde_json::to_vec(&state).expect("re-encoding succeeds");
        assert!(
            encoded == bytes,
            "re-encoding must give back the same bytes"
        );
        let value: Value = serde_json::from_slice(bytes).expect("generated document is JSON");

        let mut group = c.benchmark_group(format!("state_{label}"));
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(2));
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(BenchmarkId::new("decode", "SessionState"), |b| {
            b.iter(|| SessionState::from_slice(black_box(bytes)).map(|s| s.is_ready_for_export()))
        });
        group.bench_function(BenchmarkId::new("decode", "Value"), |b| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(bytes)).map(|v| v.is_object()))
        });
        group.bench_function(BenchmarkId::new("encode", "SessionState"), |b| {
            b.iter(|| serde_json::to_vec(black_box(&state)).map(|v| v.len()))
        });
        group.bench_function(BenchmarkId::new("encode", "Value"), |b| {
            b.iter(|| serde_json::to_vec(black_box(&value)).map(|v| v.len()))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
