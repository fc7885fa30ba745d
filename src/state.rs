//! A session's state (`GET /api/state/nemo_agent/me/<sid>/latest`) and what changed
//! between two reads of it.
//!
//! # Decoding rules
//!
//! [`SessionState`] is the envelope's `data` object. Nothing about it was seen on the live
//! service, so decoding fails only on text that is not JSON, and nothing is dropped:
//!
//! * Known keys of `data`: `session_id`, `task_id`, `task_name` (strings; a number keeps its
//!   exact digits, never through `f64`) and `state`. Known keys of `data.state`: `draft`,
//!   `video_infos`, `generated_media`, `canvas_config`, `video_analyses`.
//! * Every other key, at both levels, is kept as raw JSON in arrival order
//!   ([`SessionState::extra`], [`SessionState::state_extra`]). A known key whose value has
//!   the wrong type (an object `session_id`, a string `state`) is kept the same way.
//! * The draft is a lossless [`Draft`]: its bytes are kept exactly. `video_infos` and
//!   `generated_media` are kept exactly too ([`MediaList`]); when they are arrays their
//!   items are also viewed as [`MediaInfo`] (an item that is a string is taken as a URL).
//!   When they are anything else (an object, say) the raw JSON is kept and the item list
//!   is empty.
//! * A `data` that is not an object (`null`, say) decodes as an empty state.
//! * Re-encoding ([`Serialize`]) writes the keys in their arrival order with their raw
//!   values, so a compact document without duplicate keys comes back byte for byte. A known
//!   key sent twice is written once, where it first appeared, with its last value.
//!
//! # Diff rules
//!
//! [`SessionState::diff`] compares two reads and lists the [`Change`]s in timeline order,
//! then the duration, then media:
//!
//! * Tracks are matched by `id` when both have one, else by kind and names; a common run of
//!   identical tracks is matched first (longest common subsequence), and the tracks left
//!   between two matches are paired in order when their kinds agree. Unpaired tracks are
//!   added or removed.
//! * Segments of a matched track are matched the same way (by `id`, else name and
//!   placement); leftovers between two matches are paired in order and reported as changed
//!   when their name, placement (to the millisecond) or volume differ.
//! * A matched track whose own name, volume or `d` differ is reported as changed.
//! * The duration ([`Draft::duration_ms`]) is compared to the millisecond.
//! * Media: a list that grew reports the new item count, one that shrank the removed count.
//! * When the drafts' JSON differ but none of the above shows it (an effect in a key this
//!   crate does not know, say), one [`Change::DraftDetailsChanged`] says so.
//!
//! [`StateDiff`]'s `Display` is one sentence, e.g.
//! `Added a video track "solid fill" (0-10s); duration 10s → 12s; 1 new generated media.`,
//! or `No changes to the timeline.` when nothing changed. It lists at most
//! [`LISTED_TIMELINE_CHANGES`] (20) track and clip changes, then
//! `and N more changes to tracks and clips`, then the duration and media changes; the
//! alternate form (`{:#}`) lists every change, and [`StateDiff::changes`] has them all.
//!
//! # Cost
//!
//! [`SessionState::summary`] is linear in the number of segments. [`SessionState::diff`]
//! reads each segment once, then aligns each matched track's segments by key: the common
//! start and end first, then the longest common subsequence of the rest, from an LCS table
//! when that is small (up to 2^20 cells) and otherwise with Myers' algorithm (the `similar`
//! crate), whose search is bounded on large inputs (deterministically, not by a clock). A
//! long timeline with a few edits diffs in close to linear time: ten tracks of 40,000
//! segments in tens of milliseconds (`cargo bench -p nemo-video-benches --bench timeline`). A timeline rewritten
//! wholesale costs more, mostly in copying every changed segment into its [`Change`].
//! [`NemoClient::run_turn`](crate::NemoClient::run_turn) compares big states on tokio's
//! blocking pool.
//!
//! # Example
//!
//! ```
//! use nemo_video::state::SessionState;
//!
//! let before = SessionState::from_json(r#"{"state":{"draft":{"t":[]},"generated_media":[]}}"#)?;
//! let after = SessionState::from_json(
//!     r#"{"state":{"draft":{"t":[{"tt":0,"sg":[{"d":10000,"m":{"name":"solid fill"}}]}]},
//!         "generated_media":[{"url":"https://cdn.example/a.mp4"}]}}"#,
//! )?;
//! assert!(after.is_ready_for_export());
//! assert_eq!(
//!     before.diff(&after).to_string(),
//!     r#"Added a video track "solid fill" (0-10s); duration now 10s; 1 new generated media."#
//! );
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Range;

use foldhash::{HashMap, HashMapExt};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use similar::{Algorithm, DiffOp};

use crate::draft::{
    format_seconds, quote_name, Draft, FieldKey, Key, Lenient, Number, Segment, Text, Tolerant,
    Track, TrackKind, EMPTY_TIMELINE,
};

/// The decoded `data` object of the session state endpoint (rules in the
/// [module docs](self)).
#[derive(Debug, Clone, Default)]
pub struct SessionState {
    order: Vec<DataSlot>,
    session_id: Option<IdField>,
    task_id: Option<IdField>,
    task_name: Option<IdField>,
    state: Option<StateParts>,
    extra: Vec<(String, Box<RawValue>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataSlot {
    SessionId,
    TaskId,
    TaskName,
    State,
    Extra(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StateSlot {
    Draft,
    VideoInfos,
    GeneratedMedia,
    CanvasConfig,
    VideoAnalyses,
    Extra(usize),
}

#[derive(Debug, Clone, Default)]
struct StateParts {
    order: Vec<StateSlot>,
    draft: Option<Draft>,
    video_infos: Option<MediaList>,
    generated_media: Option<MediaList>,
    canvas_config: Option<Box<RawValue>>,
    video_analyses: Option<Box<RawValue>>,
    extra: Vec<(String, Box<RawValue>)>,
}

#[derive(Debug, Clone)]
struct IdField {
    text: String,
    raw: Box<RawValue>,
}

/// Two lists are equal when their JSON texts are identical.
impl PartialEq for MediaList {
    fn eq(&self, other: &Self) -> bool {
        self.raw.get() == other.raw.get()
    }
}

impl SessionState {
    /// Decodes the `data` object from JSON text.
    ///
    /// ```
    /// # use nemo_video::state::SessionState;
    /// let state = SessionState::from_json(r#"{"session_id":1234567890123456789012,"state":{"draft":null}}"#)?;
    /// assert_eq!(state.session_id(), Some("1234567890123456789012"));
    /// assert!(state.draft().is_none());
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn from_json(json: &str) -> Result<SessionState, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// Decodes the `data` object from JSON bytes.
    pub fn from_slice(json: &[u8]) -> Result<SessionState, serde_json::Error> {
        serde_json::from_slice(json)
    }

    /// `data.session_id`.
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_ref().map(|id| id.text.as_str())
    }

    /// `data.task_id`.
    pub fn task_id(&self) -> Option<&str> {
        self.task_id.as_ref().map(|id| id.text.as_str())
    }

    /// `data.task_name`.
    pub fn task_name(&self) -> Option<&str> {
        self.task_name.as_ref().map(|id| id.text.as_str())
    }

    /// The draft, unless absent or JSON `null`.
    pub fn draft(&self) -> Option<&Draft> {
        self.state
            .as_ref()
            .and_then(|s| s.draft.as_ref())
            .filter(|d| !d.is_null())
    }

    /// `data.state.video_infos` (the uploaded media), exactly as sent.
    pub fn video_infos_list(&self) -> Option<&MediaList> {
        self.state.as_ref().and_then(|s| s.video_infos.as_ref())
    }

    /// The items of `video_infos`; empty when absent or not an array.
    pub fn video_infos(&self) -> &[MediaInfo] {
        self.video_infos_list().map_or(&[], MediaList::items)
    }

    /// `data.state.generated_media`, exactly as sent.
    pub fn generated_media_list(&self) -> Option<&MediaList> {
        self.state.as_ref().and_then(|s| s.generated_media.as_ref())
    }

    /// The items of `generated_media`; empty when absent or not an array.
    pub fn generated_media(&self) -> &[MediaInfo] {
        self.generated_media_list().map_or(&[], MediaList::items)
    }

    /// `data.state.canvas_config` as raw JSON, unless absent or `null`.
    pub fn canvas_config(&self) -> Option<&RawValue> {
        self.state
            .as_ref()
            .and_then(|s| s.canvas_config.as_deref())
            .filter(|raw| raw.get() != "null")
    }

    /// `data.state.video_analyses` as raw JSON, unless absent or `null`.
    pub fn video_analyses(&self) -> Option<&RawValue> {
        self.state
            .as_ref()
            .and_then(|s| s.video_analyses.as_deref())
            .filter(|raw| raw.get() != "null")
    }

    /// Other keys of `data` (and known keys of the wrong type), in arrival order.
    pub fn extra(&self) -> impl Iterator<Item = (&str, &RawValue)> {
        self.extra.iter().map(|(k, v)| (k.as_str(), &**v))
    }

    /// Other keys of `data.state`, in arrival order.
    pub fn state_extra(&self) -> impl Iterator<Item = (&str, &RawValue)> {
        self.state
            .iter()
            .flat_map(|s| s.extra.iter())
            .map(|(k, v)| (k.as_str(), &**v))
    }

    /// Ready to export: there is a draft and some track has a segment.
    pub fn is_ready_for_export(&self) -> bool {
        self.draft().is_some_and(Draft::is_ready_for_export)
    }

    /// The timeline summary of the draft ([`Draft::summary`]), or
    /// `Timeline is empty: no tracks yet.` without one.
    pub fn summary(&self) -> String {
        self.draft()
            .map_or_else(|| EMPTY_TIMELINE.to_owned(), Draft::summary)
    }

    /// What changed from `self` to `newer` (rules in the [module docs](self)).
    pub fn diff(&self, newer: &SessionState) -> StateDiff {
        let mut diff = StateDiff::between_drafts(self.draft(), newer.draft());
        let lists = [
            (
                MediaKind::Uploaded,
                self.video_infos().len(),
                newer.video_infos().len(),
            ),
            (
                MediaKind::Generated,
                self.generated_media().len(),
                newer.generated_media().len(),
            ),
        ];
        for (list, before, after) in lists {
            if after > before {
                diff.changes.push(Change::MediaAdded {
                    list,
                    count: after - before,
                });
            } else if before > after {
                diff.changes.push(Change::MediaRemoved {
                    list,
                    count: before - after,
                });
            }
        }
        diff
    }
}

// ---------------------------------------------------------------------------------------
// Media
// ---------------------------------------------------------------------------------------

/// A media list (`video_infos`, `generated_media`): the exact JSON plus its items.
#[derive(Debug, Clone)]
pub struct MediaList {
    raw: Box<RawValue>,
    items: Vec<MediaInfo>,
}

impl MediaList {
    /// Builds the list view from raw JSON; a non-array keeps its raw JSON and has no items.
    pub fn from_raw(raw: Box<RawValue>) -> MediaList {
        let items = if raw.get().starts_with('[') {
            serde_json::from_str::<Vec<&RawValue>>(raw.get())
                .map(|elements| {
                    elements
                        .into_iter()
                        .map(|element| MediaInfo::from_raw(element.to_owned()))
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        MediaList { raw, items }
    }

    /// The JSON exactly as sent.
    pub fn as_raw(&self) -> &RawValue {
        &self.raw
    }

    /// Whether the JSON is an array.
    pub fn is_array(&self) -> bool {
        self.raw.get().starts_with('[')
    }

    /// The items (empty unless the JSON is an array).
    pub fn items(&self) -> &[MediaInfo] {
        &self.items
    }
}

impl Serialize for MediaList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

/// One uploaded or generated media item: the exact JSON plus the fields this crate knows
/// (every one optional; a field of the wrong type is `None`; unknown fields stay in
/// [`MediaInfo::as_raw`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MediaInfo {
    raw: Box<RawValue>,
    id: Option<String>,
    name: Option<String>,
    file_name: Option<String>,
    file_type: Option<String>,
    url: Option<String>,
    cdn_url: Option<String>,
    duration_s: Option<f64>,
    width: Option<f64>,
    height: Option<f64>,
    fps: Option<f64>,
    hash: Option<String>,
    size: Option<u64>,
}

impl MediaInfo {
    fn empty(raw: Box<RawValue>) -> MediaInfo {
        MediaInfo {
            raw,
            id: None,
            name: None,
            file_name: None,
            file_type: None,
            url: None,
            cdn_url: None,
            duration_s: None,
            width: None,
            height: None,
            fps: None,
            hash: None,
            size: None,
        }
    }

    /// Builds the view of one item; a JSON string is taken as the item's URL.
    pub fn from_raw(raw: Box<RawValue>) -> MediaInfo {
        let text = raw.get();
        if text.starts_with('"') {
            let url = serde_json::from_str::<String>(text).ok();
            let mut info = MediaInfo::empty(raw);
            info.url = url;
            return info;
        }
        let wire = serde_json::from_str::<Tolerant<MediaWire>>(text)
            .ok()
            .and_then(|t| t.0)
            .unwrap_or_default();
        let mut info = MediaInfo::empty(raw);
        let text = |t: Option<Text>| t.map(|t| t.0.to_string());
        let number = |n: Option<Number>| n.map(|n| n.0);
        info.id = wire.id;
        info.name = text(wire.name);
        info.file_name = text(wire.file_name).or(text(wire.filename));
        info.file_type = text(wire.file_type);
        info.url = text(wire.url);
        info.cdn_url = text(wire.cdn_url);
        info.duration_s = number(wire.duration).filter(|d| *d >= 0.0);
        info.width = number(wire.width).filter(|w| *w >= 0.0);
        info.height = number(wire.height).filter(|h| *h >= 0.0);
        info.fps = number(wire.fps).filter(|f| *f >= 0.0);
        info.hash = text(wire.hash);
        info.size = number(wire.size)
            .filter(|s| *s >= 0.0 && s.fract() == 0.0 && *s < 2f64.powi(53))
            .map(|s| s as u64);
        info
    }

    /// The item's JSON exactly as sent.
    pub fn as_raw(&self) -> &RawValue {
        &self.raw
    }

    /// `id` (a number as its decimal text).
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// `name`.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// `filename`, else `file_name`.
    pub fn file_name(&self) -> Option<&str> {
        self.file_name.as_deref()
    }

    /// `file_type`.
    pub fn file_type(&self) -> Option<&str> {
        self.file_type.as_deref()
    }

    /// `cdn_url`, else `url` (or the item itself when it is a string).
    pub fn url(&self) -> Option<&str> {
        self.cdn_url.as_deref().or(self.url.as_deref())
    }

    /// `duration` in seconds.
    pub fn duration_secs(&self) -> Option<f64> {
        self.duration_s
    }

    /// `width` in pixels.
    pub fn width(&self) -> Option<f64> {
        self.width
    }

    /// `height` in pixels.
    pub fn height(&self) -> Option<f64> {
        self.height
    }

    /// `fps`.
    pub fn fps(&self) -> Option<f64> {
        self.fps
    }

    /// `hash`.
    pub fn hash(&self) -> Option<&str> {
        self.hash.as_deref()
    }

    /// `size` in bytes, when the service reports it (a whole number).
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// A name to show: `name`, else the file name, else the URL's last path component.
    pub fn display_name(&self) -> Option<&str> {
        self.name
            .as_deref()
            .or(self.file_name.as_deref())
            .or_else(|| {
                self.url()
                    .and_then(|url| url.split(['?', '#']).next())
                    .and_then(|path| path.rsplit('/').find(|part| !part.is_empty()))
            })
    }
}

impl Serialize for MediaInfo {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

#[derive(Default)]
struct MediaWire {
    id: Option<String>,
    name: Option<Text>,
    file_name: Option<Text>,
    filename: Option<Text>,
    file_type: Option<Text>,
    url: Option<Text>,
    cdn_url: Option<Text>,
    duration: Option<Number>,
    width: Option<Number>,
    height: Option<Number>,
    fps: Option<Number>,
    hash: Option<Text>,
    size: Option<Number>,
}

enum MediaKey {
    Id,
    Name,
    FileName,
    Filename,
    FileType,
    Url,
    CdnUrl,
    Duration,
    Width,
    Height,
    Fps,
    Hash,
    Size,
    Other,
}

impl FieldKey for MediaKey {
    fn from_key(key: &str) -> Self {
        match key {
            "id" => MediaKey::Id,
            "name" => MediaKey::Name,
            "file_name" => MediaKey::FileName,
            "filename" => MediaKey::Filename,
            "file_type" => MediaKey::FileType,
            "url" => MediaKey::Url,
            "cdn_url" => MediaKey::CdnUrl,
            "duration" => MediaKey::Duration,
            "width" => MediaKey::Width,
            "height" => MediaKey::Height,
            "fps" => MediaKey::Fps,
            "hash" => MediaKey::Hash,
            "size" => MediaKey::Size,
            _ => MediaKey::Other,
        }
    }
}

/// An id given as a string or a number.
struct MediaId(String);

impl Lenient for MediaId {
    fn from_str(value: &str) -> Option<Self> {
        Some(MediaId(value.to_owned()))
    }
    fn from_i64(value: i64) -> Option<Self> {
        Some(MediaId(value.to_string()))
    }
    fn from_u64(value: u64) -> Option<Self> {
        Some(MediaId(value.to_string()))
    }
}

impl Lenient for MediaWire {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut wire = MediaWire::default();
        while let Some(Key(key)) = map.next_key::<Key<MediaKey>>()? {
            match key {
                MediaKey::Id => wire.id = map.next_value::<Tolerant<MediaId>>()?.0.map(|i| i.0),
                MediaKey::Name => wire.name = map.next_value::<Tolerant<Text>>()?.0,
                MediaKey::FileName => wire.file_name = map.next_value::<Tolerant<Text>>()?.0,
                MediaKey::Filename => wire.filename = map.next_value::<Tolerant<Text>>()?.0,
                MediaKey::FileType => wire.file_type = map.next_value::<Tolerant<Text>>()?.0,
                MediaKey::Url => wire.url = map.next_value::<Tolerant<Text>>()?.0,
                MediaKey::CdnUrl => wire.cdn_url = map.next_value::<Tolerant<Text>>()?.0,
                MediaKey::Duration => wire.duration = map.next_value::<Tolerant<Number>>()?.0,
                MediaKey::Width => wire.width = map.next_value::<Tolerant<Number>>()?.0,
                MediaKey::Height => wire.height = map.next_value::<Tolerant<Number>>()?.0,
                MediaKey::Fps => wire.fps = map.next_value::<Tolerant<Number>>()?.0,
                MediaKey::Hash => wire.hash = map.next_value::<Tolerant<Text>>()?.0,
                MediaKey::Size => wire.size = map.next_value::<Tolerant<Number>>()?.0,
                MediaKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(wire))
    }
}

// ---------------------------------------------------------------------------------------
// Decoding `data` and `data.state` in one pass (no `#[serde(flatten)]`: it buffers).
// ---------------------------------------------------------------------------------------

enum DataKey {
    SessionId,
    TaskId,
    TaskName,
    State,
    Other(String),
}

impl FieldKey for DataKey {
    fn from_key(key: &str) -> Self {
        match key {
            "session_id" => DataKey::SessionId,
            "task_id" => DataKey::TaskId,
            "task_name" => DataKey::TaskName,
            "state" => DataKey::State,
            other => DataKey::Other(other.to_owned()),
        }
    }
}

enum StateKey {
    Draft,
    VideoInfos,
    GeneratedMedia,
    CanvasConfig,
    VideoAnalyses,
    Other(String),
}

impl FieldKey for StateKey {
    fn from_key(key: &str) -> Self {
        match key {
            "draft" => StateKey::Draft,
            "video_infos" => StateKey::VideoInfos,
            "generated_media" => StateKey::GeneratedMedia,
            "canvas_config" => StateKey::CanvasConfig,
            "video_analyses" => StateKey::VideoAnalyses,
            other => StateKey::Other(other.to_owned()),
        }
    }
}

fn push_slot<T: PartialEq>(order: &mut Vec<T>, slot: T) {
    if !order.contains(&slot) {
        order.push(slot);
    }
}

fn to_raw(value: &serde_json::Value) -> Box<RawValue> {
    // Serializing a `Value` cannot fail (its keys are strings); `null` is a safe fallback.
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// `data.state`: an object is decoded, anything else kept as raw JSON.
enum StateValue {
    Object(Box<StateParts>),
    Other(Box<RawValue>),
}

impl<'de> Deserialize<'de> for StateValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StateVisitor)
    }
}

struct StateVisitor;

impl StateVisitor {
    fn other<E>(value: serde_json::Value) -> Result<StateValue, E> {
        Ok(StateValue::Other(to_raw(&value)))
    }
}

impl<'de> Visitor<'de> for StateVisitor {
    type Value = StateValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<StateValue, E> {
        Self::other(v.into())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<StateValue, E> {
        Self::other(v.into())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<StateValue, E> {
        Self::other(v.into())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<StateValue, E> {
        Self::other(v.into())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<StateValue, E> {
        Self::other(v.into())
    }
    fn visit_unit<E: de::Error>(self) -> Result<StateValue, E> {
        Self::other(serde_json::Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<StateValue, E> {
        Self::other(serde_json::Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<StateValue, A::Error> {
        let value = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Self::other(value)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StateValue, A::Error> {
        let mut parts = StateParts::default();
        while let Some(Key(key)) = map.next_key::<Key<StateKey>>()? {
            let slot = match key {
                StateKey::Draft => {
                    parts.draft = Some(map.next_value()?);
                    StateSlot::Draft
                }
                StateKey::VideoInfos => {
                    parts.video_infos = Some(MediaList::from_raw(map.next_value()?));
                    StateSlot::VideoInfos
                }
                StateKey::GeneratedMedia => {
                    parts.generated_media = Some(MediaList::from_raw(map.next_value()?));
                    StateSlot::GeneratedMedia
                }
                StateKey::CanvasConfig => {
                    parts.canvas_config = Some(map.next_value()?);
                    StateSlot::CanvasConfig
                }
                StateKey::VideoAnalyses => {
                    parts.video_analyses = Some(map.next_value()?);
                    StateSlot::VideoAnalyses
                }
                StateKey::Other(name) => {
                    parts.extra.push((name, map.next_value()?));
                    StateSlot::Extra(parts.extra.len() - 1)
                }
            };
            push_slot(&mut parts.order, slot);
        }
        Ok(StateValue::Object(Box::new(parts)))
    }
}

/// An id: a JSON string, or a number's exact digits. Anything else is `Err(raw)`.
fn decode_id(raw: Box<RawValue>) -> Result<IdField, Box<RawValue>> {
    let text = raw.get();
    if text.starts_with('"') {
        match serde_json::from_str::<String>(text) {
            Ok(text) => Ok(IdField { text, raw }),
            Err(_) => Err(raw),
        }
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Ok(IdField {
            text: text.to_owned(),
            raw,
        })
    } else {
        Err(raw)
    }
}

struct DataVisitor;

impl<'de> Visitor<'de> for DataVisitor {
    type Value = SessionState;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the session state's data object")
    }
    fn visit_bool<E: de::Error>(self, _v: bool) -> Result<SessionState, E> {
        Ok(SessionState::default())
    }
    fn visit_i64<E: de::Error>(self, _v: i64) -> Result<SessionState, E> {
        Ok(SessionState::default())
    }
    fn visit_u64<E: de::Error>(self, _v: u64) -> Result<SessionState, E> {
        Ok(SessionState::default())
    }
    fn visit_f64<E: de::Error>(self, _v: f64) -> Result<SessionState, E> {
        Ok(SessionState::default())
    }
    fn visit_str<E: de::Error>(self, _v: &str) -> Result<SessionState, E> {
        Ok(SessionState::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<SessionState, E> {
        Ok(SessionState::default())
    }
    fn visit_none<E: de::Error>(self) -> Result<SessionState, E> {
        Ok(SessionState::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SessionState, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(SessionState::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SessionState, A::Error> {
        let mut state = SessionState::default();
        while let Some(Key(key)) = map.next_key::<Key<DataKey>>()? {
            let (id_slot, name) = match key {
                DataKey::SessionId => (DataSlot::SessionId, "session_id"),
                DataKey::TaskId => (DataSlot::TaskId, "task_id"),
                DataKey::TaskName => (DataSlot::TaskName, "task_name"),
                DataKey::State => {
                    match map.next_value::<StateValue>()? {
                        StateValue::Object(parts) => {
                            state.state = Some(*parts);
                            push_slot(&mut state.order, DataSlot::State);
                        }
                        StateValue::Other(raw) => {
                            state.extra.push(("state".to_owned(), raw));
                            state.order.push(DataSlot::Extra(state.extra.len() - 1));
                        }
                    }
                    continue;
                }
                DataKey::Other(name) => {
                    state.extra.push((name, map.next_value()?));
                    state.order.push(DataSlot::Extra(state.extra.len() - 1));
                    continue;
                }
            };
            match decode_id(map.next_value()?) {
                Ok(id) => {
                    match id_slot {
                        DataSlot::SessionId => state.session_id = Some(id),
                        DataSlot::TaskId => state.task_id = Some(id),
                        _ => state.task_name = Some(id),
                    }
                    push_slot(&mut state.order, id_slot);
                }
                Err(raw) => {
                    state.extra.push((name.to_owned(), raw));
                    state.order.push(DataSlot::Extra(state.extra.len() - 1));
                }
            }
        }
        Ok(state)
    }
}

/// Works with `serde_json` deserializers only (raw JSON is captured as [`RawValue`]).
impl<'de> Deserialize<'de> for SessionState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DataVisitor)
    }
}

/// Writes `data` back with keys in arrival order and raw values as received.
impl Serialize for SessionState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.order.len()))?;
        for slot in &self.order {
            match *slot {
                DataSlot::SessionId => write_id(&mut map, "session_id", &self.session_id)?,
                DataSlot::TaskId => write_id(&mut map, "task_id", &self.task_id)?,
                DataSlot::TaskName => write_id(&mut map, "task_name", &self.task_name)?,
                DataSlot::State => {
                    if let Some(parts) = &self.state {
                        map.serialize_entry("state", parts)?;
                    }
                }
                DataSlot::Extra(i) => {
                    if let Some((key, value)) = self.extra.get(i) {
                        map.serialize_entry(key, value)?;
                    }
                }
            }
        }
        map.end()
    }
}

fn write_id<M: SerializeMap>(map: &mut M, key: &str, id: &Option<IdField>) -> Result<(), M::Error> {
    match id {
        Some(id) => map.serialize_entry(key, &id.raw),
        None => Ok(()),
    }
}

impl Serialize for StateParts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.order.len()))?;
        for slot in &self.order {
            match *slot {
                StateSlot::Draft => {
                    if let Some(draft) = &self.draft {
                        map.serialize_entry("draft", draft)?;
                    }
                }
                StateSlot::VideoInfos => {
                    if let Some(list) = &self.video_infos {
                        map.serialize_entry("video_infos", list)?;
                    }
                }
                StateSlot::GeneratedMedia => {
                    if let Some(list) = &self.generated_media {
                        map.serialize_entry("generated_media", list)?;
                    }
                }
                StateSlot::CanvasConfig => {
                    if let Some(raw) = &self.canvas_config {
                        map.serialize_entry("canvas_config", raw)?;
                    }
                }
                StateSlot::VideoAnalyses => {
                    if let Some(raw) = &self.video_analyses {
                        map.serialize_entry("video_analyses", raw)?;
                    }
                }
                StateSlot::Extra(i) => {
                    if let Some((key, value)) = self.extra.get(i) {
                        map.serialize_entry(key, value)?;
                    }
                }
            }
        }
        map.end()
    }
}

// ---------------------------------------------------------------------------------------
// Diff
// ---------------------------------------------------------------------------------------

/// Which media list a media change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MediaKind {
    /// `video_infos`: media the user uploaded.
    Uploaded,
    /// `generated_media`: media the agent made.
    Generated,
}

impl MediaKind {
    fn word(self) -> &'static str {
        match self {
            MediaKind::Uploaded => "uploaded",
            MediaKind::Generated => "generated",
        }
    }
}

/// One change between two session states. Track indexes are 0-based positions in the
/// newer draft, except for [`Change::TrackRemoved`] (its position in the older one).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Change {
    /// A track appeared.
    TrackAdded {
        /// Position in the newer draft.
        index: usize,
        /// The new track.
        track: Track,
    },
    /// A track went away.
    TrackRemoved {
        /// Position in the older draft.
        index: usize,
        /// The removed track.
        track: Track,
    },
    /// A track's own name, volume or `d` changed.
    TrackChanged {
        /// Position in the newer draft.
        index: usize,
        /// The track before.
        before: Track,
        /// The track after.
        after: Track,
    },
    /// A segment appeared on a track.
    SegmentAdded {
        /// Track position in the newer draft.
        track_index: usize,
        /// The track's kind.
        track_kind: Option<TrackKind>,
        /// The new segment.
        segment: Segment,
    },
    /// A segment went away from a track.
    SegmentRemoved {
        /// Track position in the newer draft.
        track_index: usize,
        /// The track's kind.
        track_kind: Option<TrackKind>,
        /// The removed segment.
        segment: Segment,
    },
    /// A segment's name, placement or volume changed.
    SegmentChanged {
        /// Track position in the newer draft.
        track_index: usize,
        /// The track's kind.
        track_kind: Option<TrackKind>,
        /// The segment before.
        before: Segment,
        /// The segment after.
        after: Segment,
    },
    /// The timeline's duration changed.
    DurationChanged {
        /// Milliseconds before, when known.
        before_ms: Option<f64>,
        /// Milliseconds after, when known.
        after_ms: Option<f64>,
    },
    /// A media list grew.
    MediaAdded {
        /// Which list.
        list: MediaKind,
        /// How many more items.
        count: usize,
    },
    /// A media list shrank.
    MediaRemoved {
        /// Which list.
        list: MediaKind,
        /// How many fewer items.
        count: usize,
    },
    /// The draft's JSON changed in ways none of the other changes show.
    DraftDetailsChanged,
}

/// The changes between two session states; `Display` writes them as one sentence.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct StateDiff {
    changes: Vec<Change>,
}

impl StateDiff {
    /// The changes between two drafts (no media changes; `None` is an absent draft).
    pub fn between_drafts(older: Option<&Draft>, newer: Option<&Draft>) -> StateDiff {
        let no_tracks: &[Track] = &[];
        let old_tracks = older.map_or(no_tracks, Draft::tracks);
        let new_tracks = newer.map_or(no_tracks, Draft::tracks);
        // Each segment is read once, here; the rest works on these views.
        let old_views: Vec<TrackView<'_>> = old_tracks.iter().map(TrackView::new).collect();
        let new_views: Vec<TrackView<'_>> = new_tracks.iter().map(TrackView::new).collect();
        let old_keys: Vec<String> = old_views.iter().map(TrackView::key).collect();
        let new_keys: Vec<String> = new_views.iter().map(TrackView::key).collect();
        let pairs = align(
            &old_keys,
            &new_keys,
            |i| old_tracks[i].kind(),
            |j| new_tracks[j].kind(),
        );
        // First where the changes are, then the changes (which copy tracks and segments),
        // all in one allocation.
        let mut found = Vec::new();
        for pair in pairs {
            match pair {
                Pair::Old(i) => found.push(Found::TrackRemoved(i)),
                Pair::New(j) => found.push(Found::TrackAdded(j)),
                Pair::Both(i, j) => diff_track(&old_views[i], &new_views[j], (i, j), &mut found),
            }
        }
        let mut changes = Vec::with_capacity(found.len() + 1);
        changes.extend(
            found
                .into_iter()
                .map(|found| found.change(old_tracks, new_tracks)),
        );
        let before_ms = older.and_then(|draft| draft_duration_ms(draft, &old_views));
        let after_ms = newer.and_then(|draft| draft_duration_ms(draft, &new_views));
        if before_ms.map(f64::round) != after_ms.map(f64::round) {
            changes.push(Change::DurationChanged {
                before_ms,
                after_ms,
            });
        }
        let old_json = older.map(Draft::as_json_str);
        let new_json = newer.map(Draft::as_json_str);
        if changes.is_empty() && old_json != new_json {
            changes.push(Change::DraftDetailsChanged);
        }
        StateDiff { changes }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The changes, in timeline order, then duration, then media.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// The changes, by value.
    pub fn into_changes(self) -> Vec<Change> {
        self.changes
    }
}

/// What the diff reads of a track: each segment's key and what shows of it, read once.
struct TrackView<'a> {
    track: &'a Track,
    keys: Vec<SegmentKey<'a>>,
    visible: Vec<Visible<'a>>,
    /// The end of [`Track::time_range_ms`].
    end_ms: Option<f64>,
}

/// [`Draft::duration_ms`], from the views instead of another pass over every segment.
fn draft_duration_ms(draft: &Draft, views: &[TrackView<'_>]) -> Option<f64> {
    let duration = draft
        .declared_duration_ms()
        .or_else(|| views.iter().filter_map(|view| view.end_ms).reduce(f64::max));
    debug_assert_eq!(duration, draft.duration_ms());
    duration
}

impl<'a> TrackView<'a> {
    fn new(track: &'a Track) -> Self {
        let text = track.kind() == Some(TrackKind::Text);
        let mut keys = Vec::with_capacity(track.segments().len());
        let mut visible = Vec::with_capacity(track.segments().len());
        let mut end_ms: Option<f64> = None;
        for segment in track.segments() {
            let metadata = segment.metadata();
            let placed = segment.time_range_ms();
            if let Some((_, end)) = placed {
                end_ms = Some(end_ms.map_or(end, |latest| latest.max(end)));
            }
            let range = whole_ms(placed);
            let shown = metadata.display_name(text);
            keys.push(match segment.id() {
                Some(id) => SegmentKey::Id(id),
                None if text => SegmentKey::Placed(metadata.display_name(false), range),
                None => SegmentKey::Placed(shown, range),
            });
            visible.push((shown, range, metadata.volume_percent()));
        }
        TrackView {
            track,
            keys,
            visible,
            end_ms: end_ms.or_else(|| track.duration_ms()),
        }
    }

    /// What identifies the track across two reads: its `id`, else its kind and names.
    fn key(&self) -> String {
        let track = self.track;
        match track.id() {
            Some(id) => format!("id:{id}"),
            None => format!(
                "{:?}|{}|{:?}",
                track.kind(),
                track.display_name_from(self.visible.iter().map(|visible| visible.0)),
                track.metadata().display_name(false)
            ),
        }
    }
}

/// Where a change is: track positions in the older and newer draft, segment positions in
/// those tracks.
#[derive(Debug, Clone, Copy)]
enum Found {
    TrackRemoved(usize),
    TrackAdded(usize),
    TrackChanged(usize, usize),
    SegmentRemoved((usize, usize), usize),
    SegmentAdded((usize, usize), usize),
    SegmentChanged((usize, usize), usize, usize),
}

impl Found {
    fn change(self, old: &[Track], new: &[Track]) -> Change {
        let segment_change = |(i, j): (usize, usize)| (j, new[j].kind(), &old[i], &new[j]);
        match self {
            Found::TrackRemoved(i) => Change::TrackRemoved {
                index: i,
                track: old[i].clone(),
            },
            Found::TrackAdded(j) => Change::TrackAdded {
                index: j,
                track: new[j].clone(),
            },
            Found::TrackChanged(i, j) => Change::TrackChanged {
                index: j,
                before: old[i].clone(),
                after: new[j].clone(),
            },
            Found::SegmentRemoved(tracks, si) => {
                let (track_index, track_kind, old_track, _) = segment_change(tracks);
                Change::SegmentRemoved {
                    track_index,
                    track_kind,
                    segment: old_track.segments()[si].clone(),
                }
            }
            Found::SegmentAdded(tracks, sj) => {
                let (track_index, track_kind, _, new_track) = segment_change(tracks);
                Change::SegmentAdded {
                    track_index,
                    track_kind,
                    segment: new_track.segments()[sj].clone(),
                }
            }
            Found::SegmentChanged(tracks, si, sj) => {
                let (track_index, track_kind, old_track, new_track) = segment_change(tracks);
                Change::SegmentChanged {
                    track_index,
                    track_kind,
                    before: old_track.segments()[si].clone(),
                    after: new_track.segments()[sj].clone(),
                }
            }
        }
    }
}

/// A track's own name, as the diff compares it.
fn own_name(track: &Track) -> Option<&str> {
    track
        .metadata()
        .display_name(track.kind() == Some(TrackKind::Text))
}

/// The changes within a matched pair of tracks (`tracks`: their positions).
fn diff_track(
    old: &TrackView<'_>,
    new: &TrackView<'_>,
    tracks: (usize, usize),
    found: &mut Vec<Found>,
) {
    let (old_track, new_track) = (old.track, new.track);
    if own_name(old_track) != own_name(new_track)
        || old_track.metadata().volume_percent() != new_track.metadata().volume_percent()
        || old_track.duration_ms().map(f64::round) != new_track.duration_ms().map(f64::round)
    {
        found.push(Found::TrackChanged(tracks.0, tracks.1));
    }
    let kind = new_track.kind();
    let old_segments = old_track.segments();
    for pair in align(&old.keys, &new.keys, |_| (), |_| ()) {
        found.push(match pair {
            Pair::Old(i) => Found::SegmentRemoved(tracks, i),
            Pair::New(j) => Found::SegmentAdded(tracks, j),
            Pair::Both(i, j) => {
                // What shows of a segment depends on its track's kind: read it again when
                // the kinds differ (a track matched by id whose type changed).
                let unchanged = if old_track.kind() == kind {
                    old.visible[i] == new.visible[j]
                } else {
                    segment_visible(&old_segments[i], kind) == new.visible[j]
                };
                if unchanged {
                    continue;
                }
                Found::SegmentChanged(tracks, i, j)
            }
        });
    }
}

type Visible<'a> = (Option<&'a str>, Option<(i64, i64)>, Option<u32>);

fn segment_visible(segment: &Segment, kind: Option<TrackKind>) -> Visible<'_> {
    (
        segment
            .metadata()
            .display_name(kind == Some(TrackKind::Text)),
        whole_ms(segment.time_range_ms()),
        segment.metadata().volume_percent(),
    )
}

fn whole_ms(range: Option<(f64, f64)>) -> Option<(i64, i64)> {
    // Saturating float-to-int casts: fine for comparing.
    range.map(|(start, end)| (start.round() as i64, end.round() as i64))
}

/// What identifies a segment across two reads: its `id`, else its name (not preferring
/// `text`) and placement (to the millisecond).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegmentKey<'a> {
    Id(&'a str),
    Placed(Option<&'a str>, Option<(i64, i64)>),
}

/// Written in few pieces: hashing is much of what a big diff costs.
impl Hash for SegmentKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match *self {
            SegmentKey::Id(id) => {
                state.write_u8(0);
                state.write(id.as_bytes());
            }
            SegmentKey::Placed(name, range) => {
                let (start, end) = range.unwrap_or_default();
                let tag = 1 + u8::from(range.is_some()) + 2 * u8::from(name.is_some());
                state.write_u128((u128::from(start as u64) << 64) | u128::from(end as u64));
                state.write_u8(tag);
                if let Some(name) = name {
                    state.write(name.as_bytes());
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pair {
    Old(usize),
    New(usize),
    Both(usize, usize),
}

/// Up to this many cells (old × new items, after the common prefix and suffix) the middle
/// is aligned with an LCS table: 4 MiB and a few milliseconds at most.
const LCS_TABLE_LIMIT: usize = 1 << 20;

/// Aligns two sequences: items with equal keys are matched first, keeping the most matches
/// in order (a common prefix and suffix, then the longest common subsequence of the middle:
/// `similar`'s LCS table up to [`LCS_TABLE_LIMIT`] cells, its Myers' algorithm above); the
/// items left between two matches are then paired in order when they are of the same
/// `class`. The result is in order of both sequences.
///
/// Cost: O(n) to key, trim and intern the items; then at most O(LCS_TABLE_LIMIT) for a
/// small middle, or Myers' O((n + m) · d) for d differences, which `similar` bounds on large
/// inputs by settling for a good split after a search of about √(n + m) steps
/// (deterministic: no clock involved); then O(n) to pair the leftovers.
fn align<K, C>(
    old_keys: &[K],
    new_keys: &[K],
    old_class: impl Fn(usize) -> C,
    new_class: impl Fn(usize) -> C,
) -> Vec<Pair>
where
    K: Hash + Eq,
    C: Hash + Eq,
{
    let (old_len, new_len) = (old_keys.len(), new_keys.len());
    let classes = (&old_class, &new_class);
    let prefix = old_keys
        .iter()
        .zip(new_keys)
        .take_while(|(a, b)| a == b)
        .count();
    let suffix = old_keys[prefix..]
        .iter()
        .rev()
        .zip(new_keys[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let (old_end, new_end) = (old_len - suffix, new_len - suffix);

    let mut pairs = Vec::with_capacity(old_len.max(new_len));
    pairs.extend((0..prefix).map(|i| Pair::Both(i, i)));
    // Where the leftovers after the last match start.
    let (mut old_from, mut new_from) = (prefix, prefix);
    if prefix < old_end && prefix < new_end {
        let (old_ids, new_ids) = intern(&old_keys[prefix..old_end], &new_keys[prefix..new_end]);
        // The classic LCS table where it is cheap: it chooses among equally long alignments
        // as this crate always has. Myers' algorithm, with its bounded search, above, on the
        // items whose key is on both sides only: the others can never match, and a timeline
        // rewritten throughout (every key new) then costs no search at all.
        let cells = old_ids.len().saturating_mul(new_ids.len());
        let (old_at, new_at, old_ids, new_ids) = if cells <= LCS_TABLE_LIMIT {
            (None, None, old_ids, new_ids)
        } else {
            let (old_at, old_common, new_at, new_common) = common_only(&old_ids, &new_ids);
            (Some(old_at), Some(new_at), old_common, new_common)
        };
        let algorithm = if old_at.is_none() {
            Algorithm::Lcs
        } else {
            Algorithm::Myers
        };
        let ops = if old_ids.is_empty() || new_ids.is_empty() {
            Vec::new()
        } else {
            similar::capture_diff_slices(algorithm, &old_ids, &new_ids)
        };
        let position = |at: &Option<Vec<usize>>, k: usize| at.as_ref().map_or(k, |at| at[k]);
        for op in ops {
            if let DiffOp::Equal {
                old_index,
                new_index,
                len,
            } = op
            {
                for k in 0..len {
                    let i = prefix + position(&old_at, old_index + k);
                    let j = prefix + position(&new_at, new_index + k);
                    pair_leftovers(classes, old_from..i, new_from..j, &mut pairs);
                    pairs.push(Pair::Both(i, j));
                    (old_from, new_from) = (i + 1, j + 1);
                }
            }
        }
    }
    pair_leftovers(classes, old_from..old_end, new_from..new_end, &mut pairs);
    pairs.extend((0..suffix).map(|k| Pair::Both(old_end + k, new_end + k)));
    pairs
}

/// The ids that occur on both sides, each side's in order, with their positions:
/// `(old positions, old ids, new positions, new ids)`.
fn common_only(old: &[u32], new: &[u32]) -> (Vec<usize>, Vec<u32>, Vec<usize>, Vec<u32>) {
    let distinct = old
        .iter()
        .chain(new)
        .max()
        .map_or(0, |max| *max as usize + 1);
    // Ids are dense (0..distinct), so a table says where each occurs.
    let mut sides = vec![0u8; distinct];
    for id in old {
        sides[*id as usize] |= 1;
    }
    for id in new {
        sides[*id as usize] |= 2;
    }
    let keep = |ids: &[u32]| -> (Vec<usize>, Vec<u32>) {
        ids.iter()
            .enumerate()
            .filter(|(_, id)| sides[**id as usize] == 3)
            .map(|(at, id)| (at, *id))
            .unzip()
    };
    let (old_at, old_common) = keep(old);
    let (new_at, new_common) = keep(new);
    (old_at, old_common, new_at, new_common)
}

/// Replaces keys by small integers, equal exactly when the keys are equal, so that the
/// diff compares and hashes integers.
fn intern<K: Hash + Eq>(old: &[K], new: &[K]) -> (Vec<u32>, Vec<u32>) {
    let mut ids: HashMap<&K, u32> = HashMap::with_capacity(old.len() + new.len());
    let mut id = |key| {
        // Fewer than 2^32 distinct keys: each is a segment or track of a decoded document.
        let next = ids.len() as u32;
        *ids.entry(key).or_insert(next)
    };
    let old_ids = old.iter().map(&mut id).collect();
    let new_ids = new.iter().map(&mut id).collect();
    (old_ids, new_ids)
}

/// Pairs the unmatched items between two matches: each new item, in order, with the first
/// remaining old item of its class, the old items skipped on the way being removed; a new
/// item with no such old item is added, and old items left at the end are removed.
fn pair_leftovers<C: Hash + Eq>(
    (old_class, new_class): (&impl Fn(usize) -> C, &impl Fn(usize) -> C),
    olds: Range<usize>,
    news: Range<usize>,
    pairs: &mut Vec<Pair>,
) {
    if olds.is_empty() || news.is_empty() {
        pairs.extend(olds.map(Pair::Old));
        pairs.extend(news.map(Pair::New));
        return;
    }
    // The old items of each class in order, with a cursor that only moves forward: linear
    // in the number of leftovers, however the classes interleave.
    let mut by_class: HashMap<C, (Vec<usize>, usize)> = HashMap::new();
    for i in olds.clone() {
        by_class.entry(old_class(i)).or_default().0.push(i);
    }
    let mut first_left = olds.start;
    for j in news {
        let found = by_class.get_mut(&new_class(j)).and_then(|(positions, at)| {
            while positions.get(*at).is_some_and(|&i| i < first_left) {
                *at += 1;
            }
            positions.get(*at).copied()
        });
        match found {
            Some(i) => {
                pairs.extend((first_left..i).map(Pair::Old));
                pairs.push(Pair::Both(i, j));
                first_left = i + 1;
            }
            None => pairs.push(Pair::New(j)),
        }
    }
    pairs.extend((first_left..olds.end).map(Pair::Old));
}

// ---------------------------------------------------------------------------------------
// Words
// ---------------------------------------------------------------------------------------

fn range_text(range: Option<(f64, f64)>) -> Option<String> {
    range.map(|(start, end)| format!("{}-{}s", format_seconds(start), format_seconds(end)))
}

fn track_with_article(kind: Option<TrackKind>) -> String {
    match kind {
        Some(TrackKind::Video) => "a video track".to_owned(),
        Some(TrackKind::Audio) => "an audio track".to_owned(),
        Some(TrackKind::Text) => "a text track".to_owned(),
        Some(other) => format!("a track of type {}", other.code()),
        None => "a track".to_owned(),
    }
}

fn track_kind_word(kind: Option<TrackKind>) -> &'static str {
    match kind {
        Some(TrackKind::Video) => "video ",
        Some(TrackKind::Audio) => "audio ",
        Some(TrackKind::Text) => "text ",
        _ => "",
    }
}

/// `video track 1` (1-based).
fn track_ref(kind: Option<TrackKind>, index: usize) -> String {
    format!("{}track {}", track_kind_word(kind), index + 1)
}

fn described_track(track: &Track) -> String {
    let mut out = String::new();
    if let Some(names) = track.names(true) {
        out.push(' ');
        out.push_str(&names);
    }
    if let Some(range) = range_text(track.time_range_ms()) {
        out.push_str(&format!(" ({range})"));
    }
    out
}

fn segment_name(segment: &Segment, kind: Option<TrackKind>) -> Option<String> {
    segment
        .metadata()
        .display_name(kind == Some(TrackKind::Text))
        .map(|name| quote_name(name, true))
}

/// `clip "beach" (10-12s)`, `a clip (10-12s)`, `text "Hi" (0-3s)`.
fn described_segment(segment: &Segment, kind: Option<TrackKind>) -> String {
    let noun = if kind == Some(TrackKind::Text) {
        "text"
    } else {
        "clip"
    };
    let mut out = match segment_name(segment, kind) {
        Some(name) => format!("{noun} {name}"),
        None if kind == Some(TrackKind::Text) => "a text segment".to_owned(),
        None => "a clip".to_owned(),
    };
    if let Some(range) = range_text(segment.time_range_ms()) {
        out.push_str(&format!(" ({range})"));
    }
    out
}

fn percent(volume: Option<u32>) -> String {
    volume.map_or_else(|| "unset".to_owned(), |v| format!("{v}%"))
}

fn durations(before: Option<f64>, after: Option<f64>) -> String {
    match (before, after) {
        (Some(b), Some(a)) => {
            let (bs, as_) = (format_seconds(b), format_seconds(a));
            if bs == as_ {
                format!("duration {}ms → {}ms", b.round(), a.round())
            } else {
                format!("duration {bs}s → {as_}s")
            }
        }
        (None, Some(a)) => format!("duration now {}s", format_seconds(a)),
        (Some(_), None) => "duration no longer known".to_owned(),
        (None, None) => "duration unchanged".to_owned(),
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::TrackAdded { track, .. } => write!(
                f,
                "added {}{}",
                track_with_article(track.kind()),
                described_track(track)
            ),
            Change::TrackRemoved { track, .. } => {
                let kind = track.kind();
                let noun = track_with_article(kind);
                // "the video track", "the track of type 9"
                let the = noun.split_once(' ').map_or(noun.as_str(), |(_, rest)| rest);
                write!(f, "removed the {the}{}", described_track(track))
            }
            Change::TrackChanged {
                index,
                before,
                after,
            } => {
                let mut parts = Vec::new();
                let text = after.kind() == Some(TrackKind::Text);
                let (old_name, new_name) = (
                    before.metadata().display_name(text),
                    after.metadata().display_name(text),
                );
                if old_name != new_name {
                    parts.push(match (old_name, new_name) {
                        (Some(o), Some(n)) => {
                            format!("renamed {} → {}", quote_name(o, true), quote_name(n, true))
                        }
                        (None, Some(n)) => format!("named {}", quote_name(n, true)),
                        _ => "name removed".to_owned(),
                    });
                }
                let (old_volume, new_volume) = (
                    before.metadata().volume_percent(),
                    after.metadata().volume_percent(),
                );
                if old_volume != new_volume {
                    parts.push(format!(
                        "volume {} → {}",
                        percent(old_volume),
                        percent(new_volume)
                    ));
                }
                if before.duration_ms().map(f64::round) != after.duration_ms().map(f64::round) {
                    parts.push(
                        durations(before.duration_ms(), after.duration_ms())
                            .replacen("duration", "length", 1),
                    );
                }
                write!(
                    f,
                    "changed {}: {}",
                    track_ref(after.kind(), *index),
                    parts.join(", ")
                )
            }
            Change::SegmentAdded {
                track_index,
                track_kind,
                segment,
            } => write!(
                f,
                "added {} to {}",
                described_segment(segment, *track_kind),
                track_ref(*track_kind, *track_index)
            ),
            Change::SegmentRemoved {
                track_index,
                track_kind,
                segment,
            } => write!(
                f,
                "removed {} from {}",
                described_segment(segment, *track_kind),
                track_ref(*track_kind, *track_index)
            ),
            Change::SegmentChanged {
                track_index,
                track_kind,
                before,
                after,
            } => {
                let kind = *track_kind;
                let mut parts = Vec::new();
                let (old_name, new_name) = (segment_name(before, kind), segment_name(after, kind));
                if old_name != new_name {
                    let word = if kind == Some(TrackKind::Text) {
                        "text"
                    } else {
                        "renamed"
                    };
                    parts.push(format!(
                        "{word} {} → {}",
                        old_name.as_deref().unwrap_or("(none)"),
                        new_name.as_deref().unwrap_or("(none)")
                    ));
                }
                if whole_ms(before.time_range_ms()) != whole_ms(after.time_range_ms()) {
                    parts.push(format!(
                        "{} → {}",
                        range_text(before.time_range_ms()).unwrap_or_else(|| "unplaced".into()),
                        range_text(after.time_range_ms()).unwrap_or_else(|| "unplaced".into())
                    ));
                }
                let (old_volume, new_volume) = (
                    before.metadata().volume_percent(),
                    after.metadata().volume_percent(),
                );
                if old_volume != new_volume {
                    parts.push(format!(
                        "volume {} → {}",
                        percent(old_volume),
                        percent(new_volume)
                    ));
                }
                let noun = if kind == Some(TrackKind::Text) {
                    "text"
                } else {
                    "clip"
                };
                let name = old_name.map(|n| format!(" {n}")).unwrap_or_default();
                write!(
                    f,
                    "changed {noun}{name} on {}: {}",
                    track_ref(kind, *track_index),
                    parts.join(", ")
                )
            }
            Change::DurationChanged {
                before_ms,
                after_ms,
            } => f.write_str(&durations(*before_ms, *after_ms)),
            Change::MediaAdded { list, count } => write!(f, "{count} new {} media", list.word()),
            Change::MediaRemoved { list, count } => {
                write!(f, "{count} {} media removed", list.word())
            }
            Change::DraftDetailsChanged => {
                f.write_str("the draft changed in details the timeline summary does not show")
            }
        }
    }
}

/// Timeline changes listed by [`StateDiff`]'s `Display` before it counts the rest; the
/// alternate form (`{:#}`) lists them all.
pub const LISTED_TIMELINE_CHANGES: usize = 20;

impl Change {
    /// A change to a track or one of its segments (not the duration, media or details).
    fn is_timeline(&self) -> bool {
        matches!(
            self,
            Change::TrackAdded { .. }
                | Change::TrackRemoved { .. }
                | Change::TrackChanged { .. }
                | Change::SegmentAdded { .. }
                | Change::SegmentRemoved { .. }
                | Change::SegmentChanged { .. }
        )
    }
}

/// One sentence. At most [`LISTED_TIMELINE_CHANGES`] track and clip changes are listed,
/// then `and N more changes to tracks and clips`, then the duration and media changes, so
/// that a huge edit reads in a few lines; `{:#}` lists every change.
/// [`StateDiff::changes`] has them all either way.
impl fmt::Display for StateDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((first, rest)) = self.changes.split_first() else {
            return f.write_str("No changes to the timeline.");
        };
        let first = first.to_string();
        let mut chars = first.chars();
        if let Some(initial) = chars.next() {
            write!(f, "{}{}", initial.to_uppercase(), chars.as_str())?;
        }
        let limit = if f.alternate() {
            usize::MAX
        } else {
            LISTED_TIMELINE_CHANGES
        };
        let mut listed = 1;
        let mut unlisted = 0;
        for change in rest {
            if change.is_timeline() {
                if listed >= limit {
                    unlisted += 1;
                    continue;
                }
                listed += 1;
            }
            if unlisted > 0 && !change.is_timeline() {
                write_unlisted(f, unlisted)?;
                unlisted = 0;
            }
            write!(f, "; {change}")?;
        }
        if unlisted > 0 {
            write_unlisted(f, unlisted)?;
        }
        f.write_str(".")
    }
}

fn write_unlisted(f: &mut fmt::Formatter<'_>, count: usize) -> fmt::Result {
    let noun = if count == 1 { "change" } else { "changes" };
    write!(f, "; and {count} more {noun} to tracks and clips")
}

impl crate::NemoClient {
    /// The session's current state: the timeline (draft), media and settings.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, session: nemo_video::Session) -> nemo_video::Result<()> {
    /// let state = client.state(&session).await?;
    /// println!("{}", state.summary());
    /// # Ok(()) }
    /// ```
    pub async fn state(&self, session: &crate::Session) -> crate::Result<SessionState> {
        let request = crate::transport::Request::get(&[
            "api",
            "state",
            "nemo_agent",
            "me",
            session.id(),
            "latest",
        ])
        .session(session.id())
        .expect("the session state");
        self.transport().call(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The alignment this crate used before `similar`: common prefix and suffix, then a
    /// longest common subsequence from a table, ties broken towards removing first, then
    /// leftovers paired in order when compatible. Kept as the reference for small inputs.
    fn reference_align<T>(
        old: &[T],
        new: &[T],
        key: impl Fn(&T) -> u64,
        compatible: impl Fn(&T, &T) -> bool,
    ) -> Vec<Pair> {
        let old_keys: Vec<u64> = old.iter().map(&key).collect();
        let new_keys: Vec<u64> = new.iter().map(&key).collect();
        let prefix = old_keys
            .iter()
            .zip(&new_keys)
            .take_while(|(a, b)| a == b)
            .count();
        let suffix = old_keys[prefix..]
            .iter()
            .rev()
            .zip(new_keys[prefix..].iter().rev())
            .take_while(|(a, b)| a == b)
            .count();
        let (old_end, new_end) = (old.len() - suffix, new.len() - suffix);
        let (middle_old, middle_new) = (&old_keys[prefix..old_end], &new_keys[prefix..new_end]);
        let (n, m) = (middle_old.len(), middle_new.len());
        let width = m + 1;
        let mut table = vec![0u32; (n + 1) * width];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                table[i * width + j] = if middle_old[i] == middle_new[j] {
                    table[(i + 1) * width + j + 1] + 1
                } else {
                    table[(i + 1) * width + j].max(table[i * width + j + 1])
                };
            }
        }
        let mut matches: Vec<(usize, usize)> = (0..prefix).map(|i| (i, i)).collect();
        let (mut i, mut j) = (0, 0);
        while i < n && j < m {
            if middle_old[i] == middle_new[j] {
                matches.push((prefix + i, prefix + j));
                i += 1;
                j += 1;
            } else if table[(i + 1) * width + j] >= table[i * width + j + 1] {
                i += 1;
            } else {
                j += 1;
            }
        }
        matches.extend((0..suffix).map(|k| (old_end + k, new_end + k)));
        matches.push((old.len(), new.len()));
        let mut pairs = Vec::new();
        let (mut i, mut j) = (0, 0);
        for (mi, mj) in matches {
            let mut olds: Vec<usize> = (i..mi).collect();
            for (nj, item) in new.iter().enumerate().take(mj).skip(j) {
                match olds.iter().position(|&oi| compatible(&old[oi], item)) {
                    Some(p) => {
                        pairs.extend(olds.drain(..p).map(Pair::Old));
                        pairs.push(Pair::Both(olds.remove(0), nj));
                    }
                    None => pairs.push(Pair::New(nj)),
                }
            }
            pairs.extend(olds.into_iter().map(Pair::Old));
            if mi < old.len() && mj < new.len() {
                pairs.push(Pair::Both(mi, mj));
            }
            (i, j) = (mi + 1, mj + 1);
        }
        pairs
    }

    /// xorshift: deterministic cases without a dependency.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    #[test]
    fn small_timelines_align_as_before() {
        // Items with distinct keys (segments are keyed by id, or by name and placement) and
        // two classes, edited by removals, insertions, moves and renames: the alignment
        // must be the one the hand-written LCS gave, so small diffs read exactly as before.
        let mut rng = Rng(0x5EED_0FA1_1C00);
        for case in 0..20_000 {
            let n = rng.below(14);
            let old: Vec<(u64, bool)> = (0..n as u64).map(|k| (k, rng.below(2) == 0)).collect();
            let mut new = old.clone();
            let mut fresh = 1000;
            for _ in 0..rng.below(5) {
                let at = rng.below(new.len() + 1);
                match rng.below(4) {
                    0 if at < new.len() => {
                        new.remove(at);
                    }
                    1 => {
                        new.insert(at, (fresh, rng.below(2) == 0));
                        fresh += 1;
                    }
                    2 if at < new.len() => {
                        let item = new.remove(at);
                        let to = rng.below(new.len() + 1);
                        new.insert(to, item);
                    }
                    _ if at < new.len() => {
                        new[at].0 = fresh;
                        fresh += 1;
                    }
                    _ => {}
                }
            }
            let expected = reference_align(&old, &new, |item| item.0, |a, b| a.1 == b.1);
            let keys = |items: &[(u64, bool)]| items.iter().map(|item| item.0).collect::<Vec<_>>();
            let aligned = align(&keys(&old), &keys(&new), |i| old[i].1, |j| new[j].1);
            assert_eq!(aligned, expected, "case {case}: {old:?} → {new:?}");
        }
    }

    #[test]
    fn leftovers_pair_with_the_first_old_item_of_their_class() {
        // Keys all differ: everything is leftover. Classes a/b.
        let old = [(1, 'a'), (2, 'b'), (3, 'a'), (4, 'b')];
        let new = [(5, 'b'), (6, 'b'), (7, 'c'), (8, 'a')];
        let keys = |items: &[(u64, char)]| items.iter().map(|item| item.0).collect::<Vec<_>>();
        let pairs = align(&keys(&old), &keys(&new), |i| old[i].1, |j| new[j].1);
        let expected = reference_align(&old, &new, |item| item.0, |a, b| a.1 == b.1);
        assert_eq!(
            pairs,
            [
                Pair::Old(0),
                Pair::Both(1, 0),
                Pair::Old(2),
                Pair::Both(3, 1),
                Pair::New(2),
                Pair::New(3),
            ]
        );
        assert_eq!(pairs, expected);
    }
}
