//! The editing timeline ("draft") of a session, kept byte for byte.
//!
//! The agent's draft is JSON with short keys: `t` tracks, `tt` track type, `sg` segments,
//! `d` duration in milliseconds, `m` metadata. Nobody outside NemoVideo has documented the
//! rest, and the draft goes back to the render endpoint unchanged, so a [`Draft`] is two
//! things at once:
//!
//! * **the exact JSON text it was decoded from.** Serializing a `Draft` writes that text
//!   verbatim: unknown keys, key order, duplicate keys, whitespace inside the value, number
//!   spelling (`905.4000000000001`, `1e5`, `-0.0`) and string escapes (`"\u00e9"`) all
//!   survive. [`Draft::as_json_str`] returns it. (Whitespace *around* a standalone document
//!   given to [`Draft::from_json`] is kept by `as_json_str` but is not part of the JSON value,
//!   so a serializer writes the value without it.)
//! * **a read-only typed view** ([`Draft::tracks`]) parsed from that text, used for
//!   summaries, export readiness and diffs. It never changes the text.
//!
//! # Decoding rules (the view)
//!
//! Decoding fails only on text that is not JSON. Everything else is tolerated: every field is
//! optional, and a field of the wrong type (a string `d`, an object `tt`, a number `name`)
//! counts as *unknown* in the view while staying untouched in the text.
//!
//! * The draft is an object; its `t` is an array of tracks and its `d` the declared total
//!   duration. A draft that arrives as a JSON *string* holding a JSON object (double-encoded)
//!   is viewed through that inner object. Anything else gives a view with no tracks.
//! * Entries of `t` and `sg` that are not objects are skipped in the view.
//! * Track: `tt` type code (an integer; `0` video, `1` audio, `7` text, any other code is
//!   [`TrackKind::Other`]); `d`; `sg` segments; `m` metadata; `id` (string or number).
//! * Segment: `d`; `m`; `id`; start from the first of `st`, `start`, `s`, `b` holding a valid
//!   number; end from the first of `e`, `et`, `end` holding a valid number.
//! * Times (`d`, starts, ends) are milliseconds: finite, non-negative numbers, integer or
//!   fractional. Negative or non-numeric values are unknown.
//! * When a key appears twice in one object, the last occurrence wins (as in `JSON.parse`).
//! * Metadata ([`Metadata`]) reads `name`, `title`, `text`, `label`, `file_name`, `filename`
//!   and `volume` from `m`; for each of them missing from `m` (or of the wrong type) the same
//!   key on the track or segment object itself is used. Names are strings; blank strings
//!   count as missing.
//!
//! # Placement of segments
//!
//! A segment starts at its start key; without one it starts where the previous segment of
//! its track ends (the first segment at 0). It ends at its end key, else at start + `d`;
//! an end before the start is unknown. A track spans from the earliest start to the latest
//! end of its placed segments; if no segment could be placed it spans `0`–`d` when the track
//! has a `d`. The draft's duration is its own `d` when valid, else the latest track end.
//!
//! # Timeline summary
//!
//! [`Draft::summary`] writes one line in the service's own format:
//!
//! ```text
//! Timeline (3 tracks): 1. Video: city timelapse (0-10s) 2. BGM: Lo-fi (0-10s, 35%) 3. Title: "Urban Dreams" (0-3s)
//! ```
//!
//! * No tracks: `Timeline is empty: no tracks yet.`
//! * Labels: video → `Video`, audio → `BGM`, text → `Title` (the service's words),
//!   another code → `Track (type N)`, no valid `tt` → `Track`.
//! * Names: each segment's name is the first present of `name`, `title`, `label`,
//!   `file_name`, `filename`, `text` (for text tracks `text` comes first); a file name is
//!   shortened to its last `/` path component. A track lists the distinct names of its
//!   segments in order, at most three, then ` +N more`; text-track names are in double
//!   quotes. With no named segment the track's own name is used, else `untitled`, or `empty`
//!   when the track has no segments. Control characters become spaces; names over 40
//!   characters are cut to 39 and `…`.
//! * Times are seconds: a whole number when whole, else one decimal (`1.5`, `3.3`), rounded
//!   to the nearest tenth. Unknown span: `(time unknown)`.
//! * Audio tracks show a volume when one is known: the first segment's `volume`, else the
//!   track's. A volume in `0..=1` is a fraction (`0.35` → `35%`), one in `(1, 100]` is
//!   already a percentage (`35` → `35%`); anything else is not shown.
//!
//! # Example
//!
//! ```
//! use nemo_video::draft::{Draft, TrackKind};
//!
//! let json = r#"{"t":[{"tt":0,"sg":[{"st":0,"d":10000,"m":{"name":"city timelapse"}}],"x":905.4000000000001}]}"#;
//! let draft = Draft::from_json(json)?;
//! assert_eq!(draft.as_json_str(), json); // byte for byte
//! assert_eq!(serde_json::to_string(&draft)?, json);
//! assert_eq!(draft.tracks()[0].kind(), Some(TrackKind::Video));
//! assert!(draft.is_ready_for_export());
//! assert_eq!(draft.summary(), "Timeline (1 track): 1. Video: city timelapse (0-10s)");
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use foldhash::{HashSet, HashSetExt};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// A session's editing timeline: the exact JSON text plus a read-only typed view.
///
/// See the [module docs](self) for the decoding and summary rules.
#[derive(Clone)]
pub struct Draft {
    raw: Box<RawValue>,
    /// The full input of [`Draft::from_json`] when it had whitespace around the value.
    outer: Option<Box<str>>,
    tracks: Vec<Track>,
    declared_duration_ms: Option<f64>,
}

impl Draft {
    /// Decodes a draft from JSON text, keeping the text exactly.
    ///
    /// Fails only when `json` is not a single JSON value.
    ///
    /// ```
    /// # use nemo_video::draft::Draft;
    /// let draft = Draft::from_json(r#"{"t":[],"unknown":{"k":1e5}}"#)?;
    /// assert_eq!(draft.as_json_str(), r#"{"t":[],"unknown":{"k":1e5}}"#);
    /// assert!(Draft::from_json("{").is_err());
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn from_json(json: &str) -> Result<Draft, serde_json::Error> {
        let raw = RawValue::from_string(json.to_owned())?;
        let outer = (raw.get().len() != json.len()).then(|| Box::from(json));
        let mut draft = Draft::from_raw(raw);
        draft.outer = outer;
        Ok(draft)
    }

    /// Builds a draft from an already captured raw JSON value (no copy of the text).
    pub fn from_raw(raw: Box<RawValue>) -> Draft {
        let (tracks, declared_duration_ms) = parse_view(raw.get());
        Draft {
            raw,
            outer: None,
            tracks,
            declared_duration_ms,
        }
    }

    /// The JSON text exactly as received.
    pub fn as_json_str(&self) -> &str {
        match &self.outer {
            Some(outer) => outer,
            None => self.raw.get(),
        }
    }

    /// The JSON value as a [`RawValue`] (the text without surrounding whitespace).
    pub fn as_raw(&self) -> &RawValue {
        &self.raw
    }

    /// Parses the text into a [`serde_json::Value`], for keys the typed view does not cover.
    ///
    /// Note that a `Value` does not keep number spelling or duplicate keys: send the draft
    /// itself (or [`Draft::as_json_str`]) back to the service, not this value.
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(self.raw.get())
    }

    /// Whether the draft is JSON `null` (the service has no draft yet).
    pub fn is_null(&self) -> bool {
        self.raw.get() == "null"
    }

    /// The tracks of the view, in draft order (non-object entries of `t` skipped).
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// The draft's own `d` in milliseconds, when it is a valid number.
    pub fn declared_duration_ms(&self) -> Option<f64> {
        self.declared_duration_ms
    }

    /// Total duration in milliseconds: the draft's `d` when valid, else the latest track end.
    pub fn duration_ms(&self) -> Option<f64> {
        self.declared_duration_ms.or_else(|| {
            self.tracks
                .iter()
                .filter_map(|track| track.time_range_ms().map(|(_, end)| end))
                .reduce(f64::max)
        })
    }

    /// Total duration (see [`Draft::duration_ms`]).
    pub fn duration(&self) -> Option<Duration> {
        self.duration_ms().and_then(ms_to_duration)
    }

    /// Ready to export: some track has at least one segment.
    ///
    /// ```
    /// # use nemo_video::draft::Draft;
    /// assert!(!Draft::from_json(r#"{"t":[{"tt":0,"sg":[]}]}"#)?.is_ready_for_export());
    /// assert!(Draft::from_json(r#"{"t":[{"tt":0,"sg":[{}]}]}"#)?.is_ready_for_export());
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn is_ready_for_export(&self) -> bool {
        self.tracks.iter().any(|track| !track.segments().is_empty())
    }

    /// The one-line timeline summary (format in the [module docs](self)).
    ///
    /// ```
    /// # use nemo_video::draft::Draft;
    /// assert_eq!(Draft::from_json("{}")?.summary(), "Timeline is empty: no tracks yet.");
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn summary(&self) -> String {
        if self.tracks.is_empty() {
            return EMPTY_TIMELINE.to_owned();
        }
        let count = self.tracks.len();
        let mut out = format!(
            "Timeline ({count} track{}):",
            if count == 1 { "" } else { "s" }
        );
        for (index, track) in self.tracks.iter().enumerate() {
            out.push_str(&format!(" {}. {}", index + 1, track.summary()));
        }
        out
    }
}

/// What [`Draft::summary`] says about a timeline without tracks.
pub const EMPTY_TIMELINE: &str = "Timeline is empty: no tracks yet.";

impl fmt::Debug for Draft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Draft")
            .field("json_bytes", &self.as_json_str().len())
            .field("tracks", &self.tracks)
            .field("declared_duration_ms", &self.declared_duration_ms)
            .finish()
    }
}

/// Two drafts are equal when their JSON texts are identical.
impl PartialEq for Draft {
    fn eq(&self, other: &Self) -> bool {
        self.as_json_str() == other.as_json_str()
    }
}

impl Eq for Draft {}

impl Serialize for Draft {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

/// Works with `serde_json` deserializers only (the text is captured as a [`RawValue`]).
impl<'de> Deserialize<'de> for Draft {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Draft::from_raw)
    }
}

/// The type of a track (`tt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TrackKind {
    /// `tt` = 0.
    Video,
    /// `tt` = 1.
    Audio,
    /// `tt` = 7.
    Text,
    /// Any code other than 0, 1 and 7, kept as sent (build kinds with
    /// [`TrackKind::from_code`] so that `Other` never holds those three).
    Other(i64),
}

impl TrackKind {
    /// The kind for a wire code.
    pub fn from_code(code: i64) -> TrackKind {
        match code {
            0 => TrackKind::Video,
            1 => TrackKind::Audio,
            7 => TrackKind::Text,
            other => TrackKind::Other(other),
        }
    }

    /// The wire code (`tt`).
    pub fn code(self) -> i64 {
        match self {
            TrackKind::Video => 0,
            TrackKind::Audio => 1,
            TrackKind::Text => 7,
            TrackKind::Other(code) => code,
        }
    }

    /// The summary label: `Video`, `BGM`, `Title` or `Track (type N)`.
    pub fn label(self) -> String {
        match self {
            TrackKind::Video => "Video".to_owned(),
            TrackKind::Audio => "BGM".to_owned(),
            TrackKind::Text => "Title".to_owned(),
            TrackKind::Other(code) => format!("Track (type {code})"),
        }
    }
}

/// Names and volume read from a track's or segment's metadata (see the module docs).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Metadata {
    name: Option<Arc<str>>,
    title: Option<Arc<str>>,
    text: Option<Arc<str>>,
    label: Option<Arc<str>>,
    file_name: Option<Arc<str>>,
    filename: Option<Arc<str>>,
    volume: Option<f64>,
}

impl Metadata {
    /// `name`.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// `title`.
    pub fn title(&self) -> Option<&str> {
        self.title.as_deref()
    }

    /// `text` (the words of a text segment).
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// `label`.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// `file_name`, else `filename`, as sent (may be a path or URL).
    pub fn file_name(&self) -> Option<&str> {
        self.file_name.as_deref().or(self.filename.as_deref())
    }

    /// `volume` as sent (any finite number).
    pub fn raw_volume(&self) -> Option<f64> {
        self.volume
    }

    /// The volume in percent: `0..=1` is a fraction, `(1, 100]` a percentage, rounded to an
    /// integer; anything else is `None`.
    pub fn volume_percent(&self) -> Option<u32> {
        let volume = self.volume?;
        let percent = if (0.0..=1.0).contains(&volume) {
            volume * 100.0
        } else if volume > 1.0 && volume <= 100.0 {
            volume
        } else {
            return None;
        };
        // In 0..=100, so the cast cannot truncate.
        Some(percent.round() as u32)
    }

    /// The display name: the first present of `name`, `title`, `label`, `file_name`,
    /// `filename`, `text`, or with `prefer_text` `text` first. File names are shortened to
    /// their last path component.
    pub fn display_name(&self, prefer_text: bool) -> Option<&str> {
        let text = self.text.as_deref();
        let first = if prefer_text { text } else { None };
        first
            .or(self.name.as_deref())
            .or(self.title.as_deref())
            .or(self.label.as_deref())
            .or_else(|| self.file_name().map(last_path_component))
            .or(if prefer_text { None } else { text })
    }

    fn or_from(self, fallback: Metadata) -> Metadata {
        Metadata {
            name: self.name.or(fallback.name),
            title: self.title.or(fallback.title),
            text: self.text.or(fallback.text),
            label: self.label.or(fallback.label),
            file_name: self.file_name.or(fallback.file_name),
            filename: self.filename.or(fallback.filename),
            volume: self.volume.or(fallback.volume),
        }
    }
}

fn last_path_component(name: &str) -> &str {
    let trimmed = name.trim_end_matches('/');
    match trimmed.rsplit('/').next() {
        Some(last) if !last.is_empty() => last,
        _ => name,
    }
}

/// One track of the view.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct Track(Arc<TrackData>);

#[derive(Debug, PartialEq)]
struct TrackData {
    kind: Option<TrackKind>,
    id: Option<Arc<str>>,
    duration_ms: Option<f64>,
    segments: Vec<Segment>,
    metadata: Metadata,
}

impl fmt::Debug for Track {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Track")
            .field("kind", &self.0.kind)
            .field("id", &self.0.id)
            .field("duration_ms", &self.0.duration_ms)
            .field("segments", &self.0.segments)
            .field("metadata", &self.0.metadata)
            .finish()
    }
}

impl Track {
    /// The kind from `tt`; `None` when `tt` is missing or not an integer.
    pub fn kind(&self) -> Option<TrackKind> {
        self.0.kind
    }

    /// `id`, when present (a number is given as its decimal text).
    pub fn id(&self) -> Option<&str> {
        self.0.id.as_deref()
    }

    /// The track's `d` in milliseconds.
    pub fn duration_ms(&self) -> Option<f64> {
        self.0.duration_ms
    }

    /// The track's `d` as a [`Duration`].
    pub fn duration(&self) -> Option<Duration> {
        self.0.duration_ms.and_then(ms_to_duration)
    }

    /// The segments (`sg`), non-object entries skipped.
    pub fn segments(&self) -> &[Segment] {
        &self.0.segments
    }

    /// The track's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.0.metadata
    }

    /// The summary label (`Video`, `BGM`, `Title`, `Track (type N)`, or `Track`).
    pub fn label(&self) -> String {
        self.0
            .kind
            .map_or_else(|| "Track".to_owned(), TrackKind::label)
    }

    /// The time span in milliseconds (rules in the module docs).
    pub fn time_range_ms(&self) -> Option<(f64, f64)> {
        let placed = self
            .segments()
            .iter()
            .filter_map(Segment::time_range_ms)
            .reduce(|(start, end), (s, e)| (start.min(s), end.max(e)));
        placed.or_else(|| self.0.duration_ms.map(|d| (0.0, d)))
    }

    /// The volume shown for the track: the first segment's, else the track's.
    pub fn volume_percent(&self) -> Option<u32> {
        self.0
            .segments
            .iter()
            .find_map(|segment| segment.metadata().volume_percent())
            .or_else(|| self.0.metadata.volume_percent())
    }

    fn is_text(&self) -> bool {
        self.0.kind == Some(TrackKind::Text)
    }

    /// The display name as in the summary (names, `untitled` or `empty`).
    pub fn display_name(&self) -> String {
        let prefer_text = self.is_text();
        let names = self
            .segments()
            .iter()
            .map(|segment| segment.metadata().display_name(prefer_text));
        self.display_name_from(names)
    }

    /// [`Track::display_name`] from the segments' display names, already read.
    pub(crate) fn display_name_from<'a>(
        &'a self,
        segment_names: impl Iterator<Item = Option<&'a str>>,
    ) -> String {
        self.names_from(segment_names, self.is_text())
            .unwrap_or_else(|| {
                if self.0.segments.is_empty() {
                    "empty"
                } else {
                    "untitled"
                }
                .to_owned()
            })
    }

    /// The distinct names of the track (see the module docs), each quoted when `quote`;
    /// `None` when nothing is named.
    pub(crate) fn names(&self, quote: bool) -> Option<String> {
        let prefer_text = self.is_text();
        let names = self
            .segments()
            .iter()
            .map(|segment| segment.metadata().display_name(prefer_text));
        self.names_from(names, quote)
    }

    /// [`Track::names`] from the segments' display names (`display_name` with `text` first
    /// on text tracks), already read.
    fn names_from<'a>(
        &'a self,
        segment_names: impl Iterator<Item = Option<&'a str>>,
        quote: bool,
    ) -> Option<String> {
        const SHOWN: usize = 3;
        // The first few distinct names, and how many there are: a set, so that a track with
        // one distinct name per segment (subtitles) costs linear time, not quadratic.
        let mut first: Vec<&str> = Vec::with_capacity(SHOWN);
        let mut seen: HashSet<&str> = HashSet::with_capacity(self.0.segments.len());
        for name in segment_names.flatten() {
            if seen.insert(name) && first.len() < SHOWN {
                first.push(name);
            }
        }
        let mut distinct = seen.len();
        if distinct == 0 {
            first.extend(self.0.metadata.display_name(self.is_text()));
            distinct = first.len();
        }
        if distinct == 0 {
            return None;
        }
        let shown: Vec<String> = first.iter().map(|name| quote_name(name, quote)).collect();
        let mut out = shown.join(", ");
        if distinct > SHOWN {
            out.push_str(&format!(" +{} more", distinct - SHOWN));
        }
        Some(out)
    }

    /// This track's part of the summary, e.g. `BGM: Lo-fi (0-10s, 35%)`.
    pub fn summary(&self) -> String {
        let range = match self.time_range_ms() {
            Some((start, end)) => format!("{}-{}s", format_seconds(start), format_seconds(end)),
            None => "time unknown".to_owned(),
        };
        let volume = match (self.0.kind, self.volume_percent()) {
            (Some(TrackKind::Audio), Some(percent)) => format!(", {percent}%"),
            _ => String::new(),
        };
        format!(
            "{}: {} ({range}{volume})",
            self.label(),
            self.display_name()
        )
    }
}

/// One segment of a track. Cheap to clone (shared): a diff keeps the segments it reports
/// without copying them, however many changed.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct Segment(Arc<SegmentData>);

#[derive(Debug, PartialEq)]
struct SegmentData {
    id: Option<Arc<str>>,
    start_ms: Option<f64>,
    end_ms: Option<f64>,
    duration_ms: Option<f64>,
    placed: Option<(f64, f64)>,
    metadata: Metadata,
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("id", &self.0.id)
            .field("start_ms", &self.0.start_ms)
            .field("end_ms", &self.0.end_ms)
            .field("duration_ms", &self.0.duration_ms)
            .field("placed", &self.0.placed)
            .field("metadata", &self.0.metadata)
            .finish()
    }
}

impl Segment {
    /// `id`, when present (a number is given as its decimal text).
    pub fn id(&self) -> Option<&str> {
        self.0.id.as_deref()
    }

    /// The start as sent (`st`, `start`, `s` or `b`), in milliseconds.
    pub fn start_ms(&self) -> Option<f64> {
        self.0.start_ms
    }

    /// The end as sent (`e`, `et` or `end`), in milliseconds.
    pub fn end_ms(&self) -> Option<f64> {
        self.0.end_ms
    }

    /// The segment's `d` in milliseconds.
    pub fn duration_ms(&self) -> Option<f64> {
        self.0.duration_ms
    }

    /// Where the segment sits on the timeline, in milliseconds (placement rules in the
    /// module docs).
    pub fn time_range_ms(&self) -> Option<(f64, f64)> {
        self.0.placed
    }

    /// The segment's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.0.metadata
    }
}

/// Seconds for the summary: whole numbers bare, else one decimal, rounded to a tenth.
///
/// ```
/// # use nemo_video::draft::format_seconds;
/// assert_eq!(format_seconds(10_000.0), "10");
/// assert_eq!(format_seconds(1_500.0), "1.5");
/// assert_eq!(format_seconds(905.4000000000001), "0.9");
/// assert_eq!(format_seconds(9_960.0), "10");
/// ```
pub fn format_seconds(ms: f64) -> String {
    let tenths = (ms / 100.0).round();
    if tenths % 10.0 == 0.0 {
        format!("{}", tenths / 10.0)
    } else {
        format!("{:.1}", tenths / 10.0)
    }
}

/// A cleaned name, in double quotes when `quote`.
pub(crate) fn quote_name(name: &str, quote: bool) -> String {
    let clean = clean_name(name);
    if quote {
        format!("\"{clean}\"")
    } else {
        clean
    }
}

fn clean_name(name: &str) -> String {
    let mut cleaned: String = name
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if cleaned.chars().count() > 40 {
        cleaned = cleaned.chars().take(39).collect();
        cleaned.push('…');
    }
    cleaned
}

fn ms_to_duration(ms: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(ms / 1000.0).ok()
}

// ---------------------------------------------------------------------------------------
// Tolerant decoding: every visitor accepts any JSON value and turns the wrong type into
// `None`, draining containers with `IgnoredAny` (serde_json skips those without recursion).
// ---------------------------------------------------------------------------------------

/// A value decoded from any JSON: `None` when the JSON had another type.
pub(crate) trait Lenient: Sized {
    fn from_bool(_value: bool) -> Option<Self> {
        None
    }
    fn from_i64(_value: i64) -> Option<Self> {
        None
    }
    fn from_u64(_value: u64) -> Option<Self> {
        None
    }
    fn from_f64(_value: f64) -> Option<Self> {
        None
    }
    fn from_str(_value: &str) -> Option<Self> {
        None
    }
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn from_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// Deserializes any JSON value into `Some(T)` when it has the right shape, else `None`.
pub(crate) struct Tolerant<T>(pub(crate) Option<T>);

impl<'de, T: Lenient> Deserialize<'de> for Tolerant<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(TolerantVisitor(PhantomData))
            .map(Tolerant)
    }
}

struct TolerantVisitor<T>(PhantomData<T>);

impl<'de, T: Lenient> Visitor<'de> for TolerantVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(T::from_bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(T::from_i64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(T::from_u64(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(T::from_f64(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(T::from_str(v))
    }
    fn visit_bytes<E: de::Error>(self, _v: &[u8]) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Tolerant::<T>::deserialize(d).map(|t| t.0)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::from_map(map)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        T::from_seq(seq)
    }
}

/// A map key matched against known names without allocating.
pub(crate) trait FieldKey: Sized {
    fn from_key(key: &str) -> Self;
}

/// Deserializes a map key into `K` via [`FieldKey`].
pub(crate) struct Key<K>(pub(crate) K);

impl<'de, K: FieldKey> Deserialize<'de> for Key<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor<K>(PhantomData<K>);
        impl<'de, K: FieldKey> Visitor<'de> for KeyVisitor<K> {
            type Value = Key<K>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(K::from_key(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor(PhantomData))
    }
}

/// A non-empty (after trimming) string. Shared (`Arc<str>`), so that copying a segment into
/// a diff's change costs a reference count, not an allocation per name.
pub(crate) struct Text(pub(crate) Arc<str>);

impl Lenient for Text {
    fn from_str(value: &str) -> Option<Self> {
        (!value.trim().is_empty()).then(|| Text(Arc::from(value)))
    }
}

/// An identifier: a string, or a number's decimal text (shared, as [`Text`]).
pub(crate) struct Id(pub(crate) Arc<str>);

impl Lenient for Id {
    fn from_str(value: &str) -> Option<Self> {
        Some(Id(Arc::from(value)))
    }
    fn from_i64(value: i64) -> Option<Self> {
        Some(Id(Arc::from(value.to_string())))
    }
    fn from_u64(value: u64) -> Option<Self> {
        Some(Id(Arc::from(value.to_string())))
    }
    fn from_f64(value: f64) -> Option<Self> {
        Some(Id(Arc::from(value.to_string())))
    }
}

/// Any finite number.
pub(crate) struct Number(pub(crate) f64);

impl Lenient for Number {
    fn from_i64(value: i64) -> Option<Self> {
        Some(Number(value as f64))
    }
    fn from_u64(value: u64) -> Option<Self> {
        Some(Number(value as f64))
    }
    fn from_f64(value: f64) -> Option<Self> {
        value.is_finite().then_some(Number(value))
    }
}

/// A finite, non-negative number of milliseconds.
struct Millis(f64);

impl Lenient for Millis {
    fn from_i64(value: i64) -> Option<Self> {
        (value >= 0).then_some(Millis(value as f64))
    }
    fn from_u64(value: u64) -> Option<Self> {
        Some(Millis(value as f64))
    }
    fn from_f64(value: f64) -> Option<Self> {
        (value.is_finite() && value >= 0.0).then_some(Millis(value))
    }
}

fn millis(value: Tolerant<Millis>) -> Option<f64> {
    value.0.map(|m| m.0)
}

/// An integer track type code.
struct Code(i64);

impl Lenient for Code {
    fn from_i64(value: i64) -> Option<Self> {
        Some(Code(value))
    }
    fn from_u64(value: u64) -> Option<Self> {
        i64::try_from(value).ok().map(Code)
    }
    fn from_f64(value: f64) -> Option<Self> {
        let integral = value.fract() == 0.0 && value >= i64::MIN as f64 && value < i64::MAX as f64;
        // Checked above: integral and in range, so the cast is exact.
        integral.then_some(Code(value as i64))
    }
}

enum NameKey {
    Name,
    Title,
    Text,
    Label,
    FileName,
    Filename,
    Volume,
}

impl NameKey {
    fn parse(key: &str) -> Option<NameKey> {
        Some(match key {
            "name" => NameKey::Name,
            "title" => NameKey::Title,
            "text" => NameKey::Text,
            "label" => NameKey::Label,
            "file_name" => NameKey::FileName,
            "filename" => NameKey::Filename,
            "volume" => NameKey::Volume,
            _ => return None,
        })
    }
}

impl Metadata {
    fn read<'de, A: MapAccess<'de>>(&mut self, key: NameKey, map: &mut A) -> Result<(), A::Error> {
        let text = |t: Tolerant<Text>| t.0.map(|t| t.0);
        match key {
            NameKey::Name => self.name = text(map.next_value()?),
            NameKey::Title => self.title = text(map.next_value()?),
            NameKey::Text => self.text = text(map.next_value()?),
            NameKey::Label => self.label = text(map.next_value()?),
            NameKey::FileName => self.file_name = text(map.next_value()?),
            NameKey::Filename => self.filename = text(map.next_value()?),
            NameKey::Volume => self.volume = map.next_value::<Tolerant<Number>>()?.0.map(|n| n.0),
        }
        Ok(())
    }
}

// Rust 1.85 (the MSRV) takes this for never constructed (it is, in `FieldKey::from_key`)
// and its warning would reach the examples' stderr.
#[allow(dead_code)]
struct MetaKey(Option<NameKey>);

impl FieldKey for MetaKey {
    fn from_key(key: &str) -> Self {
        MetaKey(NameKey::parse(key))
    }
}

impl Lenient for Metadata {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut meta = Metadata::default();
        while let Some(Key(MetaKey(key))) = map.next_key()? {
            match key {
                Some(key) => meta.read(key, &mut map)?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(meta))
    }
}

enum ObjectKey {
    TrackType,
    Duration,
    Segments,
    Meta,
    Id,
    Start(usize),
    End(usize),
    Tracks,
    Name(NameKey),
    Other,
}

const START_KEYS: [&str; 4] = ["st", "start", "s", "b"];
const END_KEYS: [&str; 3] = ["e", "et", "end"];

impl FieldKey for ObjectKey {
    fn from_key(key: &str) -> Self {
        match key {
            "tt" => ObjectKey::TrackType,
            "d" => ObjectKey::Duration,
            "sg" => ObjectKey::Segments,
            "m" => ObjectKey::Meta,
            "id" => ObjectKey::Id,
            "t" => ObjectKey::Tracks,
            _ => {
                if let Some(i) = START_KEYS.iter().position(|k| *k == key) {
                    ObjectKey::Start(i)
                } else if let Some(i) = END_KEYS.iter().position(|k| *k == key) {
                    ObjectKey::End(i)
                } else if let Some(name) = NameKey::parse(key) {
                    ObjectKey::Name(name)
                } else {
                    ObjectKey::Other
                }
            }
        }
    }
}

struct SegmentWire {
    id: Option<Arc<str>>,
    starts: [Option<f64>; 4],
    ends: [Option<f64>; 3],
    duration_ms: Option<f64>,
    metadata: Metadata,
}

impl Lenient for SegmentWire {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut own = Metadata::default();
        let mut segment = SegmentWire {
            id: None,
            starts: [None; 4],
            ends: [None; 3],
            duration_ms: None,
            metadata: Metadata::default(),
        };
        while let Some(Key(key)) = map.next_key::<Key<ObjectKey>>()? {
            match key {
                ObjectKey::Duration => segment.duration_ms = millis(map.next_value()?),
                ObjectKey::Meta => {
                    segment.metadata = map
                        .next_value::<Tolerant<Metadata>>()?
                        .0
                        .unwrap_or_default()
                }
                ObjectKey::Id => segment.id = map.next_value::<Tolerant<Id>>()?.0.map(|i| i.0),
                ObjectKey::Start(i) => segment.starts[i] = millis(map.next_value()?),
                ObjectKey::End(i) => segment.ends[i] = millis(map.next_value()?),
                ObjectKey::Name(name) => own.read(name, &mut map)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        segment.metadata = std::mem::take(&mut segment.metadata).or_from(own);
        Ok(Some(segment))
    }
}

/// Non-object elements of an array are skipped.
struct ObjectList<T>(Vec<T>);

impl<T: Lenient> Lenient for ObjectList<T> {
    fn from_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Tolerant(item)) = seq.next_element::<Tolerant<T>>()? {
            items.extend(item);
        }
        Ok(Some(ObjectList(items)))
    }
}

struct TrackWire(Track);

impl Lenient for TrackWire {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut own = Metadata::default();
        let mut metadata = Metadata::default();
        let mut kind = None;
        let mut id = None;
        let mut duration_ms = None;
        let mut wires: Vec<SegmentWire> = Vec::new();
        while let Some(Key(key)) = map.next_key::<Key<ObjectKey>>()? {
            match key {
                ObjectKey::TrackType => {
                    kind = map
                        .next_value::<Tolerant<Code>>()?
                        .0
                        .map(|c| TrackKind::from_code(c.0))
                }
                ObjectKey::Duration => duration_ms = millis(map.next_value()?),
                ObjectKey::Segments => {
                    wires = map
                        .next_value::<Tolerant<ObjectList<SegmentWire>>>()?
                        .0
                        .map_or_else(Vec::new, |l| l.0)
                }
                ObjectKey::Meta => {
                    metadata = map
                        .next_value::<Tolerant<Metadata>>()?
                        .0
                        .unwrap_or_default()
                }
                ObjectKey::Id => id = map.next_value::<Tolerant<Id>>()?.0.map(|i| i.0),
                ObjectKey::Name(name) => own.read(name, &mut map)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(TrackWire(Track(Arc::new(TrackData {
            kind,
            id,
            duration_ms,
            segments: place_segments(wires),
            metadata: metadata.or_from(own),
        })))))
    }
}

fn place_segments(wires: Vec<SegmentWire>) -> Vec<Segment> {
    let mut previous_end = Some(0.0);
    wires
        .into_iter()
        .map(|wire| {
            let start_ms = wire.starts.iter().flatten().next().copied();
            let end_ms = wire.ends.iter().flatten().next().copied();
            let start = start_ms.or(previous_end);
            let end = start.and_then(|start| {
                end_ms
                    .or_else(|| wire.duration_ms.map(|d| start + d))
                    .filter(|end| *end >= start)
            });
            previous_end = end;
            Segment(Arc::new(SegmentData {
                id: wire.id,
                start_ms,
                end_ms,
                duration_ms: wire.duration_ms,
                placed: start.zip(end),
                metadata: wire.metadata,
            }))
        })
        .collect()
}

#[derive(Default)]
struct DraftWire {
    tracks: Vec<Track>,
    duration_ms: Option<f64>,
}

impl Lenient for DraftWire {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut draft = DraftWire::default();
        while let Some(Key(key)) = map.next_key::<Key<ObjectKey>>()? {
            match key {
                ObjectKey::Tracks => {
                    draft.tracks = map
                        .next_value::<Tolerant<ObjectList<TrackWire>>>()?
                        .0
                        .map_or_else(Vec::new, |l| l.0.into_iter().map(|t| t.0).collect())
                }
                ObjectKey::Duration => draft.duration_ms = millis(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(draft))
    }
}

fn parse_view(json: &str) -> (Vec<Track>, Option<f64>) {
    let wire = if json.starts_with('"') {
        // A double-encoded draft: view the object inside the string.
        serde_json::from_str::<String>(json)
            .ok()
            .and_then(|inner| serde_json::from_str::<Tolerant<DraftWire>>(&inner).ok())
    } else {
        serde_json::from_str::<Tolerant<DraftWire>>(json).ok()
    }
    .and_then(|t| t.0)
    .unwrap_or_default();
    (wire.tracks, wire.duration_ms)
}
