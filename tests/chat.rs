//! The `chat` example does only what the user typed: `help` prints what can be typed and sends
//! nothing, and the agent's reply never starts an export or an upload by itself (it tells the
//! user what to type instead). Each run is the example as its own process against a simulator
//! in this test, with its input on stdin; the simulator's counters show what was asked of it.

mod support;

use std::path::Path;

use nemo_video::simulator::{Endpoint, Simulator};
use support::examples::{example, names_in, run, texts};
use support::tempdir;

/// A runtime whose worker serves the simulator while this thread runs the example.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs chat against `sim` from `cwd`, with `input` as everything the user types; returns its
/// stdout after checking that it ended normally at the end of the input.
fn chat(sim: &Simulator, cwd: &Path, input: &str) -> String {
    let config = tempdir();
    let output = run(
        example("chat", cwd, config.path()).env("NEMO_API_BASE", sim.base_url()),
        input,
    );
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.ends_with("> Bye.\n"), "{stdout}");
    stdout
}

/// The requests that cost or change something: messages to the agent, uploads, renders.
fn work_asked(sim: &Simulator) -> [(Endpoint, usize); 4] {
    [
        Endpoint::RunSse,
        Endpoint::Upload,
        Endpoint::RenderSubmit,
        Endpoint::RenderStatus,
    ]
    .map(|endpoint| (endpoint, sim.request_count(endpoint)))
}

#[test]
fn help_prints_what_to_type_and_sends_nothing() {
    let runtime = runtime();
    let sim = runtime.block_on(async { Simulator::builder().fast().start().await.unwrap() });
    let cwd = tempdir();
    let stdout = chat(&sim, cwd.path(), "help\n?\n/help\n帮助\n  HELP  \n");

    let help = "You can type:\n\
                \x20 upload PATH    add a video, image or audio file to the project\n\
                \x20 status         show the project's timeline (free)\n\
                \x20 credits        show your credit balance (free)\n\
                \x20 export         render the video and save it as chat_export_<n>.mp4 in the output folder\n\
                \x20 help           show this help (also ?, /help, 帮助)\n\
                \x20 anything else  an edit in plain words, sent to the agent (it costs credits), such as\n\
                \x20                \"remove the background person\"\n\
                End with Ctrl-D.\n";
    assert_eq!(stdout.matches(help).count(), 5, "{stdout}");
    assert!(
        stdout.contains("or \"help\" for what else you can type; Ctrl-D to quit."),
        "the first prompt says how to get help:\n{stdout}"
    );

    // Only the conversation's set-up reached the service: no message, no upload, no render.
    assert_eq!(
        work_asked(&sim),
        [
            (Endpoint::RunSse, 0),
            (Endpoint::Upload, 0),
            (Endpoint::RenderSubmit, 0),
            (Endpoint::RenderStatus, 0),
        ]
    );
    let counters = sim.counters();
    assert_eq!(counters.by_endpoint.get(&Endpoint::CreateSession), Some(&1));
    for (client_id, client) in &counters.clients {
        assert_eq!(
            (client.messages, client.uploads, client.renders),
            (0, 0, 0),
            "{client_id}"
        );
    }
    assert!(names_in(cwd.path()).is_empty(), "nothing written");
    drop(sim);
}

#[test]
fn a_reply_that_mentions_the_export_or_upload_button_starts_neither() {
    let runtime = runtime();
    let sim = runtime.block_on(async { Simulator::builder().fast().start().await.unwrap() });
    let cwd = tempdir();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("assets")
            .join("sample_input.mp4"),
        cwd.path().join("clip.mp4"),
    )
    .unwrap();
    // Before the upload the agent says to click the Upload button; after it, to preview in
    // the timeline and click the Export button.
    let stdout = chat(
        &sim,
        cwd.path(),
        "remove the background person\nupload clip.mp4\nremove the background person\n",
    );

    assert!(
        stdout.contains(
            "> I don't see a video in this project yet. To move or rearrange something, \
             describe the change in a message. To add a file, upload it.\n\
             Type \"upload PATH\" to add a file.\n> "
        ),
        "{stdout}"
    );
    // Chat reads the state (free) and shows its summary, so the words say it is shown; it
    // does not export, so they say how to ask for it.
    let edited = stdout
        .split("\n> ")
        .find(|answer| answer.starts_with("Done! I removed the background person"))
        .unwrap_or_else(|| panic!("no answer to the edit:\n{stdout}"));
    let lines: Vec<&str> = edited.lines().collect();
    assert_eq!(lines.len(), 3, "{edited}");
    assert!(
        lines[0]
            .ends_with("The timeline summary is shown below. To get the video, ask for an export."),
        "{edited}"
    );
    assert!(lines[1].starts_with("Timeline ("), "{edited}");
    assert_eq!(lines[2], "Type \"export\" to render and save the video.");
    for claim in ["done for you", "exported through", "Exporting", "Saved"] {
        assert!(!stdout.contains(claim), "{claim:?} in:\n{stdout}");
    }

    assert_eq!(
        work_asked(&sim),
        [
            (Endpoint::RunSse, 2),
            (Endpoint::Upload, 1),
            (Endpoint::RenderSubmit, 0),
            (Endpoint::RenderStatus, 0),
        ],
        "two messages and the one upload typed; no render"
    );
    assert_eq!(names_in(cwd.path()), ["clip.mp4"], "no export saved");
    drop(sim);
}
