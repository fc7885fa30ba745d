//! A durable edit job: upload a clip, ask the agent for an edit, render, download — saved
//! after every step and resumable by a new client in a new process, without paying twice.
//!
//! Policy:
//! - [`EditJob`] is `Serialize + Deserialize`. [`EditJob::run`] calls your `save` callback
//!   after every change, **before** the next request leaves, so the saved job always says
//!   what may have reached the service. [`JobFile`] is the ready-made `save`: a JSON file
//!   replaced atomically.
//! - A step that may have reached the service is reconciled, never blindly re-sent:
//!   - the upload, through the session state's `video_infos` (the file is there, or it is
//!     uploaded again);
//!   - the edit message, through the state saved just before it was sent: the job reads the
//!     state until the timeline differs from it (the edit landed; the agent may still have
//!     been working when the process died), and sends the message again only once the
//!     longest a turn can take (the stream's total limit, 15 minutes by default) has passed
//!     since it was sent without any change;
//!   - the render, through its id, chosen and saved before it is submitted: the job waits for
//!     it, or submits it again with the same id if the service never got it.
//! - A session is created at most once per saved job (creating one is free; a crash between
//!   the request and the save leaves an empty session behind, nothing more).
//! - The download lands whole or not at all (see [`crate::render`]); an interrupted download
//!   is simply done again.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::NemoClient;
use crate::error::{Error, Result};
use crate::render::{DownloadProgress, RenderJob, RenderOptions, WaitOptions};
use crate::session::Session;
use crate::state::SessionState;
use crate::turn::{TurnEnd, TurnOptions};
use crate::upload::{ProgressFn, UploadProgress};

/// Where a job is: the last step whose outcome is known (or that may have reached the
/// service, for the `*Sent` stages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Stage {
    /// Nothing sent yet.
    New,
    /// The session exists.
    SessionCreated,
    /// The upload was sent and may have reached the service.
    UploadSent,
    /// The clip is on the session.
    Uploaded,
    /// The edit message was sent and may have reached the service.
    MessageSent,
    /// The edit landed (or the agent answered without editing).
    Edited,
    /// The render job was created and saved, and may have been submitted.
    RenderSubmitted,
    /// The render finished.
    Rendered,
    /// The output file is saved.
    Done,
}

impl Stage {
    /// What is already done, for a person: "upload and edit already done".
    pub fn done_so_far(self) -> &'static str {
        match self {
            Stage::New => "nothing done yet",
            Stage::SessionCreated | Stage::UploadSent => "session already open",
            Stage::Uploaded | Stage::MessageSent => "upload already done",
            Stage::Edited | Stage::RenderSubmitted => "upload and edit already done",
            Stage::Rendered => "upload, edit and render already done",
            Stage::Done => "everything already done",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::New => "new",
            Stage::SessionCreated => "session created",
            Stage::UploadSent => "upload sent",
            Stage::Uploaded => "uploaded",
            Stage::MessageSent => "edit message sent",
            Stage::Edited => "edited",
            Stage::RenderSubmitted => "render submitted",
            Stage::Rendered => "rendered",
            Stage::Done => "done",
        })
    }
}

/// One clip, one instruction, one exported MP4: the whole job, resumable.
///
/// ```no_run
/// # async fn run() -> nemo_video::Result<()> {
/// use nemo_video::job::{EditJob, JobFile, JobOptions};
///
/// let client = nemo_video::NemoClient::from_env()?;
/// let file = JobFile::new("jobs/clip-remove-logo.json");
/// // A job saved by an earlier, interrupted run is resumed where it stopped.
/// let mut job = match file.load()? {
///     Some(job) => job,
///     None => EditJob::new("clip.mp4", "remove the logo in the corner", "clip_edited.mp4")?,
/// };
/// let outcome = job.run(&client, &JobOptions::default(), |job| file.save(job)).await?;
/// file.remove()?;
/// println!("saved {} ({} bytes)", outcome.output.display(), outcome.bytes);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EditJob {
    /// The clip to upload (absolute).
    pub input: PathBuf,
    /// Its size when the job was made, in bytes.
    pub input_size: u64,
    /// Its modification time when the job was made, seconds since the Unix epoch.
    pub input_modified: u64,
    /// The instruction for the agent.
    pub prompt: String,
    /// Where the MP4 goes (absolute).
    pub output: PathBuf,
    /// The agent's reply language, e.g. `en`.
    #[serde(default)]
    pub language: Option<String>,
    /// Render settings.
    #[serde(default)]
    pub render_options: RenderOptions,
    /// Where the job is.
    pub stage: Stage,
    /// The session, once created.
    #[serde(default)]
    pub session: Option<Session>,
    /// The state read just before the edit message was sent (to reconcile it).
    #[serde(default)]
    pub state_before_message: Option<SessionState>,
    /// When the edit message was sent, seconds since the Unix epoch.
    #[serde(default)]
    pub message_sent_at: Option<u64>,
    /// What the agent answered, or what changed.
    #[serde(default)]
    pub answer: Option<String>,
    /// The timeline summary after the edit.
    #[serde(default)]
    pub timeline: Option<String>,
    /// The render job, created (and saved) before it is submitted.
    #[serde(default)]
    pub render_job: Option<RenderJob>,
    /// The rendered MP4's URL, when the service gave one.
    #[serde(default)]
    pub output_url: Option<String>,
    /// Bytes saved at `output`, once done.
    #[serde(default)]
    pub output_bytes: Option<u64>,
}

/// Callback for download progress.
pub type DownloadProgressFn = Arc<dyn Fn(DownloadProgress) + Send + Sync>;

/// Callback for what the job does, step by step.
pub type JobEventFn = Arc<dyn Fn(&JobEvent<'_>) + Send + Sync>;

/// Something a running job reports, for display.
#[derive(Debug)]
#[non_exhaustive]
pub enum JobEvent<'a> {
    /// The session is open.
    SessionReady(&'a Session),
    /// The clip is being uploaded.
    Uploading {
        /// The clip.
        path: &'a Path,
        /// Its size in bytes.
        size: u64,
    },
    /// The clip is on the session.
    Uploaded,
    /// An upload sent before an interruption was found on the session.
    UploadFound,
    /// The instruction is being sent to the agent.
    Asking(&'a str),
    /// The edit message was sent before an interruption: the job is reading the timeline
    /// until it shows the edit, for at most this long more.
    CheckingEdit {
        /// How long the job may still wait for the edit to show before sending it again.
        at_most: std::time::Duration,
    },
    /// The agent's answer (its words, or what changed).
    Answer(&'a str),
    /// The timeline after the edit.
    Timeline(&'a str),
    /// The render was submitted (or found submitted) and is being waited for.
    Rendering(&'a RenderJob),
    /// The render finished.
    Rendered,
    /// The output is being downloaded.
    Downloading,
    /// The output is saved.
    Downloaded {
        /// Its size in bytes.
        bytes: u64,
    },
}

/// Settings and callbacks for [`EditJob::run`].
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct JobOptions {
    /// The agent turn (stream limits, live events, reconcile attempts).
    pub turn: TurnOptions,
    /// Waiting for the render (poll interval, longest wait, progress).
    pub wait: WaitOptions,
    /// Upload progress.
    pub on_upload: Option<ProgressFn>,
    /// Download progress.
    pub on_download: Option<DownloadProgressFn>,
    /// What the job does, step by step.
    pub on_event: Option<JobEventFn>,
}

impl fmt::Debug for JobOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobOptions")
            .field("turn", &self.turn)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl JobOptions {
    /// Sets the turn options.
    pub fn turn(mut self, turn: TurnOptions) -> Self {
        self.turn = turn;
        self
    }

    /// Sets the render wait options.
    pub fn wait(mut self, wait: WaitOptions) -> Self {
        self.wait = wait;
        self
    }

    /// Sets an upload progress callback.
    pub fn on_upload(mut self, callback: impl Fn(UploadProgress) + Send + Sync + 'static) -> Self {
        self.on_upload = Some(Arc::new(callback));
        self
    }

    /// Sets a download progress callback.
    pub fn on_download(
        mut self,
        callback: impl Fn(DownloadProgress) + Send + Sync + 'static,
    ) -> Self {
        self.on_download = Some(Arc::new(callback));
        self
    }

    /// Sets a callback for each step.
    pub fn on_event(mut self, callback: impl Fn(&JobEvent<'_>) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(callback));
        self
    }

    fn tell(&self, event: JobEvent<'_>) {
        if let Some(callback) = &self.on_event {
            callback(&event);
        }
    }
}

/// What a finished job produced.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobOutcome {
    /// The saved MP4.
    pub output: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// The session (keep it to edit further).
    pub session: Session,
    /// The render job.
    pub render_job: RenderJob,
}

impl EditJob {
    /// A new job. Paths are made absolute (so a resumed job does not depend on the working
    /// directory), and the input's size and modification time are recorded. Fails when the
    /// input cannot be read.
    ///
    /// ```no_run
    /// let job = nemo_video::job::EditJob::new("clip.mp4", "trim to 10 s", "clip_edited.mp4")?
    ///     .language("en");
    /// # let _ = job;
    /// # Ok::<(), nemo_video::Error>(())
    /// ```
    pub fn new(
        input: impl AsRef<Path>,
        prompt: impl Into<String>,
        output: impl AsRef<Path>,
    ) -> Result<EditJob> {
        let input = std::path::absolute(input.as_ref())
            .map_err(|err| Error::io("could not resolve", input.as_ref(), err))?;
        let output = std::path::absolute(output.as_ref())
            .map_err(|err| Error::io("could not resolve", output.as_ref(), err))?;
        let (input_size, input_modified) = file_identity(&input)?;
        let prompt = prompt.into();
        if prompt.trim().is_empty() {
            return Err(Error::invalid_input(
                "the instruction is empty; say what to change in the video",
            ));
        }
        Ok(EditJob {
            input,
            input_size,
            input_modified,
            prompt,
            output,
            language: None,
            render_options: RenderOptions::default(),
            stage: Stage::New,
            session: None,
            state_before_message: None,
            message_sent_at: None,
            answer: None,
            timeline: None,
            render_job: None,
            output_url: None,
            output_bytes: None,
        })
    }

    /// Sets the agent's reply language (e.g. `en`, `zh`).
    pub fn language(mut self, language: impl Into<String>) -> Self {
        self.language = Some(language.into());
        self
    }

    /// Sets the render settings.
    pub fn render_options(mut self, options: RenderOptions) -> Self {
        self.render_options = options;
        self
    }

    /// True when the input still has the size and modification time recorded in the job.
    pub fn input_unchanged(&self) -> bool {
        file_identity(&self.input)
            .is_ok_and(|identity| identity == (self.input_size, self.input_modified))
    }

    /// Runs the job from its current stage to the end, calling `save` after every change,
    /// before the next request leaves. A failure leaves the job at a stage from which
    /// running it again continues safely (see the [module docs](self)).
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, mut job: nemo_video::job::EditJob) -> nemo_video::Result<()> {
    /// use nemo_video::job::{JobFile, JobOptions};
    /// let file = JobFile::new("job.json");
    /// let outcome = job.run(&client, &JobOptions::default(), |job| file.save(job)).await?;
    /// # let _ = outcome; Ok(()) }
    /// ```
    pub async fn run(
        &mut self,
        client: &NemoClient,
        options: &JobOptions,
        mut save: impl FnMut(&EditJob) -> Result<()> + Send,
    ) -> Result<JobOutcome> {
        loop {
            if self.stage == Stage::Done {
                return self.outcome();
            }
            self.step(client, options, &mut save).await?;
        }
    }

    fn session(&self) -> Result<Session> {
        self.session
            .clone()
            .ok_or_else(|| corrupt("it has no session past the first step"))
    }

    fn outcome(&self) -> Result<JobOutcome> {
        Ok(JobOutcome {
            output: self.output.clone(),
            bytes: self.output_bytes.unwrap_or_default(),
            session: self.session()?,
            render_job: self
                .render_job
                .clone()
                .ok_or_else(|| corrupt("it is done but has no render job"))?,
        })
    }

    /// Moves to `stage` and saves.
    fn advance(
        &mut self,
        stage: Stage,
        save: &mut (impl FnMut(&EditJob) -> Result<()> + Send),
    ) -> Result<()> {
        self.stage = stage;
        save(self)
    }

    /// One step from the current stage.
    async fn step(
        &mut self,
        client: &NemoClient,
        options: &JobOptions,
        save: &mut (impl FnMut(&EditJob) -> Result<()> + Send),
    ) -> Result<()> {
        match self.stage {
            Stage::New => {
                let session = client.create_session(self.language.as_deref()).await?;
                options.tell(JobEvent::SessionReady(&session));
                self.session = Some(session);
                self.advance(Stage::SessionCreated, save)
            }
            Stage::SessionCreated => {
                let session = self.session()?;
                options.tell(JobEvent::Uploading {
                    path: &self.input,
                    size: self.input_size,
                });
                self.advance(Stage::UploadSent, save)?;
                match client
                    .upload_files_inner(&session, &[&self.input], options.on_upload.clone())
                    .await
                {
                    Ok(_) => {
                        options.tell(JobEvent::Uploaded);
                        self.advance(Stage::Uploaded, save)
                    }
                    // Nothing reached the service (a local check, a refused connection, a
                    // refusal before any work): the next run uploads again.
                    Err(err) if !err.needs_reconcile() => {
                        self.advance(Stage::SessionCreated, save)?;
                        Err(err)
                    }
                    Err(err) => Err(err),
                }
            }
            Stage::UploadSent => {
                let session = self.session()?;
                let state = client.state(&session).await?;
                if self.upload_is_on(&state) {
                    options.tell(JobEvent::UploadFound);
                    self.advance(Stage::Uploaded, save)
                } else {
                    // The state proves it did not land: uploading again cannot duplicate it.
                    self.advance(Stage::SessionCreated, save)
                }
            }
            Stage::Uploaded => {
                let session = self.session()?;
                let before = client.state(&session).await?;
                self.state_before_message = Some(before.clone());
                self.message_sent_at = Some(crate::auth::unix_now());
                self.advance(Stage::MessageSent, save)?;
                options.tell(JobEvent::Asking(&self.prompt));
                let turn = match client
                    .run_turn_after(&session, before, &self.prompt, &options.turn)
                    .await
                {
                    Ok(turn) => turn,
                    // Refused before any work (no credits, a refused connection, ...): the
                    // next run sends it again.
                    Err(err) if !err.needs_reconcile() => {
                        self.advance(Stage::Uploaded, save)?;
                        return Err(err);
                    }
                    Err(err) => return Err(err),
                };
                if let TurnEnd::WaitingForUser { question, .. } = &turn.end {
                    // Nothing was edited: the instruction needs more detail.
                    self.advance(Stage::Uploaded, save)?;
                    return Err(Error::invalid_input(format!(
                        "the agent needs more detail before editing: {}; give a more specific instruction",
                        question.as_deref().unwrap_or("it asked a question")
                    )));
                }
                if matches!(turn.end, TurnEnd::Disconnected(_))
                    && turn
                        .changes
                        .as_ref()
                        .is_none_or(|changes| changes.is_empty())
                {
                    // Cut off with nothing visible yet: the next step watches the timeline.
                    return Ok(());
                }
                let answer = turn.answer();
                options.tell(JobEvent::Answer(&answer));
                self.answer = Some(answer);
                self.advance(Stage::Edited, save)
            }
            Stage::MessageSent => {
                let session = self.session()?;
                let before = self
                    .state_before_message
                    .clone()
                    .ok_or_else(|| corrupt("the edit message was sent but no state was saved"))?;
                // The longest a turn can take: after that, no change means it never landed.
                let window = options.turn.message.total_timeout;
                let sent_at = self.message_sent_at.unwrap_or(0);
                let mut told = false;
                loop {
                    let check = client
                        .reconcile_turn_with(&session, &before, &options.turn)
                        .await?;
                    if check.landed() {
                        let answer = format!("Done. {}", check.changes);
                        options.tell(JobEvent::Answer(&answer));
                        self.answer = Some(answer);
                        return self.advance(Stage::Edited, save);
                    }
                    let elapsed =
                        Duration::from_secs(crate::auth::unix_now().saturating_sub(sent_at));
                    let Some(left) = window.checked_sub(elapsed).filter(|left| !left.is_zero())
                    else {
                        tracing::info!("the edit message sent before the interruption did not land; sending it again");
                        return self.advance(Stage::Uploaded, save);
                    };
                    if !told {
                        options.tell(JobEvent::CheckingEdit { at_most: left });
                        told = true;
                    }
                    tokio::time::sleep(options.wait.poll_interval.min(left)).await;
                }
            }
            Stage::Edited => {
                let session = self.session()?;
                let draft = client.exportable_draft(&session).await?;
                let timeline = draft.summary();
                options.tell(JobEvent::Timeline(&timeline));
                self.timeline = Some(timeline);
                let job = RenderJob::new(&session);
                self.render_job = Some(job.clone());
                // Saved before it is submitted: a restart resumes this very render.
                self.advance(Stage::RenderSubmitted, save)?;
                options.tell(JobEvent::Rendering(&job));
                client
                    .submit_render(&job, &draft, &self.render_options)
                    .await?;
                self.wait_for_render(client, options, &job, save).await
            }
            Stage::RenderSubmitted => {
                let job = self
                    .render_job
                    .clone()
                    .ok_or_else(|| corrupt("it was rendering but has no render job"))?;
                options.tell(JobEvent::Rendering(&job));
                // Submits it again, with the same id, only if the service never got it.
                client.ensure_submitted(&job, &self.render_options).await?;
                self.wait_for_render(client, options, &job, save).await
            }
            Stage::Rendered => {
                let job = self
                    .render_job
                    .clone()
                    .ok_or_else(|| corrupt("it was rendered but has no render job"))?;
                options.tell(JobEvent::Downloading);
                let on_download = options.on_download.clone();
                let bytes = client
                    .download_render(&job, self.output_url.as_deref(), &self.output, move |p| {
                        if let Some(callback) = &on_download {
                            callback(p);
                        }
                    })
                    .await?;
                self.output_bytes = Some(bytes);
                options.tell(JobEvent::Downloaded { bytes });
                self.advance(Stage::Done, save)
            }
            Stage::Done => Ok(()),
        }
    }

    async fn wait_for_render(
        &mut self,
        client: &NemoClient,
        options: &JobOptions,
        job: &RenderJob,
        save: &mut (impl FnMut(&EditJob) -> Result<()> + Send),
    ) -> Result<()> {
        match client.wait_for_render(job, &options.wait).await {
            Ok(url) => {
                options.tell(JobEvent::Rendered);
                self.output_url = url;
                self.advance(Stage::Rendered, save)
            }
            Err(err) => self.render_failed(err, save),
        }
    }

    /// A render that failed on the service is done for: the next run renders anew (a new id).
    /// Anything else (a timeout, a network failure) keeps the job, to wait for it again.
    fn render_failed(
        &mut self,
        err: Error,
        save: &mut (impl FnMut(&EditJob) -> Result<()> + Send),
    ) -> Result<()> {
        if matches!(err, Error::RenderFailed { .. }) {
            self.render_job = None;
            self.advance(Stage::Edited, save)?;
        }
        Err(err)
    }

    /// True when the session's media include this job's input (by file name).
    fn upload_is_on(&self, state: &SessionState) -> bool {
        let Some(name) = self.input.file_name().and_then(|name| name.to_str()) else {
            return false;
        };
        state
            .video_infos()
            .iter()
            .any(|media| media.file_name() == Some(name) || media.display_name() == Some(name))
    }
}

fn corrupt(what: &str) -> Error {
    Error::invalid_input(format!(
        "the saved job cannot be resumed: {what}; delete it and start over"
    ))
}

/// The size and modification time (seconds since the Unix epoch) of a file.
fn file_identity(path: &Path) -> Result<(u64, u64)> {
    let meta = std::fs::metadata(path).map_err(|err| Error::io("could not read", path, err))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Ok((meta.len(), modified))
}

/// A job saved as JSON in one file, replaced atomically (a temporary file in the same
/// folder, synced, renamed): after a crash it holds the last saved job, whole.
#[derive(Debug, Clone)]
pub struct JobFile {
    path: PathBuf,
}

impl JobFile {
    /// A job file at `path` (its folder is created, mode 0700, on first save).
    pub fn new(path: impl Into<PathBuf>) -> JobFile {
        JobFile { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved job, or `None` when there is none.
    ///
    /// ```no_run
    /// let saved = nemo_video::job::JobFile::new("job.json").load()?;
    /// # let _ = saved;
    /// # Ok::<(), nemo_video::Error>(())
    /// ```
    pub fn load(&self) -> Result<Option<EditJob>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|err| {
                Error::invalid_input(format!(
                    "the saved job {} cannot be read ({err}); delete it to start over",
                    self.path.display()
                ))
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(Error::io("could not read", &self.path, err)),
        }
    }

    /// Saves `job`, replacing the file atomically.
    ///
    /// ```no_run
    /// # fn run(job: &nemo_video::job::EditJob) -> nemo_video::Result<()> {
    /// nemo_video::job::JobFile::new("job.json").save(job)?;
    /// # Ok(()) }
    /// ```
    pub fn save(&self, job: &EditJob) -> Result<()> {
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let fail = |err: std::io::Error| Error::io("could not save the job to", &self.path, err);
        if !dir.is_dir() {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                builder.mode(0o700);
            }
            builder.create(dir).map_err(fail)?;
        }
        let json = serde_json::to_vec_pretty(job)
            .map_err(|err| Error::invalid_input(format!("could not encode the job: {err}")))?;
        let mut file = tempfile::Builder::new()
            .prefix(".job-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(fail)?;
        file.write_all(&json).map_err(fail)?;
        file.as_file().sync_all().map_err(fail)?;
        file.persist(&self.path).map_err(|err| fail(err.error))?;
        Ok(())
    }

    /// Deletes the file (after the job succeeded). A missing file is fine.
    ///
    /// ```no_run
    /// nemo_video::job::JobFile::new("job.json").remove()?;
    /// # Ok::<(), nemo_video::Error>(())
    /// ```
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(Error::io("could not remove", &self.path, err)),
        }
    }
}
