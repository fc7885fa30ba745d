//! Routing user messages and translating the agent's GUI-speak.

use nemo_video::intent::{
    gui_actions, route, translate_reply, translate_reply_with, GuiAction, Intent, TranslateOptions,
};

#[test]
fn route_follows_the_table_in_both_languages() {
    let cases: &[(&str, Intent)] = &[
        // Export
        ("export", Intent::Export),
        ("Export it please", Intent::Export),
        ("EXPORT!", Intent::Export),
        ("can you export the video?", Intent::Export),
        ("download", Intent::Export),
        ("I want to download the final video", Intent::Export),
        ("send me the video", Intent::Export),
        ("Please send me the video when it's done", Intent::Export),
        ("导出", Intent::Export),
        ("帮我导出视频", Intent::Export),
        ("export视频", Intent::Export),
        // Credits
        ("credits", Intent::Credits),
        ("How many credits do I have left?", Intent::Credits),
        ("what's my balance", Intent::Credits),
        ("积分", Intent::Credits),
        ("我还有多少积分？", Intent::Credits),
        ("查询余额", Intent::Credits),
        // Status
        ("status", Intent::Status),
        ("What's the status?", Intent::Status),
        ("show tracks", Intent::Status),
        ("Show tracks please", Intent::Status),
        ("状态", Intent::Status),
        ("项目状态怎么样", Intent::Status),
        // Upload
        ("upload", Intent::Upload),
        ("How do I upload a clip?", Intent::Upload),
        ("re-upload the file", Intent::Upload),
        ("上传", Intent::Upload),
        ("我要上传视频", Intent::Upload),
        // Edit
        (
            "remove the background person and replace it with a solid color",
            Intent::Edit,
        ),
        ("make it look better", Intent::Edit),
        ("add lo-fi BGM at 35%", Intent::Edit),
        ("把背景里的人去掉", Intent::Edit),
        ("", Intent::Edit),
        ("hello", Intent::Edit),
    ];
    for (text, expected) in cases {
        assert_eq!(route(text), *expected, "route({text:?})");
    }
}

#[test]
fn route_matches_whole_words_only() {
    let cases: &[(&str, Intent)] = &[
        ("is it exported yet", Intent::Edit),
        ("exporting takes long?", Intent::Edit),
        ("reupload", Intent::Edit),
        ("downloads", Intent::Edit),
        ("statuses", Intent::Edit),
        ("show me the tracks", Intent::Edit),
        ("tracks show", Intent::Edit),
        ("send me the final video", Intent::Edit),
    ];
    for (text, expected) in cases {
        assert_eq!(route(text), *expected, "route({text:?})");
    }
}

#[test]
fn route_ignores_quoted_text() {
    let cases: &[(&str, Intent)] = &[
        ("add a title that says \"export\"", Intent::Edit),
        ("a title saying 'download now'", Intent::Edit),
        ("title: “Upload your story”", Intent::Edit),
        ("标题写「导出」", Intent::Edit),
        ("字幕《上传》", Intent::Edit),
        // An apostrophe is not a quote; an unclosed quote is kept as text.
        ("don't forget to export", Intent::Export),
        ("export \"final", Intent::Export),
        ("'export' is what I want: export", Intent::Export),
    ];
    for (text, expected) in cases {
        assert_eq!(route(text), *expected, "route({text:?})");
    }
}

#[test]
fn route_sends_edits_that_mention_keywords_to_the_agent() {
    let cases: &[(&str, Intent)] = &[
        ("add a title that says export", Intent::Edit),
        ("make the download speed text bigger", Intent::Edit),
        ("remove the person and then export", Intent::Edit),
        ("add end credits", Intent::Edit),
        ("change the status bar color", Intent::Edit),
        ("添加一个写着导出的标题", Intent::Edit),
        ("删除状态栏", Intent::Edit),
    ];
    for (text, expected) in cases {
        assert_eq!(route(text), *expected, "route({text:?})");
    }
}

#[test]
fn route_uses_table_order_when_several_rows_match() {
    assert_eq!(route("export and show my credits"), Intent::Export);
    assert_eq!(route("credits status"), Intent::Credits);
    assert_eq!(route("status of my upload"), Intent::Status);
    assert_eq!(route("上传后导出"), Intent::Export);
}

#[test]
fn skips_agent_matches_the_table() {
    for intent in [
        Intent::Export,
        Intent::Credits,
        Intent::Status,
        Intent::Upload,
    ] {
        assert!(intent.skips_agent(), "{intent:?}");
    }
    assert!(!Intent::Edit.skips_agent());
}

fn execute(target: &str) -> GuiAction {
    GuiAction::Execute {
        target: target.to_owned(),
    }
}

fn read_state(panel: &str) -> GuiAction {
    GuiAction::ReadState {
        panel: panel.to_owned(),
    }
}

#[test]
fn gui_actions_english() {
    let cases: Vec<(&str, Vec<GuiAction>)> = vec![
        ("Click [Apply] to confirm.", vec![execute("Apply")]),
        ("click the \"Apply\" button", vec![execute("Apply")]),
        ("Click on the Add Music button.", vec![execute("Add Music")]),
        ("Then click Apply to save.", vec![execute("Apply")]),
        ("Click **Generate** when ready", vec![execute("Generate")]),
        (
            "tap the 'Remove Object' option",
            vec![execute("Remove Object")],
        ),
        ("Click here to continue.", vec![execute("")]),
        ("Open the Effects panel", vec![read_state("Effects")]),
        ("open [Media Library]", vec![read_state("Media Library")]),
        (
            "Open the timeline to check it.",
            vec![read_state("timeline")],
        ),
        ("Open Settings.", vec![read_state("Settings")]),
        ("Drag the clip onto track 2.", vec![GuiAction::SendEdit]),
        ("Drag and drop your logo here.", vec![GuiAction::SendEdit]),
        ("drop it onto the timeline", vec![GuiAction::SendEdit]),
        (
            "Preview in timeline to see the result",
            vec![GuiAction::ShowSummary],
        ),
        (
            "You can preview it in the timeline.",
            vec![GuiAction::ShowSummary],
        ),
        ("Check the timeline preview.", vec![GuiAction::ShowSummary]),
        ("Press the Export button.", vec![GuiAction::Export]),
        (
            "Use the Export button at the top right.",
            vec![GuiAction::Export],
        ),
        ("click [Export]", vec![GuiAction::Export]),
        ("click Export Video", vec![GuiAction::Export]),
        ("Open the Export panel", vec![GuiAction::Export]),
    ];
    for (reply, expected) in cases {
        assert_eq!(gui_actions(reply), expected, "gui_actions({reply:?})");
    }
}

#[test]
fn gui_actions_chinese() {
    let cases: Vec<(&str, Vec<GuiAction>)> = vec![
        ("点击「应用」", vec![execute("应用")]),
        ("请点击应用按钮", vec![execute("应用")]),
        ("点击【确定】即可", vec![execute("确定")]),
        ("单击确定即可", vec![execute("确定")]),
        ("点击 Apply 按钮", vec![execute("Apply")]),
        ("打开时间线面板", vec![read_state("时间线")]),
        ("打开设置", vec![read_state("设置")]),
        ("打开素材库，然后选择视频", vec![read_state("素材库")]),
        ("将片段拖拽到第二条轨道", vec![GuiAction::SendEdit]),
        ("把音乐拖动到时间线上", vec![GuiAction::SendEdit]),
        ("在时间线上预览效果", vec![GuiAction::ShowSummary]),
        ("预览时间轴", vec![GuiAction::ShowSummary]),
        ("导出", vec![GuiAction::Export]),
        ("点击右上角的导出按钮", vec![GuiAction::Export]),
        ("完成后点击导出即可", vec![GuiAction::Export]),
    ];
    for (reply, expected) in cases {
        assert_eq!(gui_actions(reply), expected, "gui_actions({reply:?})");
    }
}

#[test]
fn gui_actions_keep_order_of_appearance_without_duplicates() {
    let reply = "First open the Effects panel, click [Apply], drag the title to 0:02, \
                 click [Apply] again, preview in timeline, then press the Export button. \
                 Remember: the Export button renders in the cloud.";
    assert_eq!(
        gui_actions(reply),
        [
            read_state("Effects"),
            execute("Apply"),
            GuiAction::SendEdit,
            GuiAction::ShowSummary,
            GuiAction::Export,
        ]
    );

    let reply = "先打开时间线面板，拖拽片段，然后点击「应用」，最后点击导出按钮导出。";
    assert_eq!(
        gui_actions(reply),
        [
            read_state("时间线"),
            GuiAction::SendEdit,
            execute("应用"),
            GuiAction::Export,
        ]
    );

    // Different buttons are different actions.
    assert_eq!(
        gui_actions("click [Apply], then click [Save]"),
        [execute("Apply"), execute("Save")]
    );
}

#[test]
fn gui_actions_ignore_text_without_gui_instructions() {
    for reply in [
        "",
        "I removed the background person and replaced it with a solid color.",
        "The render is queued; it takes 30-90 seconds.",
        "This is an open question: do you want music?",
        "I added a drop shadow to the title.",
        "Here is a preview of the plan.",
        "Your video was exported successfully.",
        "我已经把背景里的人去掉了。",
    ] {
        assert_eq!(gui_actions(reply), [], "gui_actions({reply:?})");
    }
}

proptest::proptest! {
    #[test]
    fn arbitrary_text_never_panics_and_actions_are_distinct(text in "\\PC{0,80}") {
        let _ = route(&text);
        let actions = gui_actions(&text);
        for (index, action) in actions.iter().enumerate() {
            proptest::prop_assert!(!actions[index + 1..].contains(action));
        }
    }

    #[test]
    fn mixed_gui_words_never_panic(
        words in proptest::collection::vec(
            proptest::sample::select(vec![
                "click", "open", "the", "[", "]", "\"", "'", "「", "」", "点击", "打开", "导出",
                "按钮", "的", "预览", "时间线", "Export", "button", "drag", "drop", "it", "panel",
                "preview", "timeline", "**", "Apply", " ", "，", "\n", "é", "上",
            ]),
            0..24,
        )
    ) {
        let text: String = words.concat();
        let _ = route(&text);
        let _ = gui_actions(&text);
        let spaced = words.join(" ");
        let _ = route(&spaced);
        let _ = gui_actions(&spaced);
        // None of these words claims anything, so no translation of them may either.
        assert_claims_nothing(&translate_reply(&text).text, &text);
        assert_claims_nothing(&translate_reply(&spaced).text, &spaced);
    }
}

// ---------------------------------------------------------------------------------------------
// translate_reply: what the user can do instead of each GUI instruction, in English and
// Chinese; what the program does only where its TranslateOptions say so
// ---------------------------------------------------------------------------------------------

/// Words that say the program did, does or will do something: none of them may appear in a
/// translation with the default options, which know nothing of the program.
const CLAIMS: &[&str] = &[
    "done for you",
    "is done",
    "through the api",
    "is exported",
    "will be exported",
    "exported next",
    "shown below",
    "is shown",
    "uploaded",
    "自动完成",
    "通过 api",
    "见下方",
    "已导出",
    "已上传",
];

fn assert_claims_nothing(text: &str, reply: &str) {
    let lower = text.to_lowercase();
    for claim in CLAIMS {
        assert!(
            !lower.contains(claim),
            "translate_reply({reply:?}) = {text:?} claims {claim:?}"
        );
    }
}

#[test]
fn translate_reply_says_what_the_user_can_do_in_english() {
    let cases: &[(&str, &str)] = &[
        // The reported bug: nothing was uploaded, yet the words said it was done.
        (
            "Click the Upload button to add your clip.",
            "To add a file, upload it.",
        ),
        (
            "I don't see a video yet. Click [Import Media] first.",
            "I don't see a video yet. To add a file, upload it.",
        ),
        // click [button] → say it in a message
        (
            "I trimmed the clip. Click [Apply] to keep it.",
            "I trimmed the clip. Instead of clicking \"Apply\", say in a message what you want.",
        ),
        (
            "Press the button when you're ready.",
            "Instead of clicking, say in a message what you want.",
        ),
        // open [panel] → ask for the status
        (
            "Open the Effects panel to see the blur.",
            "To see the project's current state, ask for its status.",
        ),
        // drag/drop → describe the change
        (
            "Drag the title to the end of the timeline.",
            "To move or rearrange something, describe the change in a message.",
        ),
        // preview in timeline → ask for the status
        (
            "Done! Preview it in the timeline.",
            "Done! To see the timeline, ask for the project's status.",
        ),
        // Export button → ask for an export
        (
            "All set. Hit the Export button to download your video!",
            "All set. To get the video, ask for an export.",
        ),
    ];
    for (reply, expected) in cases {
        let translated = translate_reply(reply);
        assert_eq!(translated.text, *expected, "for {reply:?}");
        assert_claims_nothing(&translated.text, reply);
    }
}

#[test]
fn translate_reply_says_what_the_user_can_do_in_chinese() {
    let cases: &[(&str, &str)] = &[
        ("请点击上传按钮添加视频。", "如需添加素材，请上传文件。"),
        ("点击「导入」添加素材。", "如需添加素材，请上传文件。"),
        (
            "已裁剪片段。点击「应用」保存。",
            "已裁剪片段。无需点击「应用」，请直接用文字说明想要做什么。",
        ),
        (
            "确认无误后点一下即可。",
            "无需点击，请直接用文字说明想要做什么。",
        ),
        (
            "打开特效面板查看模糊效果。",
            "如需查看项目的当前状态，请查询状态。",
        ),
        (
            "把标题拖拽到时间线末尾。",
            "如需移动或调整内容，请直接用文字描述修改。",
        ),
        (
            "完成！请在时间线上预览。",
            "完成！如需查看时间线，请查询项目状态。",
        ),
        (
            "一切就绪！点击导出按钮下载视频。",
            "一切就绪！如需获取视频，请要求导出。",
        ),
    ];
    for (reply, expected) in cases {
        let translated = translate_reply(reply);
        assert_eq!(translated.text, *expected, "for {reply:?}");
        assert_claims_nothing(&translated.text, reply);
    }
}

#[test]
fn translate_reply_is_translate_reply_with_the_default_options() {
    for reply in [
        "Click the Upload button, open the Effects panel, drag the clip, preview it in the \
         timeline, then press the Export button.",
        "点击上传按钮，打开特效面板，拖拽片段，在时间线上预览，然后点击导出按钮。",
        "Nothing to translate here.",
    ] {
        assert_eq!(
            translate_reply(reply),
            translate_reply_with(reply, &TranslateOptions::default()),
            "for {reply:?}"
        );
    }
}

/// One sentence per action, so that each phrase can be checked on its own.
const EVERY_ACTION: &str = "Click the Upload button. Click [Apply]. Open the Effects panel. \
                            Drag the clip. Preview it in the timeline. Press the Export button.";
const EVERY_ACTION_ZH: &str =
    "点击上传按钮。点击「应用」。打开特效面板。拖拽片段。在时间线上预览。点击导出按钮。";

/// The translation of [`EVERY_ACTION`] (or its Chinese twin) with `options`, as one phrase
/// per action: upload, click, state, drag, summary, export.
fn phrases(options: &TranslateOptions, chinese: bool) -> Vec<String> {
    if chinese {
        let text = translate_reply_with(EVERY_ACTION_ZH, options).text;
        text.split_inclusive('。').map(str::to_owned).collect()
    } else {
        let text = translate_reply_with(EVERY_ACTION, options).text;
        let phrases: Vec<String> = text.split(". ").map(str::to_owned).collect();
        phrases
            .iter()
            .map(|phrase| phrase.trim_end_matches('.').to_owned() + ".")
            .collect()
    }
}

#[test]
fn each_option_changes_exactly_the_phrase_of_its_action() {
    let neutral = phrases(&TranslateOptions::default(), false);
    assert_eq!(
        neutral,
        [
            "To add a file, upload it.",
            "Instead of clicking \"Apply\", say in a message what you want.",
            "To see the project's current state, ask for its status.",
            "To move or rearrange something, describe the change in a message.",
            "To see the timeline, ask for the project's status.",
            "To get the video, ask for an export.",
        ]
    );
    let cases: Vec<(TranslateOptions, usize, &str)> = vec![
        (
            TranslateOptions::default().shows_state(true),
            2,
            "The project's current state is shown below.",
        ),
        (
            TranslateOptions::default().shows_summary(true),
            4,
            "The timeline summary is shown below.",
        ),
        (
            TranslateOptions::default().exports(true),
            5,
            "The video is exported through the API.",
        ),
    ];
    let mut all = neutral.clone();
    for (options, index, phrase) in &cases {
        let mut expected = neutral.clone();
        expected[*index] = phrase.to_string();
        assert_eq!(phrases(options, false), expected, "{options:?}");
        all[*index] = phrase.to_string();
    }
    let every_flag = TranslateOptions::default()
        .shows_state(true)
        .shows_summary(true)
        .exports(true);
    assert_eq!(phrases(&every_flag, false), all);
    // A flag set and then cleared is the default again.
    let cleared = every_flag
        .shows_state(false)
        .shows_summary(false)
        .exports(false);
    assert_eq!(phrases(&cleared, false), neutral);
}

#[test]
fn each_option_changes_exactly_the_phrase_of_its_action_in_chinese() {
    let neutral = phrases(&TranslateOptions::default(), true);
    assert_eq!(
        neutral,
        [
            "如需添加素材，请上传文件。",
            "无需点击「应用」，请直接用文字说明想要做什么。",
            "如需查看项目的当前状态，请查询状态。",
            "如需移动或调整内容，请直接用文字描述修改。",
            "如需查看时间线，请查询项目状态。",
            "如需获取视频，请要求导出。",
        ]
    );
    let cases: Vec<(TranslateOptions, usize, &str)> = vec![
        (
            TranslateOptions::default().shows_state(true),
            2,
            "项目的当前状态见下方。",
        ),
        (
            TranslateOptions::default().shows_summary(true),
            4,
            "时间线摘要见下方。",
        ),
        (
            TranslateOptions::default().exports(true),
            5,
            "视频会通过 API 导出。",
        ),
    ];
    for (options, index, phrase) in &cases {
        let mut expected = neutral.clone();
        expected[*index] = phrase.to_string();
        assert_eq!(phrases(options, true), expected, "{options:?}");
    }
}

#[test]
fn no_option_makes_a_button_click_a_claim() {
    // Clicking a button is never the program's to do: no flag turns it into "done".
    let every_flag = TranslateOptions::default()
        .shows_state(true)
        .shows_summary(true)
        .exports(true);
    for reply in [
        "Click the Upload button.",
        "Click [Apply].",
        "点击上传按钮。",
        "点击「应用」。",
    ] {
        assert_claims_nothing(&translate_reply_with(reply, &every_flag).text, reply);
    }
}

#[test]
fn translate_reply_keeps_other_sentences_and_says_each_action_once() {
    // The simulator's reply, as `remove_object` shows it (that program does show the summary
    // and export, and says so).
    let reply = "Done! I removed the background person and replaced it with a solid color box \
                 (#1E90FF). Preview it in the timeline, then click the Export button to \
                 download your video.";
    let shows_and_exports = TranslateOptions::default()
        .shows_summary(true)
        .exports(true);
    let translated = translate_reply_with(reply, &shows_and_exports);
    assert_eq!(
        translated.text,
        "Done! I removed the background person and replaced it with a solid color box \
         (#1E90FF). The timeline summary is shown below. The video is exported through the API."
    );
    assert_eq!(translated.actions, gui_actions(reply));
    assert_eq!(
        translated.actions,
        [GuiAction::ShowSummary, GuiAction::Export]
    );
    // The same reply for a program that does neither.
    assert_eq!(
        translate_reply(reply).text,
        "Done! I removed the background person and replaced it with a solid color box \
         (#1E90FF). To see the timeline, ask for the project's status. To get the video, ask \
         for an export."
    );

    // A second mention of the same action is left out; line breaks and numbers survive.
    let reply = "Volume set to 0.35.\nClick Export when ready.\nOr press the Export button.\nBye";
    assert_eq!(
        translate_reply(reply).text,
        "Volume set to 0.35.\nTo get the video, ask for an export.\nBye"
    );

    // A rewritten clause after `;` becomes its own sentence.
    assert_eq!(
        translate_reply(
            "I added a Lo-fi background track at 35% volume; open the Audio panel to change it."
        )
        .text,
        "I added a Lo-fi background track at 35% volume. To see the project's current state, \
         ask for its status."
    );
    assert_eq!(
        translate_reply("已添加背景音乐；打开音频面板可以调整。").text,
        "已添加背景音乐。如需查看项目的当前状态，请查询状态。"
    );

    // Mixed languages: each sentence in its own.
    let reply = "Click [Apply]. 然后点击导出。";
    assert_eq!(
        translate_reply(reply).text,
        "Instead of clicking \"Apply\", say in a message what you want. 如需获取视频，请要求导出。"
    );

    // Nothing to translate: the text comes back unchanged, whitespace included.
    for reply in [
        "",
        "I removed the logo.",
        "  Done.\n",
        "Set the volume to 35%; done.",
    ] {
        let translated = translate_reply(reply);
        assert_eq!(translated.text, reply);
        assert!(translated.actions.is_empty());
    }
}
