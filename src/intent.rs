//! Routing a user's words to an action, and turning the agent's GUI-speak into API actions.
//!
//! # Rules for [`route`]
//!
//! 1. Quoted text is content, not a command, and is ignored: `"…"`, `“…”`, `‘…’`, `「…」`,
//!    `『…』`, `《…》`, and `'…'` when the quote marks stand at word edges (so `don't` is not a
//!    quote). `add a title that says "export"` is therefore not an export.
//! 2. A message that asks for an edit is an edit: if it contains one of these English verbs
//!    (whole words, any case): `add`, `adjust`, `apply`, `blur`, `brighten`, `change`,
//!    `create`, `crop`, `cut`, `darken`, `decrease`, `delete`, `edit`, `erase`, `extend`,
//!    `fade`, `fix`, `generate`, `increase`, `insert`, `isolate`, `lengthen`, `make`, `merge`,
//!    `mix`, `move`, `mute`, `overlay`, `put`, `reduce`, `remove`, `replace`, `resize`,
//!    `rotate`, `set`, `shorten`, `slow`, `speed`, `split`, `stabilize`, `swap`, `trim`,
//!    `turn`, `zoom`; or one of these Chinese verbs (anywhere):
//!    添加、加上、加入、删除、删掉、去掉、去除、移除、替换、换成、修改、改成、改为、剪辑、剪掉、裁剪、调整、插入、生成、制作、合并、分割、静音、模糊; it routes to
//!    [`Intent::Edit`]. `remove the person and export` goes to the agent, which does the edit
//!    and then asks for the export. Sending a request to the agent is the safe side: the agent
//!    can still answer it, while a misrouted edit would be lost.
//! 3. Otherwise the first row of this table with a match wins, in this order:
//!
//!    | Intent | English (whole words, any case) | Chinese (anywhere) |
//!    |---|---|---|
//!    | [`Intent::Export`] | `export`, `download`, `send me the video` | `导出` |
//!    | [`Intent::Credits`] | `credits`, `balance` | `积分`, `余额` |
//!    | [`Intent::Status`] | `status`, `show tracks` | `状态` |
//!    | [`Intent::Upload`] | `upload` | `上传` |
//!
//!    English keywords match whole words only: a word is a run of letters and digits, so
//!    `exported`, `exporting` and `reupload` do not match, while `re-upload` and `export!` do.
//!    Phrases match as consecutive words. Chinese has no spaces, so Chinese keywords match
//!    anywhere.
//! 4. Everything else is [`Intent::Edit`].
//!
//! Known limits of a keyword router: `balance the audio` routes to [`Intent::Credits`] and
//! `下载视频` (not in the table) to [`Intent::Edit`]. Callers that know what the user wants
//! should call the matching client method directly.
//!
//! # Rules for [`gui_actions`]
//!
//! The agent's replies are written for its web editor. [`gui_actions`] finds the GUI
//! instructions in a reply and says what to do through the API instead, in the order they
//! appear, each distinct action once:
//!
//! | Reply says | Action |
//! |---|---|
//! | `click`/`tap`/`press` …, `点击`/`单击`/`点一下` … | [`GuiAction::Execute`] with the button's name |
//! | `open` *panel*, `打开` … | [`GuiAction::ReadState`] with the panel's name |
//! | `drag`, `drag and drop`, `drop it onto` …, `拖拽`/`拖动`/`拖放`/`拖到`/`拖入` | [`GuiAction::SendEdit`] |
//! | `preview` … `timeline` (within 4 words), `timeline preview`, `时间线`/`时间轴` near `预览` | [`GuiAction::ShowSummary`] |
//! | `Export button`, a clicked or opened `Export` …, `导出` anywhere | [`GuiAction::Export`] |
//!
//! Names are taken, in this order, from brackets or quotes right after the verb (`click
//! [Apply]`, `click the "Apply" button`, `点击「应用」`, `**Apply**`), from the words before a
//! GUI noun (`click the Add Music button` → `Add Music`, `open the Effects panel` →
//! `Effects`, `点击应用按钮` → `应用`), from capitalised words (`click Apply to confirm`), or,
//! for `open`, from a known editor area (`open the timeline`). `click` without a name gives an
//! empty target; English `open` without a name is not a GUI instruction (it is also an
//! adjective) and gives nothing, while `打开` always counts.
//!
//! # Rules for [`translate_reply`]
//!
//! The service's rule is that the agent's text is shown only after its GUI instructions are
//! translated for a client without a GUI. [`translate_reply`] rewrites each sentence
//! (ended by `.`, `!` or `?` before a space, by `;`, by `。！？；`, or by a line break) that
//! holds a GUI instruction as a whole, in the sentence's language (Chinese when it contains
//! Chinese characters), and keeps every other sentence as it is.
//!
//! The translation never says that something was done: the library cannot know what your
//! program does after the reply. By default each phrase says what the user can do instead
//! (in a client without a GUI, that is asking in words). A program that does act on the
//! reply says so with [`translate_reply_with`] and [`TranslateOptions`]: each flag turns the
//! phrase of its action into what the program will do, and touches no other phrase.
//!
//! | Action | English, by default | Chinese, by default |
//! |---|---|---|
//! | [`GuiAction::Execute`] | `Instead of clicking "Apply", say in a message what you want.` | `无需点击「应用」，请直接用文字说明想要做什么。` |
//! | [`GuiAction::Execute`], no name | `Instead of clicking, say in a message what you want.` | `无需点击，请直接用文字说明想要做什么。` |
//! | [`GuiAction::Execute`], an upload button (`Upload`, `Import`, `上传`, `导入`) | `To add a file, upload it.` | `如需添加素材，请上传文件。` |
//! | [`GuiAction::ReadState`] | `To see the project's current state, ask for its status.` | `如需查看项目的当前状态，请查询状态。` |
//! | [`GuiAction::SendEdit`] | `To move or rearrange something, describe the change in a message.` | `如需移动或调整内容，请直接用文字描述修改。` |
//! | [`GuiAction::ShowSummary`] | `To see the timeline, ask for the project's status.` | `如需查看时间线，请查询项目状态。` |
//! | [`GuiAction::Export`] | `To get the video, ask for an export.` | `如需获取视频，请要求导出。` |
//!
//! With a flag set, its action's phrase says what the program does next:
//!
//! | Flag (the caller's program …) | Action | English | Chinese |
//! |---|---|---|---|
//! | [`shows_state`](TranslateOptions::shows_state) (shows the state below the reply) | [`GuiAction::ReadState`] | `The project's current state is shown below.` | `项目的当前状态见下方。` |
//! | [`shows_summary`](TranslateOptions::shows_summary) (shows the timeline summary below the reply) | [`GuiAction::ShowSummary`] | `The timeline summary is shown below.` | `时间线摘要见下方。` |
//! | [`exports`](TranslateOptions::exports) (runs the export next) | [`GuiAction::Export`] | `The video is exported through the API.` | `视频会通过 API 导出。` |
//!
//! A clause after `;` that is rewritten becomes a sentence of its own (the `;` before it
//! becomes `.`). Each action is said once per reply: a later sentence whose actions were all
//! said already is left out.

/// What a user's message asks for, following the service's routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Intent {
    /// Render and download the video (free, no credits); skips the agent.
    Export,
    /// Show the credit balance; skips the agent.
    Credits,
    /// Show the session state and timeline; skips the agent.
    Status,
    /// Upload a file or URL; skips the agent.
    Upload,
    /// Everything else: send the message to the agent over `/run_sse`.
    Edit,
}

impl Intent {
    /// Whether the client handles this itself, without sending the message to the agent
    /// (the table's "Skip SSE?" column): true for all but [`Intent::Edit`].
    ///
    /// ```
    /// use nemo_video::intent::{route, Intent};
    /// assert!(route("export").skips_agent());
    /// assert!(!Intent::Edit.skips_agent());
    /// ```
    pub fn skips_agent(self) -> bool {
        !matches!(self, Intent::Edit)
    }
}

/// English verbs that make a message an edit (whole words, any case); listed in the module
/// rules, which must stay in step.
pub(crate) const EDIT_VERBS: &[&str] = &[
    "add",
    "adjust",
    "apply",
    "blur",
    "brighten",
    "change",
    "create",
    "crop",
    "cut",
    "darken",
    "decrease",
    "delete",
    "edit",
    "erase",
    "extend",
    "fade",
    "fix",
    "generate",
    "increase",
    "insert",
    "isolate",
    "lengthen",
    "make",
    "merge",
    "mix",
    "move",
    "mute",
    "overlay",
    "put",
    "reduce",
    "remove",
    "replace",
    "resize",
    "rotate",
    "set",
    "shorten",
    "slow",
    "speed",
    "split",
    "stabilize",
    "swap",
    "trim",
    "turn",
    "zoom",
];

/// Chinese verbs that make a message an edit (matched anywhere); listed in the module rules.
pub(crate) const EDIT_VERBS_ZH: &[&str] = &[
    "添加", "加上", "加入", "删除", "删掉", "去掉", "去除", "移除", "替换", "换成", "修改", "改成",
    "改为", "剪辑", "剪掉", "裁剪", "调整", "插入", "生成", "制作", "合并", "分割", "静音", "模糊",
];

/// The routing table: intent, English keywords (space-separated words form a phrase), Chinese
/// keywords.
const ROUTES: &[(Intent, &[&str], &[&str])] = &[
    (
        Intent::Export,
        &["export", "download", "send me the video"],
        &["导出"],
    ),
    (Intent::Credits, &["credits", "balance"], &["积分", "余额"]),
    (Intent::Status, &["status", "show tracks"], &["状态"]),
    (Intent::Upload, &["upload"], &["上传"]),
];

/// Routes a user's message to an [`Intent`], following the [module rules](self).
///
/// ```
/// use nemo_video::intent::{route, Intent};
///
/// assert_eq!(route("Export it please"), Intent::Export);
/// assert_eq!(route("我还有多少积分？"), Intent::Credits);
/// assert_eq!(route("show tracks"), Intent::Status);
/// assert_eq!(route("add a title that says \"export\""), Intent::Edit);
/// assert_eq!(route("remove the background person"), Intent::Edit);
/// ```
pub fn route(text: &str) -> Intent {
    let unquoted = strip_quoted(text).to_lowercase();
    let words: Vec<&str> = words(&unquoted).map(|word| word.text).collect();

    let asks_for_edit = words.iter().any(|word| EDIT_VERBS.contains(word))
        || EDIT_VERBS_ZH.iter().any(|verb| unquoted.contains(verb));
    if asks_for_edit {
        return Intent::Edit;
    }
    ROUTES
        .iter()
        .find(|(_, english, chinese)| {
            english.iter().any(|phrase| contains_phrase(&words, phrase))
                || chinese.iter().any(|keyword| unquoted.contains(keyword))
        })
        .map_or(Intent::Edit, |(intent, _, _)| *intent)
}

/// What to do through the API when the agent's reply gives a GUI instruction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GuiAction {
    /// `click [button]`: do what the button does through the API (usually by sending the
    /// request to the agent).
    Execute {
        /// The button's name as written (`Apply`, `应用`); empty when the reply names none.
        target: String,
    },
    /// `open [panel]`: read the session state and show the relevant part.
    ReadState {
        /// The panel's name as written (`Effects`, `时间线`); empty when the reply names none.
        panel: String,
    },
    /// "drag/drop": send the edit to the agent as a message instead.
    SendEdit,
    /// "preview in timeline": show the timeline summary.
    ShowSummary,
    /// "Export button": run the export workflow.
    Export,
}

/// Finds the GUI instructions in an agent's reply, in order of appearance, without
/// duplicates; see the [module rules](self).
///
/// ```
/// use nemo_video::intent::{gui_actions, GuiAction};
///
/// let reply = "Click [Apply], then drag the clip to track 2. When you're happy, \
///              press the Export button.";
/// assert_eq!(
///     gui_actions(reply),
///     [
///         GuiAction::Execute { target: "Apply".into() },
///         GuiAction::SendEdit,
///         GuiAction::Export,
///     ]
/// );
/// assert_eq!(gui_actions("点击「应用」后打开时间线面板"), [
///     GuiAction::Execute { target: "应用".into() },
///     GuiAction::ReadState { panel: "时间线".into() },
/// ]);
/// ```
pub fn gui_actions(reply: &str) -> Vec<GuiAction> {
    let mut found: Vec<(usize, GuiAction)> = Vec::new();
    scan_english(reply, &mut found);
    scan_chinese(reply, &mut found);
    found.sort_by_key(|(position, _)| *position);

    let mut actions: Vec<GuiAction> = Vec::with_capacity(found.len());
    for (_, action) in found {
        if !actions.contains(&action) {
            actions.push(action);
        }
    }
    actions
}

/// The agent's reply as a client without a GUI presents it: see [`translate_reply`] and
/// [`translate_reply_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TranslatedReply {
    /// The reply with each sentence that gives a GUI instruction replaced by what the user can
    /// do instead (or, for the actions the [`TranslateOptions`] cover, by what the program
    /// does); the other sentences unchanged.
    pub text: String,
    /// What to do through the API, as [`gui_actions`] finds it in the whole reply.
    pub actions: Vec<GuiAction>,
}

/// What the caller's program does after showing a translated reply, so that the translation
/// may say so; see [`translate_reply_with`]. Every flag is off by default: the translation
/// then says what the user can do, never what the program does. Each setter is named for
/// what the program does, and covers one action's phrase only.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TranslateOptions {
    shows_state: bool,
    shows_summary: bool,
    exports: bool,
}

impl TranslateOptions {
    /// The program shows the project's state below the reply when the agent says to open a
    /// panel ([`GuiAction::ReadState`]): the translation says "The project's current state is
    /// shown below." Default: false ("To see the project's current state, ask for its
    /// status.").
    pub fn shows_state(mut self, shows_state: bool) -> Self {
        self.shows_state = shows_state;
        self
    }

    /// The program shows the timeline summary below the reply when the agent says to preview
    /// the timeline ([`GuiAction::ShowSummary`]): the translation says "The timeline summary
    /// is shown below." Default: false ("To see the timeline, ask for the project's
    /// status.").
    pub fn shows_summary(mut self, shows_summary: bool) -> Self {
        self.shows_summary = shows_summary;
        self
    }

    /// The program runs the export next when the agent points at the Export button
    /// ([`GuiAction::Export`]): the translation says "The video is exported through the
    /// API." Default: false ("To get the video, ask for an export.").
    pub fn exports(mut self, exports: bool) -> Self {
        self.exports = exports;
        self
    }
}

/// Rewrites the GUI instructions in an agent's reply into what the user can do instead,
/// following the [module rules](self), in English and Chinese. It claims nothing about what
/// the program does: a program that shows the state or runs the export after the reply says
/// so with [`translate_reply_with`]. The same as
/// `translate_reply_with(reply, &TranslateOptions::default())`. The raw reply stays with the
/// caller (for example [`Turn::text`](crate::turn::Turn::text)).
///
/// ```
/// use nemo_video::intent::{translate_reply, GuiAction};
///
/// let reply = translate_reply(
///     "Done! I removed the person. Preview it in the timeline, then click the Export button.",
/// );
/// assert_eq!(
///     reply.text,
///     "Done! I removed the person. To see the timeline, ask for the project's status. \
///      To get the video, ask for an export."
/// );
/// assert_eq!(reply.actions, [GuiAction::ShowSummary, GuiAction::Export]);
///
/// let reply = translate_reply("No video yet. Click the Upload button to add one.");
/// assert_eq!(reply.text, "No video yet. To add a file, upload it.");
///
/// let reply = translate_reply("已删除背景人物。请点击导出按钮下载视频。");
/// assert_eq!(reply.text, "已删除背景人物。如需获取视频，请要求导出。");
/// ```
pub fn translate_reply(reply: &str) -> TranslatedReply {
    translate_reply_with(reply, &TranslateOptions::default())
}

/// [`translate_reply`] for a program that acts on the reply: each flag of `options` that is
/// set lets the phrase of its action say what the program does next (see the
/// [module rules](self)). Set a flag only if the program does that every time the reply
/// holds the action.
///
/// ```
/// use nemo_video::intent::{translate_reply_with, TranslateOptions};
///
/// // This program prints the timeline summary below the reply and then exports.
/// let options = TranslateOptions::default().shows_summary(true).exports(true);
/// let reply = translate_reply_with(
///     "Done! I removed the person. Preview it in the timeline, then click the Export button.",
///     &options,
/// );
/// assert_eq!(
///     reply.text,
///     "Done! I removed the person. The timeline summary is shown below. \
///      The video is exported through the API."
/// );
///
/// // A flag covers its own action only.
/// let options = TranslateOptions::default().shows_summary(true);
/// let reply = translate_reply_with("请在时间线上预览，然后点击导出按钮。", &options);
/// assert_eq!(reply.text, "时间线摘要见下方。如需获取视频，请要求导出。");
/// ```
pub fn translate_reply_with(reply: &str, options: &TranslateOptions) -> TranslatedReply {
    let mut said: Vec<GuiAction> = Vec::new();
    let mut text = String::with_capacity(reply.len());
    for (sentence, separator) in sentences(reply) {
        let actions = gui_actions(sentence);
        if actions.is_empty() {
            text.push_str(sentence);
            text.push_str(separator);
            continue;
        }
        let chinese = sentence.chars().any(is_cjk_ideograph);
        let phrases: Vec<String> = actions
            .into_iter()
            .filter(|action| {
                let new = !said.contains(action);
                if new {
                    said.push(action.clone());
                }
                new
            })
            .map(|action| translated_phrase(&action, chinese, options))
            .collect();
        if phrases.is_empty() {
            // Everything this sentence asks was said already; keep a line break it ended.
            if separator.contains('\n') && !text.ends_with('\n') {
                text.truncate(text.trim_end_matches([' ', '\t']).len());
                text.push('\n');
            }
            continue;
        }
        // A clause after `;` becomes a sentence of its own: close the one before it.
        let before = text.trim_end().len();
        if text[..before].ends_with(';') {
            text.replace_range(before - 1..before, ".");
        } else if text[..before].ends_with('；') {
            text.replace_range(before - '；'.len_utf8()..before, "。");
        }
        text.push_str(&phrases.join(if chinese { "" } else { " " }));
        text.push_str(separator);
    }
    let kept_end = reply.len() - reply.trim_end().len();
    text.truncate(text.trim_end().len());
    text.push_str(&reply[reply.len() - kept_end..]);
    TranslatedReply {
        text,
        actions: gui_actions(reply),
    }
}

/// One GUI instruction as a sentence: what the user can do instead, or, for an action the
/// program says it does (`options`), what the program does.
fn translated_phrase(action: &GuiAction, chinese: bool, options: &TranslateOptions) -> String {
    let phrase = match (action, chinese) {
        (GuiAction::Execute { target }, false) if is_upload_name(target) => {
            "To add a file, upload it."
        }
        (GuiAction::Execute { target }, true) if is_upload_name(target) => {
            "如需添加素材，请上传文件。"
        }
        (GuiAction::Execute { target }, false) if target.is_empty() => {
            "Instead of clicking, say in a message what you want."
        }
        (GuiAction::Execute { target }, false) => {
            return format!("Instead of clicking \"{target}\", say in a message what you want.")
        }
        (GuiAction::Execute { target }, true) if target.is_empty() => {
            "无需点击，请直接用文字说明想要做什么。"
        }
        (GuiAction::Execute { target }, true) => {
            return format!("无需点击「{target}」，请直接用文字说明想要做什么。")
        }
        (GuiAction::ReadState { .. }, false) if options.shows_state => {
            "The project's current state is shown below."
        }
        (GuiAction::ReadState { .. }, false) => {
            "To see the project's current state, ask for its status."
        }
        (GuiAction::ReadState { .. }, true) if options.shows_state => "项目的当前状态见下方。",
        (GuiAction::ReadState { .. }, true) => "如需查看项目的当前状态，请查询状态。",
        (GuiAction::SendEdit, false) => {
            "To move or rearrange something, describe the change in a message."
        }
        (GuiAction::SendEdit, true) => "如需移动或调整内容，请直接用文字描述修改。",
        (GuiAction::ShowSummary, false) if options.shows_summary => {
            "The timeline summary is shown below."
        }
        (GuiAction::ShowSummary, false) => "To see the timeline, ask for the project's status.",
        (GuiAction::ShowSummary, true) if options.shows_summary => "时间线摘要见下方。",
        (GuiAction::ShowSummary, true) => "如需查看时间线，请查询项目状态。",
        (GuiAction::Export, false) if options.exports => "The video is exported through the API.",
        (GuiAction::Export, false) => "To get the video, ask for an export.",
        (GuiAction::Export, true) if options.exports => "视频会通过 API 导出。",
        (GuiAction::Export, true) => "如需获取视频，请要求导出。",
    };
    phrase.to_string()
}

/// A button that adds media (`Upload`, `Import media`, `上传`, `导入`): not the agent's work,
/// and not something to describe in words.
fn is_upload_name(name: &str) -> bool {
    name.contains("上传")
        || name.contains("导入")
        || words(name).next().is_some_and(|word| {
            ["upload", "import"]
                .iter()
                .any(|verb| word.text.eq_ignore_ascii_case(verb))
        })
}

/// Splits `text` into sentences, each with the whitespace that follows it. A sentence ends
/// after `.`, `!` or `?` followed by whitespace (so `0.5` and `#1E90FF).` stay whole until
/// the space), after `;`, after `。！？；`, or at a line break.
fn sentences(text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((index, c)) = chars.next() {
        let next = chars.peek().map(|&(_, next)| next);
        let ends = match c {
            '。' | '！' | '？' | '；' | ';' | '\n' => true,
            '.' | '!' | '?' => next.is_none_or(char::is_whitespace),
            _ => false,
        };
        if !ends {
            continue;
        }
        let sentence_end = if c == '\n' {
            index
        } else {
            index + c.len_utf8()
        };
        let mut separator_end = sentence_end;
        while let Some(&(at, next)) = chars.peek() {
            if !next.is_whitespace() {
                break;
            }
            separator_end = at + next.len_utf8();
            chars.next();
        }
        out.push((
            &text[start..sentence_end],
            &text[sentence_end..separator_end],
        ));
        start = separator_end;
    }
    if start < text.len() {
        out.push((&text[start..], ""));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Words and quotes
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Word<'t> {
    start: usize,
    end: usize,
    text: &'t str,
}

/// Letters and digits outside the CJK blocks: Chinese text has no spaces, so each CJK
/// character is a separator for English words (`export视频` holds the word `export`).
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() && (c as u32) < 0x2E80
}

fn words(text: &str) -> impl Iterator<Item = Word<'_>> + '_ {
    let mut chars = text.char_indices().peekable();
    std::iter::from_fn(move || {
        while let Some(&(_, c)) = chars.peek() {
            if is_word_char(c) {
                break;
            }
            chars.next();
        }
        let (start, _) = *chars.peek()?;
        let mut end = start;
        while let Some(&(index, c)) = chars.peek() {
            if !is_word_char(c) {
                break;
            }
            end = index + c.len_utf8();
            chars.next();
        }
        Some(Word {
            start,
            end,
            text: &text[start..end],
        })
    })
}

fn contains_phrase(words: &[&str], phrase: &str) -> bool {
    let phrase: Vec<&str> = phrase.split(' ').collect();
    words.windows(phrase.len()).any(|window| window == phrase)
}

const QUOTE_PAIRS: &[(char, char)] = &[
    ('"', '"'),
    ('“', '”'),
    ('‘', '’'),
    ('「', '」'),
    ('『', '』'),
    ('《', '》'),
    ('\'', '\''),
];

/// The text with every quoted span (quotes included) replaced by a space. An opening quote
/// without its closing quote is kept as text.
fn strip_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut previous: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        let after = &rest[c.len_utf8()..];
        if let Some(&(_, close)) = QUOTE_PAIRS.iter().find(|(open, _)| *open == c) {
            let opens = c != '\'' || !previous.is_some_and(is_word_char);
            if let Some(end) = opens.then(|| closing_quote(after, close)).flatten() {
                out.push(' ');
                rest = &after[end + close.len_utf8()..];
                previous = Some(' ');
                continue;
            }
        }
        out.push(c);
        previous = Some(c);
        rest = after;
    }
    out
}

/// Where `close` ends the quote in `text`; a straight `'` only closes at a word's end.
fn closing_quote(text: &str, close: char) -> Option<usize> {
    text.char_indices()
        .filter(|&(_, c)| c == close)
        .map(|(index, _)| index)
        .find(|&index| close != '\'' || !text[index + 1..].chars().next().is_some_and(is_word_char))
}

// ---------------------------------------------------------------------------------------------
// GUI-speak: English
// ---------------------------------------------------------------------------------------------

const CLICK_VERBS: &[&str] = &["click", "clicking", "tap", "press"];
const CLICK_NOUNS: &[&str] = &[
    "button", "icon", "tab", "option", "link", "toggle", "checkbox", "switch",
];
const PANEL_NOUNS: &[&str] = &[
    "panel",
    "tab",
    "menu",
    "window",
    "sidebar",
    "dialog",
    "library",
    "settings",
    "editor",
    "inspector",
    "section",
    "view",
    "page",
    "pane",
    "drawer",
    "toolbar",
];
/// Editor areas `open` may name without a noun or capital letter (`open the timeline`).
const EDITOR_AREAS: &[&str] = &[
    "timeline",
    "settings",
    "library",
    "inspector",
    "properties",
    "effects",
    "media",
    "layers",
    "tracks",
    "assets",
    "templates",
    "transitions",
    "filters",
    "editor",
    "export",
];
const DRAG_WORDS: &[&str] = &["drag", "drags", "dragging", "dragged"];
/// `drop` counts only before one of these, so that `drop shadow` is not a GUI instruction.
const DROP_OBJECTS: &[&str] = &[
    "it", "them", "the", "your", "this", "that", "onto", "into", "here", "file", "files", "clip",
    "clips",
];
/// Words skipped between a verb and the name it points at.
const FILLERS: &[&str] = &["on", "the", "up", "your", "a"];

fn scan_english(reply: &str, found: &mut Vec<(usize, GuiAction)>) {
    let all: Vec<Word<'_>> = words(reply).collect();
    for (index, word) in all.iter().enumerate() {
        let is = |list: &[&str]| list.iter().any(|w| w.eq_ignore_ascii_case(word.text));
        let next = |offset: usize| all.get(index + offset).map(|w| w.text);
        if is(CLICK_VERBS) {
            let target = capture_name(reply, word.end, CLICK_NOUNS, &[]);
            let action = match target {
                Some(name) if is_export_name(&name) => GuiAction::Export,
                target => GuiAction::Execute {
                    target: target.unwrap_or_default(),
                },
            };
            found.push((word.start, action));
        } else if word.text.eq_ignore_ascii_case("open") {
            if let Some(panel) = capture_name(reply, word.end, PANEL_NOUNS, EDITOR_AREAS) {
                let action = if is_export_name(&panel) {
                    GuiAction::Export
                } else {
                    GuiAction::ReadState { panel }
                };
                found.push((word.start, action));
            }
        } else if is(DRAG_WORDS)
            || (word.text.eq_ignore_ascii_case("drop")
                && next(1).is_some_and(|w| DROP_OBJECTS.iter().any(|o| o.eq_ignore_ascii_case(w))))
        {
            found.push((word.start, GuiAction::SendEdit));
        } else if word.text.eq_ignore_ascii_case("preview")
            || word.text.eq_ignore_ascii_case("previewing")
        {
            if (1..=4)
                .any(|offset| next(offset).is_some_and(|w| w.eq_ignore_ascii_case("timeline")))
            {
                found.push((word.start, GuiAction::ShowSummary));
            }
        } else if word.text.eq_ignore_ascii_case("timeline") {
            if next(1).is_some_and(|w| w.eq_ignore_ascii_case("preview")) {
                found.push((word.start, GuiAction::ShowSummary));
            }
        } else if word.text.eq_ignore_ascii_case("export")
            && next(1).is_some_and(|w| w.eq_ignore_ascii_case("button"))
        {
            found.push((word.start, GuiAction::Export));
        }
    }
}

const NAME_QUOTES: &[(&str, &str)] = &[
    ("**", "**"),
    ("[", "]"),
    ("\"", "\""),
    ("“", "”"),
    ("'", "'"),
    ("‘", "’"),
    ("「", "」"),
    ("『", "』"),
    ("【", "】"),
    ("《", "》"),
    ("<", ">"),
    ("`", "`"),
];

/// The name a verb ending at `from` points at (see the module rules), or `None`.
fn capture_name(text: &str, from: usize, nouns: &[&str], areas: &[&str]) -> Option<String> {
    let mut rest = text.get(from..)?;
    // Skip up to three filler words: "click on the …", "open up the …".
    for _ in 0..3 {
        let trimmed = rest.trim_start();
        let filler = FILLERS.iter().find(|filler| {
            trimmed
                .get(..filler.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(filler))
                && trimmed[filler.len()..].starts_with(char::is_whitespace)
        });
        match filler {
            Some(filler) => rest = &trimmed[filler.len()..],
            None => break,
        }
    }
    let rest = rest.trim_start();

    if let Some(name) = quoted_name(rest) {
        return Some(name);
    }

    // Whitespace-separated words up to the first punctuation mark.
    let mut run: Vec<Word<'_>> = Vec::new();
    for word in words(rest).take(5) {
        let gap_start = run.last().map_or(0, |last: &Word<'_>| last.end);
        if !rest[gap_start..word.start].chars().all(char::is_whitespace) {
            break;
        }
        run.push(word);
    }
    if let Some(noun_at) = run.iter().skip(1).position(|word| {
        nouns
            .iter()
            .any(|noun| noun.eq_ignore_ascii_case(word.text))
    }) {
        let last = run[noun_at];
        return Some(rest[run[0].start..last.end].to_owned());
    }
    let capitalised = run
        .iter()
        .take(3)
        .take_while(|word| word.text.starts_with(|c: char| c.is_uppercase()))
        .last();
    if let Some(last) = capitalised {
        return Some(rest[run[0].start..last.end].to_owned());
    }
    run.first()
        .filter(|word| {
            areas
                .iter()
                .any(|area| area.eq_ignore_ascii_case(word.text))
        })
        .map(|word| word.text.to_owned())
}

/// A name in brackets or quotes at the start of `text` (at most 60 bytes, one line).
fn quoted_name(text: &str) -> Option<String> {
    let (open, close) = NAME_QUOTES
        .iter()
        .find(|(open, _)| text.starts_with(open))?;
    let inner = &text[open.len()..];
    let end = inner.find(close)?;
    let name = inner[..end]
        .trim()
        .trim_matches(|c| c == '*' || c == '`')
        .trim();
    (!name.is_empty() && name.len() <= 60 && !name.contains('\n')).then(|| name.to_owned())
}

fn is_export_name(name: &str) -> bool {
    name.contains("导出")
        || words(name)
            .next()
            .is_some_and(|word| word.text.eq_ignore_ascii_case("export"))
}

// ---------------------------------------------------------------------------------------------
// GUI-speak: Chinese
// ---------------------------------------------------------------------------------------------

const CLICK_VERBS_ZH: &[&str] = &["点击", "单击", "点一下"];
const CLICK_NOUNS_ZH: &[&str] = &["按钮", "图标", "选项", "标签"];
const PANEL_NOUNS_ZH: &[&str] = &["面板", "窗口", "菜单", "标签页", "设置", "页面", "栏"];
const DRAG_WORDS_ZH: &[&str] = &["拖拽", "拖动", "拖放", "拖到", "拖入"];
const TIMELINE_ZH: &[&str] = &["时间线", "时间轴"];
/// Characters that end a Chinese name: "点击应用即可" names `应用`.
const NAME_STOPS_ZH: &[char] = &[
    '即', '就', '来', '以', '后', '然', '并', '再', '和', '或', '查', '进',
];

fn scan_chinese(reply: &str, found: &mut Vec<(usize, GuiAction)>) {
    for verb in CLICK_VERBS_ZH {
        for (position, _) in reply.match_indices(verb) {
            let name = chinese_name(&reply[position + verb.len()..], CLICK_NOUNS_ZH);
            let action = match name {
                Some(name) if is_export_name(&name) => GuiAction::Export,
                name => GuiAction::Execute {
                    target: name.unwrap_or_default(),
                },
            };
            found.push((position, action));
        }
    }
    for (position, verb) in reply.match_indices("打开") {
        let name = chinese_name(&reply[position + verb.len()..], PANEL_NOUNS_ZH);
        let action = match name {
            Some(name) if is_export_name(&name) => GuiAction::Export,
            name => GuiAction::ReadState {
                panel: name.unwrap_or_default(),
            },
        };
        found.push((position, action));
    }
    for verb in DRAG_WORDS_ZH {
        found.extend(
            reply
                .match_indices(verb)
                .map(|(position, _)| (position, GuiAction::SendEdit)),
        );
    }
    for (position, _) in reply.match_indices("预览") {
        // "在时间线上预览" and "预览时间线": the timeline word within 6 characters either side.
        let window_start = floor_char_boundary(reply, position.saturating_sub(18));
        let window_end = floor_char_boundary(reply, (position + 6 + 18).min(reply.len()));
        let window = &reply[window_start..window_end];
        let timeline_at = TIMELINE_ZH
            .iter()
            .filter_map(|timeline| window.find(timeline))
            .min();
        if let Some(offset) = timeline_at {
            found.push((position.min(window_start + offset), GuiAction::ShowSummary));
        }
    }
    found.extend(
        reply
            .match_indices("导出")
            .map(|(position, _)| (position, GuiAction::Export)),
    );
}

/// The name after a Chinese verb: quoted, ASCII words (`点击 Apply 按钮`), or a run of CJK
/// characters cut before a GUI noun (the noun itself when it is the whole name, as in
/// `打开设置`) and after the last `的`.
fn chinese_name(text: &str, nouns: &[&str]) -> Option<String> {
    let text = text.trim_start();
    if let Some(name) = quoted_name(text) {
        return Some(name);
    }
    if text.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        let end = text
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == ' '))
            .unwrap_or(text.len());
        let name = text[..end].trim();
        return (!name.is_empty()).then(|| name.to_owned());
    }
    let run_end = text
        .char_indices()
        .take(12)
        .find(|&(_, c)| !is_cjk_ideograph(c) || NAME_STOPS_ZH.contains(&c))
        .map_or_else(
            || text.char_indices().nth(12).map_or(text.len(), |(i, _)| i),
            |(i, _)| i,
        );
    let mut name = &text[..run_end];
    if let Some((noun_at, noun)) = nouns
        .iter()
        .filter_map(|noun| name.find(noun).map(|at| (at, noun)))
        .min()
    {
        name = if noun_at == 0 {
            &name[..noun.len()]
        } else {
            &name[..noun_at]
        };
    }
    if let Some(de) = name.rfind('的') {
        name = &name[de + '的'.len_utf8()..];
    }
    (!name.is_empty()).then(|| name.to_owned())
}

fn is_cjk_ideograph(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F)
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

#[cfg(test)]
mod doc_tests {
    use super::{EDIT_VERBS, EDIT_VERBS_ZH};

    /// The module docs list the edit verbs (they are not public items): every verb is there.
    #[test]
    fn the_module_rules_list_every_edit_verb() {
        let source = include_str!("intent.rs");
        let rules = &source[..source.find("\n#[derive").expect("the module docs end")];
        for verb in EDIT_VERBS {
            assert!(
                rules.contains(&format!("`{verb}`")),
                "{verb} is not in the module rules"
            );
        }
        for verb in EDIT_VERBS_ZH {
            assert!(rules.contains(verb), "{verb} is not in the module rules");
        }
    }
}
