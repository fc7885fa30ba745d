//! A durable edit job: upload a clip, ask the agent for an edit, render, download — saved
//! after every step in a [`JobStore`], run by one worker at a time, and resumable by any
//! worker on any machine, without paying twice.
//!
//! Policy:
//! - **Saved before each request.** [`EditJob::run`] saves the job in its store after every
//!   change, **before** the next request leaves, so the saved job always says what may have
//!   reached the service. Saves are compare-and-set on the record's version.
//! - **One runner per job.** A run first takes the job's lease in the store (time to live
//!   30 s, renewed every 10 s while it runs); a second run of the same job finds it held and
//!   fails with [`Error::JobRunningElsewhere`] naming the holder (process id, host), sending
//!   nothing, or waits for it ([`JobOptions::wait_if_running`]). A run that cannot renew its
//!   lease stops. A worker that dies stops renewing; its lease lapses (at once for a
//!   [`JobFile`], whose lease is an OS file lock) and another worker finishes the job
//!   ([`resumable_jobs`]).
//! - **Verdicts from what the wire proves.** Each request that does work ends *refused before
//!   any work* (an error answer, or for the message an error answer head other than 504: the
//!   agent's stream opens before it begins), *answered* (for the message: its stream opened),
//!   or *unknown* (no answer in time, a 504, a connection lost midway). Refused: the job fails
//!   at once and the next run sends the request again, with nothing to watch. Answered: the
//!   turn ran; its end (a clean end, an agent error, a cut) is reconciled from the state,
//!   never rolled back. Unknown: reconciled from the state, with a wait bounded by the
//!   service's own limits, counted from when it was sent (a saved wall-clock time).
//! - **The upload** is reconciled through the session's media: the name exactly as it was
//!   sent in the multipart header and the size. An upload whose process died may still land
//!   (the kernel sends what was written): a resume waits until it no longer could (its
//!   deadline, saved with it and moved on as it progresses: its last progress plus the
//!   stall limit, the request timeout) before it uploads again.
//! - **The edit message**: while the timeline shows no change, a resume watches it (every
//!   3 s) until the longest a turn can take (the stream's total limit, 15 minutes by default)
//!   has passed since it was sent; only then, and only when the stream never opened, is the
//!   message sent again. "Landed" means the turn is over: its stream ended, or, when
//!   watching without one, the timeline changed and then stayed the same for the settle time
//!   (15 s). A turn that ran and changed nothing is not sent again by itself
//!   ([`Error::EditNotApplied`]; [`EditJob::send_again`] sends it deliberately).
//! - **A question** (the agent waits for the user) is kept with the job
//!   ([`Stage::AwaitingAnswer`]); a resume reports it ([`Error::NeedsAnswer`]) and never
//!   sends the instruction again. [`EditJob::answer_question`] gives the reply to send.
//! - **The render**: through its id, chosen and saved before it is submitted: the job waits
//!   for it, or submits it again with the same id if the service never got it.
//! - **The download** lands whole or not at all (see [`crate::render`]), through a temporary
//!   file named after the job (`.nemo-download-<job id>.part`, beside the output), so a
//!   resume replaces what a killed run left. A job that is [`Stage::Done`] but whose output
//!   is not at its target (another machine's disk, deleted) downloads it again.
//! - **Portable jobs.** The input is identified by its content (size and SHA-256); a worker
//!   on another machine says where its copy is ([`EditJob::with_input_at`]) and where the
//!   output goes. The job records the identity it belongs to (API origin, client id): a run
//!   with another identity is refused, since the session is that user's.
//! - A session is created at most once per saved job (creating one is free; a crash between
//!   the request and the save leaves an empty session behind, nothing more).

mod file;
#[cfg(feature = "redis")]
mod redis;
mod store;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::NemoClient;
use crate::error::{Error, Result};
use crate::lease::Lease;
use crate::render::{
    DownloadOptions, DownloadProgress, Export, RenderJob, RenderOptions, WaitOptions,
};
use crate::session::{Session, SessionOptions};
use crate::state::SessionState;
use crate::turn::{TurnEnd, TurnOptions};
use crate::upload::{ProgressFn, UploadProgress};

pub use self::file::JobFile;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisJobStore;
pub use self::store::{
    resumable_jobs, JobSaveOutcome, JobStore, LeaseAttempt, LeaseHolder, MemoryJobStore, StoredJob,
};

use self::store::store_call;

/// Default time to live of a job's lease: 30 s (renewed every 10 s while the job runs).
pub const DEFAULT_JOB_LEASE_TTL: Duration = Duration::from_secs(30);
/// Default time limit on each job store call: 10 s.
pub const DEFAULT_JOB_STORE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default interval between state reads while reconciling: 3 s.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(3);
/// Default settle time: a changed timeline that stays the same this long is a finished edit.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(15);

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
    /// The agent asked a question and waits for the answer ([`EditJob::question`]).
    AwaitingAnswer,
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
            Stage::AwaitingAnswer => "upload done; the agent asked a question",
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
            Stage::AwaitingAnswer => "awaiting an answer",
            Stage::Edited => "edited",
            Stage::RenderSubmitted => "render submitted",
            Stage::Rendered => "rendered",
            Stage::Done => "done",
        })
    }
}

/// Whose job it is: the service (API origin) and the client id of the identity that owns
/// its session. `client_id` is `None` for a fixed token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobIdentity {
    /// The API origin, e.g. `https://mega-api-prod.nemovideo.ai`.
    pub origin: String,
    /// The client id, `None` for a fixed token.
    pub client_id: Option<String>,
}

impl fmt::Display for JobIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.client_id {
            Some(id) => write!(f, "client id {id} at {}", self.origin),
            None => write!(f, "a fixed token at {}", self.origin),
        }
    }
}

/// The upload as it was sent, to find it again in the session's media.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SentUpload {
    /// The file name exactly as the multipart header carried it.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was sent, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// Until when it could still land, milliseconds since the Unix epoch: its last progress
    /// plus the stall limit (with a margin), moved on and saved as it progresses.
    pub deadline_ms: u64,
}

/// The message as it was sent, to reconcile it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SentMessage {
    /// What was sent: the instruction, or an answer to the agent's question.
    pub text: String,
    /// When it was sent, milliseconds since the Unix epoch (the bound of any wait for it
    /// counts from here).
    pub sent_at_ms: u64,
    /// The state read just before it was sent.
    pub state_before: SessionState,
    /// Its stream opened: the turn ran (whatever its end).
    #[serde(default)]
    pub answered: bool,
    /// The turn is known to be over without changing the timeline; the error the agent
    /// reported, if any (empty when it reported none).
    #[serde(default)]
    pub ended_unchanged: Option<String>,
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
/// let mut job = match file.read()? {
///     Some(saved) => saved.job,
///     None => EditJob::new("clip.mp4", "remove the logo in the corner", "clip_edited.mp4")?,
/// };
/// let outcome = job.run(&client, &file, &JobOptions::default()).await?;
/// file.delete()?;
/// println!("saved {} ({} bytes)", outcome.output.display(), outcome.bytes);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EditJob {
    /// The job's id (a random UUID): its key in a [`JobStore`].
    pub id: String,
    /// Where this worker has the clip (absolute). Another worker says where its copy is with
    /// [`with_input_at`](Self::with_input_at).
    pub input: PathBuf,
    /// The clip's size in bytes.
    pub input_size: u64,
    /// The clip's SHA-256, in lower-case hex: what identifies it on any machine.
    pub input_sha256: String,
    /// The instruction for the agent.
    pub prompt: String,
    /// Where the MP4 goes (absolute, on the machine that runs the job).
    pub output: PathBuf,
    /// The agent's reply language, e.g. `en`.
    #[serde(default)]
    pub language: Option<String>,
    /// Render settings.
    #[serde(default)]
    pub render_options: RenderOptions,
    /// Where the job is.
    pub stage: Stage,
    /// The identity the job belongs to, recorded by its first run.
    #[serde(default)]
    pub identity: Option<JobIdentity>,
    /// The session, once created.
    #[serde(default)]
    pub session: Option<Session>,
    /// The upload, once sent.
    #[serde(default)]
    pub upload: Option<SentUpload>,
    /// The message in flight (the instruction, or an answer), once sent.
    #[serde(default)]
    pub message: Option<SentMessage>,
    /// The agent's question, while it waits for an answer.
    #[serde(default)]
    pub question: Option<String>,
    /// The answer to the agent's question, to send next ([`answer_question`](Self::answer_question)).
    #[serde(default)]
    pub reply: Option<String>,
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
    /// The version of the store record this copy was read from or last saved as.
    #[serde(skip)]
    version: Option<u64>,
    /// The message in flight was sent by this copy's run (for what the job tells).
    #[serde(skip)]
    sent_by_this_run: bool,
}

/// Callback for what the job does, step by step.
pub(crate) type JobEventFn = Arc<dyn Fn(&JobEvent<'_>) + Send + Sync>;

/// Something a running job reports, for display.
#[derive(Debug)]
#[non_exhaustive]
pub enum JobEvent<'a> {
    /// Another process holds the job; this run waits for it
    /// ([`JobOptions::wait_if_running`]).
    WaitingForOtherRun {
        /// Who holds it, when known.
        holder: Option<&'a LeaseHolder>,
    },
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
    /// An upload sent earlier was found on the session.
    UploadFound,
    /// An upload sent earlier (by a process that stopped) is not on the session yet, and
    /// could still land: the job reads the session's media until it does, or until it no
    /// longer could.
    CheckingUpload {
        /// The longest the job waits before uploading again.
        at_most: Duration,
    },
    /// The instruction (or an answer to the agent's question) is being sent to the agent.
    Asking(&'a str),
    /// The message's outcome is not known yet: the job reads the timeline every `every`
    /// until the edit shows and settles, for at most `at_most`.
    CheckingEdit {
        /// The longest the job may still wait (the stream's total limit, counted from when
        /// the message was sent).
        at_most: Duration,
        /// How often the timeline is read.
        every: Duration,
        /// The message was sent by an earlier run (`false`: by this run, whose stream was
        /// cut or never confirmed).
        resumed: bool,
        /// The stream opened: the turn ran (otherwise the service may never have got it).
        answered: bool,
    },
    /// The agent asks a question before it edits; the job keeps it.
    Question(&'a str),
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
#[derive(Clone)]
#[non_exhaustive]
pub struct JobOptions {
    /// The agent turn (stream limits, live events). Default [`TurnOptions::default`].
    pub turn: TurnOptions,
    /// Waiting for the render (poll interval, longest wait, progress). Default
    /// [`WaitOptions::default`].
    pub wait: WaitOptions,
    /// Upload progress. Default: none.
    pub(crate) on_upload: Option<ProgressFn>,
    /// The download's options (its progress callback; the job's own output is always
    /// replaced, so `overwrite` stays true).
    download: DownloadOptions,
    /// What the job does, step by step. Default: none.
    pub(crate) on_event: Option<JobEventFn>,
    /// Time to live of the job's lease. Default 30 s.
    pub lease_ttl: Duration,
    /// Time limit on each job store call. Default 10 s.
    pub store_timeout: Duration,
    /// When another run holds the job: `None` fails at once with
    /// [`Error::JobRunningElsewhere`]; `Some(limit)` waits for it, at most `limit`. Default
    /// `None`.
    pub wait_if_running: Option<Duration>,
    /// How often the state is read while an outcome is reconciled. Default 3 s.
    pub reconcile_interval: Duration,
    /// How long a changed timeline must stay the same to count as a finished edit, when
    /// reconciling without the stream. Default 15 s.
    pub settle: Duration,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            turn: TurnOptions::default(),
            wait: WaitOptions::default(),
            on_upload: None,
            download: DownloadOptions::default(),
            on_event: None,
            lease_ttl: DEFAULT_JOB_LEASE_TTL,
            store_timeout: DEFAULT_JOB_STORE_TIMEOUT,
            wait_if_running: None,
            reconcile_interval: DEFAULT_RECONCILE_INTERVAL,
            settle: DEFAULT_SETTLE,
        }
    }
}

impl fmt::Debug for JobOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobOptions")
            .field("turn", &self.turn)
            .field("wait", &self.wait)
            .field("lease_ttl", &self.lease_ttl)
            .field("store_timeout", &self.store_timeout)
            .field("wait_if_running", &self.wait_if_running)
            .field("reconcile_interval", &self.reconcile_interval)
            .field("settle", &self.settle)
            .finish_non_exhaustive()
    }
}

impl JobOptions {
    /// Sets the turn options (default [`TurnOptions::default`]).
    pub fn turn(mut self, turn: TurnOptions) -> Self {
        self.turn = turn;
        self
    }

    /// Sets the render wait options (default [`WaitOptions::default`]).
    pub fn wait(mut self, wait: WaitOptions) -> Self {
        self.wait = wait;
        self
    }

    /// Sets an upload progress callback (default: none).
    pub fn on_upload(mut self, callback: impl Fn(UploadProgress) + Send + Sync + 'static) -> Self {
        self.on_upload = Some(Arc::new(callback));
        self
    }

    /// Sets a download progress callback (default: none).
    pub fn on_download(
        mut self,
        callback: impl Fn(DownloadProgress) + Send + Sync + 'static,
    ) -> Self {
        self.download = self.download.on_progress(callback);
        self
    }

    /// Sets a callback for each step (default: none).
    pub fn on_event(mut self, callback: impl Fn(&JobEvent<'_>) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(callback));
        self
    }

    /// Sets the lease's time to live (default 30 s): how long a dead worker's job waits
    /// before another worker may take it over.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Sets the time limit on each job store call (default 10 s).
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// Waits, at most `limit`, for another run holding the job instead of failing at once
    /// (default: fail at once).
    pub fn wait_if_running(mut self, limit: Duration) -> Self {
        self.wait_if_running = Some(limit);
        self
    }

    /// Sets how often the state is read while reconciling (default 3 s).
    pub fn reconcile_interval(mut self, interval: Duration) -> Self {
        self.reconcile_interval = interval;
        self
    }

    /// Sets the settle time of a changed timeline (default 15 s).
    pub fn settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
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

/// What a job needs while it runs: the client, its store and options, and the lease.
struct Ctx<'a> {
    client: &'a NemoClient,
    store: &'a dyn JobStore,
    options: &'a JobOptions,
}

const SAVE: &str = "save the job to the job store";
const LOAD: &str = "load the job from the job store";

impl EditJob {
    /// A new job with a new id. Paths are made absolute (so a resumed job does not depend on
    /// the working directory), and the input's size and SHA-256 are recorded, reading the
    /// whole clip once (about a second per 500 MB: in a server, call it from
    /// `spawn_blocking`). Fails when the input cannot be read or the instruction is empty.
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
        let prompt = prompt.into();
        if prompt.trim().is_empty() {
            return Err(Error::invalid_input(
                "the instruction is empty; say what to change in the video",
            ));
        }
        let (input_size, input_sha256) = content_identity(&input)?;
        Ok(EditJob {
            id: uuid::Uuid::new_v4().to_string(),
            input,
            input_size,
            input_sha256,
            prompt,
            output,
            language: None,
            render_options: RenderOptions::default(),
            stage: Stage::New,
            identity: None,
            session: None,
            upload: None,
            message: None,
            question: None,
            reply: None,
            answer: None,
            timeline: None,
            render_job: None,
            output_url: None,
            output_bytes: None,
            version: None,
            sent_by_this_run: false,
        })
    }

    /// Sets the agent's reply language (e.g. `en`, `zh`; default: the service's).
    pub fn language(mut self, language: impl Into<String>) -> Self {
        self.language = Some(language.into());
        self
    }

    /// Sets the render settings (default [`RenderOptions::default`]).
    pub fn render_options(mut self, options: RenderOptions) -> Self {
        self.render_options = options;
        self
    }

    /// The job with its clip at `path` on this machine, after checking that the file there
    /// is the job's clip (same size and SHA-256). For a worker resuming a job another
    /// machine started. A job past its upload no longer needs the clip at all.
    ///
    /// ```no_run
    /// # fn demo(job: nemo_video::job::EditJob) -> nemo_video::Result<()> {
    /// let job = job.with_input_at("/mnt/shared/clips/take-2.mp4")?;
    /// # let _ = job; Ok(()) }
    /// ```
    pub fn with_input_at(mut self, path: impl AsRef<Path>) -> Result<EditJob> {
        let path = std::path::absolute(path.as_ref())
            .map_err(|err| Error::io("could not resolve", path.as_ref(), err))?;
        let (size, sha256) = content_identity(&path)?;
        if size != self.input_size || sha256 != self.input_sha256 {
            return Err(Error::invalid_input(format!(
                "{} is not this job's clip (it has {size} bytes and another content than the {} bytes the job was made with); pass the same clip",
                path.display(),
                self.input_size
            )));
        }
        self.input = path;
        Ok(self)
    }

    /// True when the file at [`input`](Self::input) is still the job's clip (same size and
    /// SHA-256; reads the whole file).
    pub fn input_unchanged(&self) -> bool {
        content_identity(&self.input)
            .is_ok_and(|(size, sha256)| size == self.input_size && sha256 == self.input_sha256)
    }

    /// The version of the store record this copy was read from or last saved as (`None` for
    /// a job never saved).
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// True when the job cannot go on without a person: the agent's question is not answered
    /// yet, or a turn ran and changed nothing ([`Error::EditNotApplied`]).
    pub fn waits_for_a_person(&self) -> bool {
        let unanswered = self.stage == Stage::AwaitingAnswer && self.reply.is_none();
        let unapplied = self.stage == Stage::MessageSent
            && self
                .message
                .as_ref()
                .is_some_and(|m| m.ended_unchanged.is_some());
        unanswered || unapplied
    }

    /// The agent's question, while the job waits for an answer ([`Stage::AwaitingAnswer`]).
    pub fn question(&self) -> Option<&str> {
        self.question.as_deref()
    }

    /// Gives the answer to the agent's question: the next run sends `reply` (not the
    /// instruction) as the next message of the session. Fails unless the job waits for an
    /// answer.
    ///
    /// ```no_run
    /// # async fn demo(client: nemo_video::NemoClient, file: nemo_video::job::JobFile) -> nemo_video::Result<()> {
    /// use nemo_video::job::{JobOptions, Stage};
    /// let mut job = file.read()?.expect("a saved job").job;
    /// if job.stage == Stage::AwaitingAnswer {
    ///     job.answer_question("the person on the left; replace them with blue")?;
    ///     job.run(&client, &file, &JobOptions::default()).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn answer_question(&mut self, reply: impl Into<String>) -> Result<()> {
        let reply = reply.into();
        if self.stage != Stage::AwaitingAnswer {
            return Err(Error::invalid_input(format!(
                "job {} has no question to answer (it is at \"{}\")",
                self.id, self.stage
            )));
        }
        if reply.trim().is_empty() {
            return Err(Error::invalid_input(
                "the answer is empty; say what the agent should do",
            ));
        }
        self.reply = Some(reply);
        Ok(())
    }

    /// Sends the message of a turn that ran and changed nothing once more (the next run
    /// sends it): a deliberate decision, since the turn that ran may have been charged.
    /// Fails unless the job stopped with [`Error::EditNotApplied`].
    pub fn send_again(&mut self) -> Result<()> {
        let ended = self
            .message
            .as_ref()
            .is_some_and(|message| message.ended_unchanged.is_some());
        if self.stage != Stage::MessageSent || !ended {
            return Err(Error::invalid_input(format!(
                "job {} has no finished, unapplied message to send again (it is at \"{}\")",
                self.id, self.stage
            )));
        }
        self.message = None;
        self.stage = Stage::Uploaded;
        Ok(())
    }

    /// Runs the job from its current stage to the end, under its lease in `store`, saving
    /// it there after every change, before the next request leaves. A failure leaves the job
    /// at a stage from which running it again continues safely (see the [module
    /// docs](self)). When the store holds a newer record of the job (another worker got
    /// further), that record is taken, keeping this worker's input and output paths.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, mut job: nemo_video::job::EditJob) -> nemo_video::Result<()> {
    /// use nemo_video::job::{JobFile, JobOptions};
    /// let file = JobFile::new("job.json");
    /// let outcome = job.run(&client, &file, &JobOptions::default()).await?;
    /// # let _ = outcome; Ok(()) }
    /// ```
    pub async fn run(
        &mut self,
        client: &NemoClient,
        store: &dyn JobStore,
        options: &JobOptions,
    ) -> Result<JobOutcome> {
        let ctx = Ctx {
            client,
            store,
            options,
        };
        let lease = self.take_lease(&ctx).await?;
        let result = self.run_leased(&ctx, &lease).await;
        if let Err(err) = store_call(
            options.store_timeout,
            "release the job's lease in the job store",
            store.release_lease(lease),
        )
        .await
        {
            tracing::warn!(job = %self.id, error = %err, "could not release the job's lease; it lapses by itself");
        }
        result
    }

    /// Takes the job's lease: at once, or (with [`JobOptions::wait_if_running`]) polling
    /// until the other run lets go.
    async fn take_lease(&self, ctx: &Ctx<'_>) -> Result<Lease> {
        let holder = LeaseHolder::this_process();
        let started = tokio::time::Instant::now();
        let mut told = false;
        loop {
            let attempt = store_call(
                ctx.options.store_timeout,
                "take the job's lease in the job store",
                ctx.store
                    .try_lease(&self.id, ctx.options.lease_ttl, &holder),
            )
            .await?;
            let other = match attempt {
                LeaseAttempt::Granted(lease) => return Ok(lease),
                LeaseAttempt::Held(other) => other,
            };
            let Some(limit) = ctx.options.wait_if_running else {
                return Err(Error::JobRunningElsewhere {
                    job_id: self.id.clone(),
                    holder: other.map(|h| h.to_string()),
                });
            };
            if started.elapsed() >= limit {
                return Err(Error::JobRunningElsewhere {
                    job_id: self.id.clone(),
                    holder: other.map(|h| h.to_string()),
                });
            }
            if !told {
                ctx.options.tell(JobEvent::WaitingForOtherRun {
                    holder: other.as_ref(),
                });
                told = true;
            }
            let pause = Lease::renew_interval(ctx.options.lease_ttl).min(Duration::from_secs(1));
            tokio::time::sleep(pause).await;
        }
    }

    /// The run under the lease, renewing it every third of its time to live; a lease that
    /// is lost stops the work.
    async fn run_leased(&mut self, ctx: &Ctx<'_>, lease: &Lease) -> Result<JobOutcome> {
        let job_id = self.id.clone();
        let work = self.work(ctx);
        tokio::pin!(work);
        let interval = Lease::renew_interval(lease.ttl());
        let mut renewed_at = tokio::time::Instant::now();
        loop {
            tokio::select! {
                outcome = &mut work => return outcome,
                () = tokio::time::sleep_until(renewed_at + interval) => {
                    match store_call(
                        ctx.options.store_timeout,
                        "renew the job's lease in the job store",
                        ctx.store.renew_lease(lease),
                    )
                    .await
                    {
                        Ok(true) => renewed_at = tokio::time::Instant::now(),
                        Ok(false) => {
                            return Err(Error::JobLeaseLost {
                                job_id,
                                reason: "its lease lapsed before it could be renewed".to_string(),
                            })
                        }
                        Err(err) if renewed_at.elapsed() + interval >= lease.ttl() => {
                            return Err(Error::JobLeaseLost {
                                job_id,
                                reason: format!("its lease could not be renewed before it lapsed ({err})"),
                            })
                        }
                        Err(err) => {
                            tracing::warn!(job = %job_id, error = %err, "could not renew the job's lease; trying again");
                            // Try again soon, well before the lease lapses.
                            renewed_at += interval / 2;
                        }
                    }
                }
            }
        }
    }

    /// Everything under the lease: the store's record, the identity, then every step.
    async fn work(&mut self, ctx: &Ctx<'_>) -> Result<JobOutcome> {
        let stored = store_call(ctx.options.store_timeout, LOAD, ctx.store.load(&self.id)).await?;
        if let Some(stored) = stored {
            if self.version.is_none_or(|mine| stored.version > mine) {
                // Another run got further (or this copy was never saved): take its record,
                // with this worker's paths.
                let (input, output) = (self.input.clone(), self.output.clone());
                *self = stored.job;
                self.version = Some(stored.version);
                if content_identity_quick(&input, self.input_size) {
                    self.input = input;
                }
                self.output = output;
            }
        }
        let identity = JobIdentity {
            origin: ctx.client.config().base_url.origin().ascii_serialization(),
            client_id: ctx.client.client_id().await?,
        };
        match &self.identity {
            Some(recorded) if *recorded != identity => {
                return Err(Error::invalid_input(format!(
                    "job {} belongs to {recorded}, but this client is {identity}; run it with a client of that identity (its session is that user's)",
                    self.id
                )))
            }
            Some(_) => {}
            None => {
                self.identity = Some(identity);
                self.save(ctx).await?;
            }
        }
        if self.version.is_none() {
            // The record exists from now on, so another worker can find and finish it.
            self.save(ctx).await?;
        }
        if self.stage == Stage::Done && !self.output_is_there() && self.render_job.is_some() {
            tracing::info!(job = %self.id, output = %self.output.display(), "the job is done but its output is not at its target; downloading it again");
            self.advance(ctx, Stage::Rendered).await?;
        }
        loop {
            if self.stage == Stage::Done {
                return self.outcome();
            }
            self.step(ctx).await?;
        }
    }

    fn output_is_there(&self) -> bool {
        std::fs::metadata(&self.output)
            .is_ok_and(|meta| meta.is_file() && Some(meta.len()) == self.output_bytes)
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

    /// Saves the job as it is (compare-and-set on its version).
    async fn save(&mut self, ctx: &Ctx<'_>) -> Result<()> {
        let outcome = store_call(
            ctx.options.store_timeout,
            SAVE,
            ctx.store.save(&self.id, self, self.version),
        )
        .await?;
        match outcome {
            JobSaveOutcome::Saved { version } => {
                self.version = Some(version);
                Ok(())
            }
            JobSaveOutcome::Conflict { current } => Err(Error::JobLeaseLost {
                job_id: self.id.clone(),
                reason: match current {
                    Some(current) => format!(
                        "another run saved it meanwhile (version {}, at \"{}\")",
                        current.version, current.job.stage
                    ),
                    None => "its record was removed from the job store meanwhile".to_string(),
                },
            }),
        }
    }

    /// Moves to `stage` and saves.
    async fn advance(&mut self, ctx: &Ctx<'_>, stage: Stage) -> Result<()> {
        self.stage = stage;
        self.save(ctx).await
    }

    /// One step from the current stage.
    async fn step(&mut self, ctx: &Ctx<'_>) -> Result<()> {
        let (client, options) = (ctx.client, ctx.options);
        match self.stage {
            Stage::New => {
                let mut session_options = SessionOptions::default();
                if let Some(language) = &self.language {
                    session_options = session_options.language(language.as_str());
                }
                let session = client.create_session_with(&session_options).await?;
                options.tell(JobEvent::SessionReady(&session));
                self.session = Some(session);
                self.advance(ctx, Stage::SessionCreated).await
            }
            Stage::SessionCreated => self.upload(ctx).await,
            Stage::UploadSent => self.reconcile_upload(ctx).await,
            Stage::Uploaded => self.send_message(ctx).await,
            Stage::MessageSent => self.reconcile_message(ctx).await,
            Stage::AwaitingAnswer => {
                if self.reply.is_some() {
                    self.question = None;
                    return self.advance(ctx, Stage::Uploaded).await;
                }
                Err(Error::NeedsAnswer {
                    question: self
                        .question
                        .clone()
                        .unwrap_or_else(|| "(the question was not kept)".to_string()),
                })
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
                self.advance(ctx, Stage::RenderSubmitted).await?;
                options.tell(JobEvent::Rendering(&job));
                client
                    .submit_render(&job, &draft, &self.render_options)
                    .await?;
                self.wait_for_render(ctx, &job).await
            }
            Stage::RenderSubmitted => {
                let job = self
                    .render_job
                    .clone()
                    .ok_or_else(|| corrupt("it was rendering but has no render job"))?;
                options.tell(JobEvent::Rendering(&job));
                // Submits it again, with the same id, only if the service never got it.
                client.ensure_submitted(&job, &self.render_options).await?;
                self.wait_for_render(ctx, &job).await
            }
            Stage::Rendered => {
                let job = self
                    .render_job
                    .clone()
                    .ok_or_else(|| corrupt("it was rendered but has no render job"))?;
                options.tell(JobEvent::Downloading);
                let export = Export::new(job, self.output_url.clone());
                let bytes = client
                    .download_render_as(&export, &self.output, Some(&self.id), &options.download)
                    .await?;
                self.output_bytes = Some(bytes);
                options.tell(JobEvent::Downloaded { bytes });
                self.advance(ctx, Stage::Done).await
            }
            Stage::Done => Ok(()),
        }
    }

    /// The upload, with its deadline saved before it leaves and moved on as it progresses.
    async fn upload(&mut self, ctx: &Ctx<'_>) -> Result<()> {
        let (client, options) = (ctx.client, ctx.options);
        let session = self.session()?;
        let input = self.input.clone();
        self.check_input().await?;
        let name = crate::upload::name_as_sent(&input)
            .ok_or_else(|| Error::invalid_input("the clip's path has no file name"))?;
        let stall = client.config().request_timeout;
        // Last progress plus the stall limit, plus a third of it: saves are a third of the
        // stall limit apart, so a process that dies between two is still covered.
        let reach = millis(stall.saturating_add(stall / 3));
        let now = now_ms();
        self.upload = Some(SentUpload {
            name,
            size: self.input_size,
            sent_at_ms: now,
            deadline_ms: now.saturating_add(reach),
        });
        options.tell(JobEvent::Uploading {
            path: &input,
            size: self.input_size,
        });
        self.advance(ctx, Stage::UploadSent).await?;
        let last_progress = Arc::new(AtomicU64::new(now));
        let tracker = Arc::clone(&last_progress);
        let user = options.on_upload.clone();
        let progress: ProgressFn = Arc::new(move |p: UploadProgress| {
            tracker.store(now_ms(), Ordering::Relaxed);
            if let Some(callback) = &user {
                callback(p);
            }
        });
        let paths = [&input];
        let upload = client.upload_files_inner(&session, &paths, Some(progress));
        tokio::pin!(upload);
        let every = (stall / 3).max(Duration::from_millis(100));
        let result = loop {
            tokio::select! {
                result = &mut upload => break result,
                () = tokio::time::sleep(every) => {
                    let deadline = last_progress.load(Ordering::Relaxed).saturating_add(reach);
                    let saved = self.upload.as_ref().map_or(0, |u| u.deadline_ms);
                    if deadline > saved.saturating_add(millis(every)) {
                        if let Some(upload) = &mut self.upload {
                            upload.deadline_ms = deadline;
                        }
                        self.save(ctx).await?;
                    }
                }
            }
        };
        match result {
            Ok(_) => {
                options.tell(JobEvent::Uploaded);
                self.advance(ctx, Stage::Uploaded).await
            }
            // Refused, or certainly never sent: the next run uploads again.
            Err(err) if !err.needs_reconcile() => {
                self.upload = None;
                self.advance(ctx, Stage::SessionCreated).await?;
                Err(err)
            }
            Err(err) => {
                // It may still land: until its last progress plus the stall limit.
                let deadline = last_progress.load(Ordering::Relaxed).saturating_add(reach);
                if let Some(upload) = &mut self.upload {
                    upload.deadline_ms = deadline.max(upload.deadline_ms);
                }
                self.save(ctx).await?;
                Err(err)
            }
        }
    }

    /// Fails unless the file at `input` is the job's clip (read on a blocking thread).
    async fn check_input(&self) -> Result<()> {
        let input = self.input.clone();
        let (size, sha256) = tokio::task::spawn_blocking(move || content_identity(&input))
            .await
            .map_err(|err| Error::invalid_input(format!("could not read the clip: {err}")))??;
        if size != self.input_size || sha256 != self.input_sha256 {
            return Err(Error::invalid_input(format!(
                "{} is no longer this job's clip (it changed since the job was made); restore it, tell the job where the clip is (EditJob::with_input_at), or start a new job",
                self.input.display()
            )));
        }
        Ok(())
    }

    /// An upload sent before: on the session (done), or not yet while it could still land
    /// (wait), or no longer could (upload again).
    async fn reconcile_upload(&mut self, ctx: &Ctx<'_>) -> Result<()> {
        let (client, options) = (ctx.client, ctx.options);
        let session = self.session()?;
        let Some(sent) = self.upload.clone() else {
            // Saved by a version that did not record the upload: it cannot be found, and
            // waiting for nothing helps nobody.
            return self.advance(ctx, Stage::SessionCreated).await;
        };
        let mut told = false;
        loop {
            let state = client.state(&session).await?;
            if upload_is_on(&sent, self.input.file_name(), &state) {
                options.tell(JobEvent::UploadFound);
                return self.advance(ctx, Stage::Uploaded).await;
            }
            let left = sent.deadline_ms.saturating_sub(now_ms());
            if left == 0 {
                // It can no longer land: uploading again cannot duplicate it.
                self.upload = None;
                return self.advance(ctx, Stage::SessionCreated).await;
            }
            let left = Duration::from_millis(left);
            if !told {
                options.tell(JobEvent::CheckingUpload { at_most: left });
                told = true;
            }
            tokio::time::sleep(options.reconcile_interval.min(left)).await;
        }
    }

    /// Sends the instruction (or the answer to a question), and follows the turn if its
    /// stream opens.
    async fn send_message(&mut self, ctx: &Ctx<'_>) -> Result<()> {
        let (client, options) = (ctx.client, ctx.options);
        let session = self.session()?;
        let text = self.reply.clone().unwrap_or_else(|| self.prompt.clone());
        let before = client.state(&session).await?;
        self.message = Some(SentMessage {
            text: text.clone(),
            sent_at_ms: now_ms(),
            state_before: before.clone(),
            answered: false,
            ended_unchanged: None,
        });
        self.sent_by_this_run = true;
        self.advance(ctx, Stage::MessageSent).await?;
        options.tell(JobEvent::Asking(&text));
        let stream = match client
            .send_message_with(&session, &text, &options.turn.message)
            .await
        {
            Ok(stream) => stream,
            // Refused before any work (an error answer head, no credits, a refused
            // connection, ...): the next run sends it again, with nothing to watch.
            Err(err) if !err.needs_reconcile() => {
                self.message = None;
                self.advance(ctx, Stage::Uploaded).await?;
                return Err(err);
            }
            // Unknown: the next step reconciles it from the state.
            Err(err) => {
                tracing::info!(job = %self.id, error = %err, "the message may have reached the service; reconciling from the state");
                return Ok(());
            }
        };
        // The stream opened: the turn runs, whatever happens next.
        if let Some(message) = &mut self.message {
            message.answered = true;
        }
        self.save(ctx).await?;
        let turn = client
            .follow_turn(&session, before, stream, &options.turn)
            .await;
        match &turn.end {
            TurnEnd::Completed => {
                let answer = turn.answer();
                options.tell(JobEvent::Answer(&answer));
                self.edited(ctx, answer).await
            }
            TurnEnd::WaitingForUser { question, .. } => {
                let question = question
                    .clone()
                    .or_else(|| (!turn.text.is_empty()).then(|| turn.text.clone()))
                    .unwrap_or_else(|| "the agent asks for more detail".to_string());
                options.tell(JobEvent::Question(&question));
                self.question = Some(question.clone());
                self.reply = None;
                self.message = None;
                self.advance(ctx, Stage::AwaitingAnswer).await?;
                Err(Error::NeedsAnswer { question })
            }
            TurnEnd::AgentError(err) => {
                // The turn is over; it may have edited before it failed.
                if turn.changes.as_ref().is_some_and(|c| !c.is_empty()) {
                    let answer = turn.answer();
                    options.tell(JobEvent::Answer(&answer));
                    return self.edited(ctx, answer).await;
                }
                let agent_error = match err {
                    Error::Agent { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                self.ended_unchanged(ctx, Some(agent_error)).await
            }
            // Cut off, or timed out: the agent may still be working. Reconciled from the state
            // by the next step, never sent again from here.
            TurnEnd::Disconnected(err) => {
                tracing::info!(job = %self.id, error = %err, "the stream ended before the turn did; reconciling from the state");
                Ok(())
            }
        }
    }

    /// The edit landed (or the agent answered without editing): on to the render.
    async fn edited(&mut self, ctx: &Ctx<'_>, answer: String) -> Result<()> {
        self.answer = Some(answer);
        self.reply = None;
        self.advance(ctx, Stage::Edited).await
    }

    /// The turn is over and changed nothing: kept as it is, reported, never sent again by
    /// itself.
    async fn ended_unchanged(&mut self, ctx: &Ctx<'_>, agent_error: Option<String>) -> Result<()> {
        if let Some(message) = &mut self.message {
            message.ended_unchanged = Some(agent_error.clone().unwrap_or_default());
        }
        self.save(ctx).await?;
        Err(Error::EditNotApplied {
            agent_error: agent_error.filter(|e| !e.is_empty()),
        })
    }

    /// A message whose outcome is not known: the timeline is read every few seconds until the
    /// edit shows and settles, or until the longest a turn can take has passed since it was
    /// sent.
    async fn reconcile_message(&mut self, ctx: &Ctx<'_>) -> Result<()> {
        let (client, options) = (ctx.client, ctx.options);
        let session = self.session()?;
        let message = self
            .message
            .clone()
            .ok_or_else(|| corrupt("the edit message was sent but not recorded"))?;
        if let Some(agent_error) = &message.ended_unchanged {
            // Known over: one look, in case the service applied it late.
            let state = client.state(&session).await?;
            let changes = message.state_before.diff(&state);
            if !changes.is_empty() {
                let answer = format!("Done. {changes}");
                options.tell(JobEvent::Answer(&answer));
                return self.edited(ctx, answer).await;
            }
            return Err(Error::EditNotApplied {
                agent_error: Some(agent_error.clone()).filter(|e| !e.is_empty()),
            });
        }
        // The service's own limit on a turn, counted from when it was sent by the clock that
        // sent it, and never more than that limit from now (a clock far behind).
        let limit = millis(options.turn.message.total_timeout);
        let now = now_ms();
        let deadline = message
            .sent_at_ms
            .saturating_add(limit)
            .min(now.saturating_add(limit));
        let resumed = !self.sent_by_this_run;
        let mut told = false;
        let mut settled_since: Option<(SessionState, tokio::time::Instant)> = None;
        loop {
            let state = client.state(&session).await?;
            let changes = message.state_before.diff(&state);
            let over = now_ms() >= deadline;
            if !changes.is_empty() {
                let stable = match &settled_since {
                    Some((previous, since)) if previous.diff(&state).is_empty() => {
                        since.elapsed() >= options.settle
                    }
                    _ => {
                        settled_since = Some((state.clone(), tokio::time::Instant::now()));
                        options.settle.is_zero()
                    }
                };
                if stable || over {
                    let answer = format!("Done. {changes}");
                    options.tell(JobEvent::Answer(&answer));
                    return self.edited(ctx, answer).await;
                }
            } else {
                settled_since = None;
                if over {
                    if message.answered {
                        // The turn ran to its limit and changed nothing.
                        return self.ended_unchanged(ctx, None).await;
                    }
                    // The service never confirmed it, and a turn could no longer be running:
                    // it never landed, so sending it again cannot repeat it.
                    tracing::info!(job = %self.id, "the edit message was never confirmed and did not land; sending it again");
                    self.message = None;
                    return self.advance(ctx, Stage::Uploaded).await;
                }
            }
            let left = Duration::from_millis(deadline.saturating_sub(now_ms()));
            if !told {
                options.tell(JobEvent::CheckingEdit {
                    at_most: left,
                    every: options.reconcile_interval,
                    resumed,
                    answered: message.answered,
                });
                told = true;
            }
            tokio::time::sleep(
                options
                    .reconcile_interval
                    .min(left.max(Duration::from_millis(1))),
            )
            .await;
        }
    }

    async fn wait_for_render(&mut self, ctx: &Ctx<'_>, job: &RenderJob) -> Result<()> {
        match ctx.client.wait_for_render(job, &ctx.options.wait).await {
            Ok(export) => {
                ctx.options.tell(JobEvent::Rendered);
                self.output_url = export.output_url().map(str::to_string);
                self.advance(ctx, Stage::Rendered).await
            }
            Err(err) => self.render_failed(ctx, err).await,
        }
    }

    /// A render that failed on the service is done for: the next run renders anew (a new id).
    /// Anything else (a timeout, a network failure) keeps the job, to wait for it again.
    async fn render_failed(&mut self, ctx: &Ctx<'_>, err: Error) -> Result<()> {
        if matches!(err, Error::RenderFailed { .. }) {
            self.render_job = None;
            self.advance(ctx, Stage::Edited).await?;
        }
        Err(err)
    }
}

/// True when the session's media include the upload: the name exactly as it was sent (or as
/// the file is named, for a service that decodes it), and the size when the service says it.
fn upload_is_on(
    sent: &SentUpload,
    local_name: Option<&std::ffi::OsStr>,
    state: &SessionState,
) -> bool {
    let local = local_name.and_then(|name| name.to_str());
    state.video_infos().iter().any(|media| {
        let named = [media.file_name(), media.display_name()]
            .into_iter()
            .flatten()
            .any(|name| name == sent.name || Some(name) == local);
        named && media.size().is_none_or(|size| size == sent.size)
    })
}

fn corrupt(what: &str) -> Error {
    Error::invalid_input(format!(
        "the saved job cannot be resumed: {what}; delete it and start over"
    ))
}

/// The size and SHA-256 (lower-case hex) of a file.
fn content_identity(path: &Path) -> Result<(u64, String)> {
    use sha2::Digest;
    let mut file =
        std::fs::File::open(path).map_err(|err| Error::io("could not read", path, err))?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buffer[..n]);
                size += n as u64;
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(Error::io("could not read", path, err)),
        }
    }
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    Ok((size, hex))
}

/// A cheap first look (the size) at whether `path` may be the clip.
fn content_identity_quick(path: &Path, size: u64) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| meta.len() == size)
}

/// Milliseconds since the Unix epoch, by this machine's clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
