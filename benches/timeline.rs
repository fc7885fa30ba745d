//! Timeline work on big states: `SessionState::summary()` and `SessionState::diff()` over
//! 10 tracks of 1,000, 10,000 and 40,000 segments each, every segment with its own name (a
//! subtitle track with one cue per segment looks like this).
//!
//! Run: `cargo bench -p nemo-video-benches --bench timeline` (from the repository root)
//!
//! - `summary/N`: the one-line summary of the state.
//! - `diff_edits/N`: the state against a copy with six edits on every track (a clip added
//!   near the start, one removed, one renamed, one trimmed, one moved by half a second, one
//!   made louder): 60 changes, the text bounded after the first 20 timeline changes.
//! - `diff_all_renamed/N`: against a copy where every segment was renamed: 10 × N changes,
//!   all kept by `changes()`, the text still a few lines.
//!
//! Before timing, each group checks what the diff finds, so a fast wrong answer cannot pass.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use nemo_video::state::{Change, SessionState, LISTED_TIMELINE_CHANGES};

const TRACKS: usize = 10;

/// How the copy differs from the original.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Edit {
    None,
    Six,
    RenameAll,
}

/// A state document with `TRACKS` tracks of `segments` segments (video, audio and text
/// tracks in turn), each placed explicitly with `st` and `d` and named after its index.
fn document(segments: usize, edit: Edit) -> String {
    let mut draft = String::from(r#"{"v":3,"t":["#);
    for track in 0..TRACKS {
        if track > 0 {
            draft.push(',');
        }
        let kind = [0, 1, 7][track % 3];
        let _ = write!(draft, r#"{{"tt":{kind},"sg":["#);
        let mut first = true;
        let mut segment =
            |draft: &mut String, start: usize, duration: usize, name: &str, volume| {
                if !first {
                    draft.push(',');
                }
                first = false;
                let key = if kind == 7 { "text" } else { "name" };
                let _ = write!(
                    draft,
                    r#"{{"st":{start},"d":{duration},"m":{{"{key}":"{name}","volume":{volume}}}}}"#
                );
            };
        for index in 0..segments {
            let (mut start, mut duration, mut volume) = (index * 1000, 1000, 0.5);
            let mut name = format!("cue {track}.{index}");
            if edit == Edit::Six {
                if index == 3 {
                    // Added before it: a segment of its own, placed in a gap.
                    segment(&mut draft, start, 0, "inserted", 0.5);
                }
                if index == segments / 2 {
                    continue; // removed
                }
                if index == segments / 3 {
                    name = format!("renamed {track}");
                }
                if index == segments / 4 {
                    duration = 800; // trimmed
                }
                if index == segments / 5 {
                    start += 500; // moved by half a second
                }
                if index == segments - 2 {
                    volume = 0.9;
                }
            }
            if edit == Edit::RenameAll {
                name.push_str(" (new)");
            }
            segment(&mut draft, start, duration, &name, volume);
        }
        draft.push_str("]}");
    }
    draft.push_str("]}");
    format!(
        r#"{{"session_id":"7301234567890123456","state":{{"draft":{draft},"generated_media":[]}}}}"#
    )
}

fn state(segments: usize, edit: Edit) -> SessionState {
    SessionState::from_json(&document(segments, edit)).expect("the generated state decodes")
}

fn timeline(c: &mut Criterion) {
    for (label, segments) in [("1k", 1_000), ("10k", 10_000), ("40k", 40_000)] {
        let before = state(segments, Edit::None);
        let edited = state(segments, Edit::Six);
        let renamed = state(segments, Edit::RenameAll);

        // What each diff must find.
        let summary = before.summary();
        assert!(
            summary.contains(&format!("+{} more", segments - 3)),
            "{summary}"
        );
        let diff = before.diff(&edited);
        let added = |change: &Change| matches!(change, Change::SegmentAdded { .. });
        let removed = |change: &Change| matches!(change, Change::SegmentRemoved { .. });
        let changed = |change: &Change| matches!(change, Change::SegmentChanged { .. });
        // Per track: 1 added, 1 removed, 4 changed (renamed, trimmed, moved, louder).
        let count =
            |kind: &dyn Fn(&Change) -> bool| diff.changes().iter().filter(|c| kind(c)).count();
        assert_eq!(diff.changes().len(), TRACKS * 6, "{diff}");
        assert_eq!(count(&added), TRACKS);
        assert_eq!(count(&removed), TRACKS);
        assert_eq!(count(&changed), TRACKS * 4);
        let text = diff.to_string();
        assert!(
            text.ends_with("; and 40 more changes to tracks and clips."),
            "{text}"
        );
        let all = before.diff(&renamed);
        assert_eq!(all.changes().len(), TRACKS * segments);
        assert!(all.changes().iter().all(changed));
        let text = all.to_string();
        assert!(
            text.len() < 200 * LISTED_TIMELINE_CHANGES,
            "{} bytes of text",
            text.len()
        );
        eprintln!(
            "timeline/{label}: {TRACKS} tracks x {segments} segments; summary {} bytes; \
             edits: {} changes, {} bytes of text; all renamed: {} changes, {} bytes of text",
            summary.len(),
            diff.changes().len(),
            diff.to_string().len(),
            all.changes().len(),
            text.len()
        );

        let mut group = c.benchmark_group("timeline");
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        group.bench_function(BenchmarkId::new("summary", label), |b| {
            b.iter(|| black_box(&before).summary().len())
        });
        group.bench_function(BenchmarkId::new("diff_edits", label), |b| {
            b.iter(|| black_box(&before).diff(black_box(&edited)).changes().len())
        });
        group.bench_function(BenchmarkId::new("diff_all_renamed", label), |b| {
            b.iter(|| black_box(&before).diff(black_box(&renamed)).changes().len())
        });
        group.finish();
    }
}

criterion_group!(benches, timeline);
criterion_main!(benches);
