//! The fake agent: reads a message, changes the session's draft the way the words describe,
//! and lays out the Google-ADK-shaped SSE events of the turn, with their timing.
//!
//! Rules, checked on the lowercased message (several may apply in one turn):
//! - "remove" / "erase" / "replace" / "delete" → an `object_removal` effect on the main video
//!   segment; with "solid", "color"/"colour" or a colour name, `fill` is `solid_color` and a
//!   "solid fill mask" video track covering the clip is added, else `fill` is `inpaint`.
//! - "isolate" → an `object_isolation` effect.
//! - "music" / "bgm" / "soundtrack" → an audio track "Lo-fi" at volume 0.35.
//! - "title" / "text" / "caption" → a text track with the double-quoted text, if any.
//! - "trim to N s" → every segment and track is cut to N seconds.
//! - none of these, with a `?` (or nothing at all) → a final `ask_question` call, no response.
//! - none of these otherwise → a text-only answer, no change.
//!
//! Edits need a video in the draft; without one the agent answers in text and changes nothing.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::body::Step;
use super::state::{random_hex, unix_secs_f64, Config, Session};

/// Default length of a clip whose real length the simulator does not measure.
pub(crate) const DEFAULT_CLIP_MS: u64 = 5000;
const MASK_TRACK_NAME: &str = "solid fill mask";

/// A float with a long binary expansion: clients must round-trip it exactly.
const LOSSY_FLOAT: f64 = 905.400_000_000_000_1;

/// The draft of a new session: no tracks yet, and keys the client does not know.
pub(crate) fn new_draft() -> Value {
    json!({
        "t": [],
        "d": 0,
        "v": 1,
        "extra_unknown_key": {
            "editor_build": "sim-1",
            "snap": {"grid_ms": 33.333333333333336, "enabled": true},
            "history": []
        }
    })
}

fn tracks(draft: &Value) -> &[Value] {
    draft
        .get("t")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn tracks_mut(draft: &mut Value) -> &mut Vec<Value> {
    if !draft.is_object() {
        *draft = new_draft();
    }
    let Some(obj) = draft.as_object_mut() else {
        unreachable!("draft was just made an object")
    };
    let t = obj.entry("t").or_insert_with(|| json!([]));
    if !t.is_array() {
        *t = json!([]);
    }
    match t {
        Value::Array(tracks) => tracks,
        _ => unreachable!("t was just made an array"),
    }
}

fn track_type(track: &Value) -> Option<u64> {
    track.get("tt").and_then(Value::as_u64)
}

fn track_name(track: &Value) -> Option<&str> {
    track.get("m")?.get("name")?.as_str()
}

fn segments(track: &Value) -> &[Value] {
    track
        .get("sg")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Whether any track has a segment ("ready to export").
pub(crate) fn has_segments(draft: &Value) -> bool {
    tracks(draft).iter().any(|t| !segments(t).is_empty())
}

fn is_main_video(track: &Value) -> bool {
    track_type(track) == Some(0)
        && track_name(track) != Some(MASK_TRACK_NAME)
        && !segments(track).is_empty()
}

fn has_video(draft: &Value) -> bool {
    tracks(draft).iter().any(is_main_video)
}

/// Recomputes the draft's `d` from its segments and bumps its version `v`.
fn touch(draft: &mut Value) {
    let end = tracks(draft)
        .iter()
        .flat_map(segments)
        .map(|s| {
            s.get("s").and_then(Value::as_u64).unwrap_or(0)
                + s.get("d").and_then(Value::as_u64).unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    let version = draft.get("v").and_then(Value::as_u64).unwrap_or(0) + 1;
    if let Some(obj) = draft.as_object_mut() {
        obj.insert("d".into(), json!(end));
        obj.insert("v".into(), json!(version));
    }
}

fn duration_ms(draft: &Value) -> u64 {
    match draft.get("d").and_then(Value::as_u64) {
        Some(d) if d > 0 => d,
        _ => DEFAULT_CLIP_MS,
    }
}

impl Session {
    fn next_track_id(&mut self) -> String {
        self.last_track += 1;
        format!("track_{}", self.last_track)
    }

    fn next_segment_id(&mut self) -> String {
        self.last_segment += 1;
        format!("seg_{}", self.last_segment)
    }

    /// Adds a video track for an uploaded clip when the draft has no video yet.
    pub(crate) fn add_video_if_missing(&mut self, name: &str, url: &str, hash: &str) {
        if has_video(&self.draft) {
            return;
        }
        let track_id = self.next_track_id();
        let seg_id = self.next_segment_id();
        let d = DEFAULT_CLIP_MS;
        tracks_mut(&mut self.draft).insert(
            0,
            json!({
                "id": track_id, "tt": 0, "d": d,
                "m": {"name": name, "locked": false},
                "sg": [{
                    "id": seg_id, "s": 0, "d": d,
                    "m": {
                        "name": name, "url": url, "source_hash": hash,
                        "anchor_x": LOSSY_FLOAT, "speed": 1.0,
                        "crop": {"x": 0, "y": 0, "w": 1, "h": 1}
                    }
                }]
            }),
        );
        touch(&mut self.draft);
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Intent {
    Remove {
        target: String,
        solid: bool,
        color: String,
    },
    Isolate {
        target: String,
    },
    Music,
    Title {
        text: String,
    },
    Trim {
        ms: u64,
    },
}

fn contains_any(haystack: &str, needles: &[&str]) -> bool {
    needles.iter().any(|n| haystack.contains(n))
}

const REMOVE_WORDS: &[&str] = &["remove", "erase", "replace", "delete"];

/// The object named after the verb: "remove the background person and …" → "background person".
fn target_after(lower: &str, verbs: &[&str]) -> String {
    let start = verbs
        .iter()
        .filter_map(|v| lower.find(v).map(|at| at + v.len()))
        .min();
    let Some(start) = start else {
        return "object".into();
    };
    let rest = &lower[start..];
    let words: Vec<&str> = rest
        .split(|c: char| c.is_whitespace() || c == ',' || c == '.' || c == '!' || c == '?')
        .filter(|w| !w.is_empty())
        // Skip what is left of the verb ("removing" → "ing").
        .skip_while(|w| matches!(*w, "s" | "d" | "ing" | "the" | "a" | "an" | "that" | "this"))
        .take_while(|w| {
            !matches!(
                *w,
                "and" | "with" | "from" | "then" | "in" | "by" | "using" | "it" | "them"
            )
        })
        .take(4)
        .collect();
    if words.is_empty() {
        "object".into()
    } else {
        words.join(" ")
    }
}

fn color_in(lower: &str) -> Option<&'static str> {
    const COLORS: &[(&str, &str)] = &[
        ("blue", "#1E90FF"),
        ("red", "#FF3B30"),
        ("green", "#34C759"),
        ("black", "#000000"),
        ("white", "#FFFFFF"),
        ("yellow", "#FFCC00"),
        ("gray", "#8E8E93"),
        ("grey", "#8E8E93"),
    ];
    COLORS
        .iter()
        .find(|(name, _)| lower.contains(name))
        .map(|(_, hex)| *hex)
}

fn quoted(message: &str) -> Option<String> {
    for (open, close) in [('"', '"'), ('“', '”'), ('«', '»')] {
        if let Some(start) = message.find(open) {
            let rest = &message[start + open.len_utf8()..];
            if let Some(end) = rest.find(close) {
                let text = rest[..end].trim();
                if !text.is_empty() {
                    return Some(text.to_owned());
                }
            }
        }
    }
    None
}

/// "trim to 3 s", "trim it to 2.5 seconds" → milliseconds.
fn trim_ms(lower: &str) -> Option<u64> {
    let after_trim = &lower[lower.find("trim")? + 4..];
    let after_to = &after_trim[after_trim.find("to ")? + 3..];
    let number: String = after_to
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let secs: f64 = number.parse().ok()?;
    if secs.is_finite() && secs > 0.0 && secs < 86_400.0 {
        Some((secs * 1000.0).round() as u64)
    } else {
        None
    }
}

fn intents(message: &str) -> Vec<Intent> {
    let lower = message.to_lowercase();
    let mut out = Vec::new();
    if contains_any(&lower, REMOVE_WORDS) {
        let color = color_in(&lower);
        out.push(Intent::Remove {
            target: target_after(&lower, REMOVE_WORDS),
            solid: color.is_some() || contains_any(&lower, &["solid", "color", "colour"]),
            color: color.unwrap_or("#1E90FF").to_owned(),
        });
    }
    if lower.contains("isolate") {
        out.push(Intent::Isolate {
            target: target_after(&lower, &["isolate"]),
        });
    }
    if contains_any(&lower, &["music", "bgm", "soundtrack"]) {
        out.push(Intent::Music);
    }
    if contains_any(&lower, &["title", "text", "caption"]) {
        out.push(Intent::Title {
            text: quoted(message).unwrap_or_else(|| "Title".into()),
        });
    }
    if let Some(ms) = trim_ms(&lower) {
        out.push(Intent::Trim { ms });
    }
    out
}

/// A tool call of a turn and the response the tool gives.
#[derive(Debug, Clone)]
pub(crate) struct ToolCall {
    pub(crate) name: &'static str,
    pub(crate) args: Value,
    /// `None` for a call the agent waits on (the user must answer).
    pub(crate) response: Option<Value>,
}

/// What a turn does, decided (and applied to the draft) when the request is accepted.
#[derive(Debug, Clone)]
pub(crate) struct Turn {
    pub(crate) tool_calls: Vec<ToolCall>,
    pub(crate) text: Option<String>,
    /// Whether the draft changed (an edit turn, charged credits).
    pub(crate) edited: bool,
}

impl Turn {
    fn text_only(text: impl Into<String>) -> Turn {
        Turn {
            tool_calls: Vec::new(),
            text: Some(text.into()),
            edited: false,
        }
    }
}

const HELP_TEXT: &str = "I can remove, replace or isolate objects in your video, add background \
music or a title, and trim clips. Tell me what to change, for example \"remove the background \
person and replace it with a solid color\", then click the Export button to download your video.";

/// Decides the turn for `message` and applies its edits to the session.
/// `text_less`: `Some(forced)` overrides the builder's every-Nth pattern.
pub(crate) fn plan_turn(
    session: &mut Session,
    message: &str,
    config: &Config,
    text_less: Option<bool>,
) -> Turn {
    let intents = intents(message);
    if intents.is_empty() {
        if message.contains('?') || message.trim().is_empty() {
            let question = "Which object should I work on, and what should happen to it: \
                            remove it, replace it with a solid color, or isolate it?";
            return Turn {
                tool_calls: vec![ToolCall {
                    name: "ask_question",
                    args: json!({"question": question, "options": ["remove", "replace", "isolate"]}),
                    response: None,
                }],
                text: None,
                edited: false,
            };
        }
        return Turn::text_only(HELP_TEXT);
    }
    if !has_video(&session.draft) {
        return Turn::text_only(
            "I don't see a video in this project yet. Drag a clip onto the timeline or click \
             the Upload button, then tell me what to change.",
        );
    }

    let mut calls = Vec::new();
    let mut sentences = Vec::new();
    for intent in intents {
        let (call, sentence) = apply(session, intent);
        calls.push(call);
        sentences.push(sentence);
    }
    touch(&mut session.draft);
    session.edit_turns += 1;

    let text_less = text_less
        .unwrap_or(config.text_less_every > 0 && session.edit_turns % config.text_less_every == 0);
    let text = (!text_less).then(|| {
        sentences.push(
            "Preview it in the timeline, then click the Export button to download your video."
                .into(),
        );
        sentences.join(" ")
    });
    Turn {
        tool_calls: calls,
        text,
        edited: true,
    }
}

fn main_video_segment(session: &mut Session) -> Option<&mut Value> {
    tracks_mut(&mut session.draft)
        .iter_mut()
        .find(|t| is_main_video(t))?
        .get_mut("sg")?
        .as_array_mut()?
        .first_mut()
}

fn push_effect(session: &mut Session, effect: Value) -> Option<String> {
    let segment = main_video_segment(session)?;
    let seg_id = segment.get("id").and_then(Value::as_str).map(str::to_owned);
    let meta = segment
        .as_object_mut()?
        .entry("m")
        .or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    let effects = meta
        .as_object_mut()?
        .entry("effects")
        .or_insert_with(|| json!([]));
    if !effects.is_array() {
        *effects = json!([]);
    }
    effects.as_array_mut()?.push(effect);
    seg_id
}

fn apply(session: &mut Session, intent: Intent) -> (ToolCall, String) {
    let d = duration_ms(&session.draft);
    match intent {
        Intent::Remove {
            target,
            solid,
            color,
        } => {
            let fill = if solid { "solid_color" } else { "inpaint" };
            let mut effect = json!({
                "type": "object_removal", "target": target, "fill": fill,
                "tracking": {"confidence": 0.93, "keyframes": 120}
            });
            if solid {
                effect["color"] = json!(color);
            }
            let seg_id = push_effect(session, effect);
            let mut response = json!({"status": "success", "segment_id": seg_id});
            if solid {
                let mask_exists = tracks(&session.draft)
                    .iter()
                    .any(|t| track_name(t) == Some(MASK_TRACK_NAME));
                if !mask_exists {
                    let track_id = session.next_track_id();
                    let mask_seg = session.next_segment_id();
                    tracks_mut(&mut session.draft).push(json!({
                        "id": track_id, "tt": 0, "d": d,
                        "m": {"name": MASK_TRACK_NAME, "blend": "normal"},
                        "sg": [{
                            "id": mask_seg, "s": 0, "d": d,
                            "m": {"name": MASK_TRACK_NAME, "color": color,
                                  "follows": target, "opacity": 1.0}
                        }]
                    }));
                    response["mask_track_id"] = json!(track_id);
                }
                let media_id = format!("gm_{}", random_hex(10));
                session.generated_media.push(json!({
                    "media_id": media_id, "type": "mask", "source": "object_removal",
                    "target": target, "color": color
                }));
            }
            let sentence = if solid {
                format!(
                    "Done! I removed the {target} and replaced it with a solid color box ({color})."
                )
            } else {
                format!("Done! I removed the {target} and filled in the background.")
            };
            let mut args = json!({"target": target, "fill": fill});
            if solid {
                args["color"] = json!(color);
            }
            (
                ToolCall {
                    name: "remove_object",
                    args,
                    response: Some(response),
                },
                sentence,
            )
        }
        Intent::Isolate { target } => {
            let seg_id = push_effect(
                session,
                json!({"type": "object_isolation", "target": target, "background": "transparent"}),
            );
            (
                ToolCall {
                    name: "isolate_object",
                    args: json!({"target": target}),
                    response: Some(json!({"status": "success", "segment_id": seg_id})),
                },
                format!("I isolated the {target}; everything else is now transparent."),
            )
        }
        Intent::Music => {
            let track_id = session.next_track_id();
            let seg_id = session.next_segment_id();
            tracks_mut(&mut session.draft).push(json!({
                "id": track_id, "tt": 1, "d": d,
                "m": {"name": "Lo-fi", "volume": 0.35},
                "sg": [{
                    "id": seg_id, "s": 0, "d": d,
                    "m": {"name": "Lo-fi", "volume": 0.35, "fade_out_ms": 800,
                          "library_id": "bgm_lofi_01"}
                }]
            }));
            (
                ToolCall {
                    name: "add_bgm",
                    args: json!({"style": "lo-fi", "volume": 0.35}),
                    response: Some(json!({"status": "success", "track_id": track_id})),
                },
                "I added a Lo-fi background track at 35% volume; open the Audio panel to change it."
                    .into(),
            )
        }
        Intent::Title { text } => {
            let track_id = session.next_track_id();
            let seg_id = session.next_segment_id();
            let len = d.min(3000);
            tracks_mut(&mut session.draft).push(json!({
                "id": track_id, "tt": 7, "d": len,
                "m": {"name": "Title", "text": text},
                "sg": [{
                    "id": seg_id, "s": 0, "d": len,
                    "m": {"name": "Title", "text": text, "font_size": 72,
                          "position": {"x": 0.5, "y": 0.12}}
                }]
            }));
            (
                ToolCall {
                    name: "add_text",
                    args: json!({"text": text, "start_ms": 0, "duration_ms": len}),
                    response: Some(json!({"status": "success", "track_id": track_id})),
                },
                format!(
                    "I added the title \"{text}\" for the first {} seconds.",
                    len / 1000
                ),
            )
        }
        Intent::Trim { ms } => {
            for track in tracks_mut(&mut session.draft) {
                trim_track(track, ms);
            }
            (
                ToolCall {
                    name: "trim_video",
                    args: json!({"duration_ms": ms}),
                    response: Some(json!({"status": "success", "duration_ms": ms})),
                },
                format!("I trimmed the video to {} seconds.", ms as f64 / 1000.0),
            )
        }
    }
}

fn trim_track(track: &mut Value, ms: u64) {
    let mut end = 0;
    if let Some(sg) = track.get_mut("sg").and_then(Value::as_array_mut) {
        sg.retain(|s| s.get("s").and_then(Value::as_u64).unwrap_or(0) < ms);
        for seg in sg.iter_mut() {
            let start = seg.get("s").and_then(Value::as_u64).unwrap_or(0);
            let dur = seg.get("d").and_then(Value::as_u64).unwrap_or(0);
            let new = dur.min(ms - start);
            if let Some(obj) = seg.as_object_mut() {
                obj.insert("d".into(), json!(new));
            }
            end = end.max(start + new);
        }
    }
    if let Some(obj) = track.as_object_mut() {
        obj.insert("d".into(), json!(end));
    }
}

/// Stream faults taken for this turn.
#[derive(Debug, Default, Clone)]
pub(crate) struct StreamFaults {
    pub(crate) drop_after: Option<usize>,
    pub(crate) stall: Option<(usize, Duration)>,
    /// After this many data events, an ADK error event, then the end of the stream.
    pub(crate) error_after: Option<(usize, String)>,
}

struct Timeline {
    invocation_id: String,
    start: f64,
    offset: Duration,
    /// (step, whether it is a data event rather than a heartbeat or a pause).
    steps: Vec<(Step, bool)>,
    heartbeat_flip: bool,
}

impl Timeline {
    fn wait(&mut self, delay: Duration) {
        self.offset = self.offset.saturating_add(delay);
        self.steps.push((Step::Wait(delay), false));
    }

    fn event(&mut self, mut body: Map<String, Value>) {
        body.insert("invocationId".into(), json!(self.invocation_id));
        body.insert("author".into(), json!("nemo_agent"));
        body.insert("id".into(), json!(random_hex(8)));
        body.insert(
            "timestamp".into(),
            json!(self.start + self.offset.as_secs_f64()),
        );
        let line = format!("data: {}\n\n", Value::Object(body));
        self.steps.push((Step::Send(Bytes::from(line)), true));
    }

    fn heartbeat(&mut self) {
        self.heartbeat_flip = !self.heartbeat_flip;
        let bytes: &'static [u8] = if self.heartbeat_flip {
            b": ping\n\n"
        } else {
            b"data:\n\n"
        };
        self.steps
            .push((Step::Send(Bytes::from_static(bytes)), false));
    }

    fn work(&mut self, total: Duration, interval: Duration) {
        if interval.is_zero() {
            self.wait(total);
            return;
        }
        // Bounded, so an extreme configuration cannot plan millions of steps.
        let beats = (total.as_nanos() / interval.as_nanos()).min(10_000) as u32;
        if beats == 0 {
            self.wait(total);
            return;
        }
        let every = total / beats;
        for _ in 0..beats {
            self.wait(every);
            self.heartbeat();
        }
        self.wait(total.saturating_sub(every * beats));
    }
}

fn content(role: &str, parts: Value) -> Value {
    json!({"role": role, "parts": parts})
}

fn empty_actions() -> Value {
    json!({"stateDelta": {}, "artifactDelta": {}, "requestedAuthConfigs": {}})
}

/// Splits text into up to three chunks at word boundaries.
fn chunks(text: &str) -> Vec<&str> {
    let target = text.len().div_ceil(3).max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + target).min(text.len());
        while end < text.len() && !text.is_char_boundary(end) {
            end += 1;
        }
        if let Some(space) = text[end..].find(' ') {
            end = if out.len() == 2 {
                text.len()
            } else {
                end + space + 1
            };
        } else {
            end = text.len();
        }
        out.push(&text[start..end]);
        start = end;
    }
    out
}

/// The SSE body of a turn, with the given faults woven in.
pub(crate) fn stream_steps(
    turn: &Turn,
    draft: &Value,
    config: &Config,
    faults: StreamFaults,
) -> Vec<Step> {
    let mut tl = Timeline {
        invocation_id: format!("e-{}", uuid::Uuid::new_v4()),
        start: unix_secs_f64(),
        offset: Duration::ZERO,
        steps: Vec::new(),
        heartbeat_flip: false,
    };
    let pacing = config.event_pacing;
    for (i, call) in turn.tool_calls.iter().enumerate() {
        if i > 0 {
            tl.wait(pacing);
        }
        let call_id = format!("adk-{}", uuid::Uuid::new_v4());
        let mut ev = Map::new();
        ev.insert(
            "content".into(),
            content(
                "model",
                json!([{"functionCall": {"id": call_id, "name": call.name, "args": call.args}}]),
            ),
        );
        ev.insert("actions".into(), empty_actions());
        if call.response.is_none() {
            ev.insert("longRunningToolIds".into(), json!([call_id]));
        }
        tl.event(ev);
        let Some(response) = &call.response else {
            continue;
        };
        tl.work(config.work_duration, config.heartbeat_interval);
        let mut ev = Map::new();
        ev.insert(
            "content".into(),
            content(
                "user",
                json!([{"functionResponse": {"id": call_id, "name": call.name, "response": response}}]),
            ),
        );
        ev.insert("actions".into(), empty_actions());
        tl.event(ev);
    }
    if turn.edited {
        tl.wait(pacing);
        let mut ev = Map::new();
        let version = draft.get("v").cloned().unwrap_or(Value::Null);
        ev.insert(
            "actions".into(),
            json!({"stateDelta": {"draft": draft, "draft_version": version},
                   "artifactDelta": {}, "requestedAuthConfigs": {}}),
        );
        tl.event(ev);
    }
    if let Some(text) = &turn.text {
        for (i, chunk) in chunks(text).into_iter().enumerate() {
            if i > 0 || !tl.steps.is_empty() {
                tl.wait(pacing);
            }
            let mut ev = Map::new();
            ev.insert("content".into(), content("model", json!([{"text": chunk}])));
            ev.insert("partial".into(), json!(true));
            tl.event(ev);
        }
        tl.wait(pacing);
        let mut ev = Map::new();
        ev.insert("content".into(), content("model", json!([{"text": text}])));
        ev.insert("actions".into(), empty_actions());
        let words = text.split_whitespace().count();
        ev.insert(
            "usageMetadata".into(),
            json!({"candidatesTokenCount": words, "promptTokenCount": 812,
                   "totalTokenCount": 812 + words}),
        );
        tl.event(ev);
    }
    weave_faults(tl.steps, faults)
}

fn weave_faults(steps: Vec<(Step, bool)>, faults: StreamFaults) -> Vec<Step> {
    let mut out = Vec::with_capacity(steps.len() + 2);
    let mut events = 0;
    let check = |events: usize, out: &mut Vec<Step>| -> bool {
        if let Some((after, pause)) = faults.stall {
            if events == after {
                out.push(Step::Wait(pause));
            }
        }
        faults.drop_after == Some(events)
    };
    if check(0, &mut out) {
        out.extend(abort());
        return out;
    }
    let agent_error = |out: &mut Vec<Step>, message: &str| {
        // As ADK reports a failed turn: an event with `errorCode`, then the stream ends.
        let event =
            json!({"errorCode": "INTERNAL", "errorMessage": message, "author": "nemo_agent"});
        out.push(Step::Send(Bytes::from(format!("data: {event}\n\n"))));
    };
    if let Some((0, message)) = &faults.error_after {
        agent_error(&mut out, message);
        return out;
    }
    for (step, is_event) in steps {
        out.push(step);
        if is_event {
            events += 1;
            if check(events, &mut out) {
                out.extend(abort());
                return out;
            }
            if let Some((after, message)) = &faults.error_after {
                if events == *after {
                    agent_error(&mut out, message);
                    return out;
                }
            }
        }
    }
    if faults.drop_after.is_some() {
        // Fewer events than asked for: still end abruptly.
        out.extend(abort());
    }
    out
}

/// Pause first, so hyper flushes what was written before the connection is cut.
pub(crate) fn abort() -> [Step; 2] {
    [Step::Wait(Duration::from_millis(5)), Step::Abort]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_seed_example() {
        let got = intents("remove the background person and replace it with a solid color");
        assert_eq!(
            got,
            vec![Intent::Remove {
                target: "background person".into(),
                solid: true,
                color: "#1E90FF".into()
            }]
        );
    }

    #[test]
    fn reads_trim_music_and_title() {
        let got = intents("Trim to 2.5 s, add lo-fi music and a title \"Hello\"");
        assert!(got.contains(&Intent::Trim { ms: 2500 }));
        assert!(got.contains(&Intent::Music));
        assert!(got.contains(&Intent::Title {
            text: "Hello".into()
        }));
    }

    #[test]
    fn chunks_cover_the_text() {
        for text in ["a", "hello world", HELP_TEXT, "ünïcödé wörds hërë ôk"] {
            let parts = chunks(text);
            assert!(parts.len() <= 3 && !parts.is_empty(), "{parts:?}");
            assert_eq!(parts.concat(), text);
        }
    }
}
