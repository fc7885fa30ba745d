//! Export: submit a render, wait for it (resumably), cancel it, and download the result safely.
//!
//! Policy and defaults:
//! - A render is `POST /api/render/proxy/lambda` with id `render_<digits>`, `sessionId`, the
//!   draft exactly as the state returned it, and output `mp4`/`high` unless [`RenderOptions`]
//!   says otherwise. HTTP 402 is [`Error::ExportBlocked`]: never retried.
//! - The render id is the client's idempotency key, chosen before anything is sent: a
//!   [`RenderJob`] can be created ([`RenderJob::new`]), saved (it is `Serialize +
//!   Deserialize`), and submitted ([`NemoClient::submit_render`]), in that order. Submitting
//!   the same job again is safe: transient failures are retried with the same id, and a
//!   duplicate answer (HTTP 409) means "already submitted". The digits are the submission
//!   millisecond followed by six random digits (and bumped within a process), so ids from
//!   different processes do not collide.
//! - [`NemoClient::export_with`] with [`ExportOptions::job`] renders as a job made and saved
//!   beforehand, so a restart resumes the same render: it waits for the job if the service
//!   knows it, and submits it (same id) only if the service does not.
//! - The waiter polls every 30 s (the service's advice) for at most 20 minutes
//!   ([`WaitOptions`]); a failed poll (connect error, timeout, 5xx, 429) is logged and polled
//!   again at the next interval without losing the job. Unknown statuses count as running.
//! - Downloads stream to a temporary file beside the target, written by a dedicated thread
//!   fed through a bounded queue (8 chunks) so network reads and disk writes overlap; then
//!   the byte count is checked against `Content-Length`, the file synced, and renamed into
//!   place: on any failure or cancellation the temporary file is removed and nothing appears
//!   at the target. The bearer token goes only to the API's own origin, never to a CDN or
//!   across a redirect.
//! - A download is a GET, so its response head is retried like any read: backoff for
//!   transient failures (honouring `Retry-After`), one wait and replay for 429, and on the
//!   API's own origin one new token and replay for 1001/401. The wait for the head is bounded
//!   by the request timeout, and so is each silence between body chunks
//!   ([`TimeoutKind::StreamIdle`]). A body cut short is not resumed: nothing is saved, and
//!   [`NemoClient::download`] then tries the API's download endpoint.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use url::Url;

use crate::client::NemoClient;
use crate::draft::Draft;
use crate::error::{Error, Result, TimeoutKind};
use crate::session::Session;
use crate::transport::{RawResponse, Request};

/// Default poll interval: 30 s, as the service advises.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);
/// Default longest wait for a render: 20 minutes.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(20 * 60);

/// Output settings for a render.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RenderOptions {
    /// Container format. Default `mp4`.
    pub format: String,
    /// Quality preset. Default `high`.
    pub quality: String,
    /// Resolution such as `1080p`. Default: none (the service decides).
    pub resolution: Option<String>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            format: "mp4".to_string(),
            quality: "high".to_string(),
            resolution: None,
        }
    }
}

impl RenderOptions {
    /// Sets the format (default `mp4`).
    pub fn format(mut self, format: impl Into<String>) -> Self {
        self.format = format.into();
        self
    }

    /// Sets the quality (default `high`).
    pub fn quality(mut self, quality: impl Into<String>) -> Self {
        self.quality = quality.into();
        self
    }

    /// Sets the resolution, e.g. `1080p` (default: none).
    pub fn resolution(mut self, resolution: impl Into<String>) -> Self {
        self.resolution = Some(resolution.into());
        self
    }
}

/// A render job: its id (chosen by the client) and its session. Store it (it is
/// `Serialize + Deserialize`) before submitting, to resume the same render after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RenderJob {
    /// The render id (`render_<digits>`).
    pub id: String,
    /// The session it renders.
    pub session_id: String,
    /// When the job was created, milliseconds since the Unix epoch.
    #[serde(default)]
    pub submitted_at_ms: u64,
}

impl RenderJob {
    /// A new job for `session` with a fresh id, not submitted yet: save it, then
    /// [`submit_render`](NemoClient::submit_render) it.
    ///
    /// ```
    /// let session = nemo_video::Session::from_id("7301234567890123456");
    /// let job = nemo_video::render::RenderJob::new(&session);
    /// assert!(job.id.starts_with("render_"));
    /// ```
    pub fn new(session: &Session) -> RenderJob {
        let (id, submitted_at_ms) = new_render_id();
        RenderJob {
            id,
            session_id: session.id().to_string(),
            submitted_at_ms,
        }
    }

    /// Re-attaches to a render known only by its id (e.g. from a log or another process).
    pub fn from_id(id: impl Into<String>, session_id: impl Into<String>) -> RenderJob {
        RenderJob {
            id: id.into(),
            session_id: session_id.into(),
            submitted_at_ms: 0,
        }
    }
}

/// Where a render is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RenderStatus {
    /// Queued.
    Pending,
    /// Rendering.
    Processing,
    /// Done; the output can be downloaded.
    Completed {
        /// Where the MP4 is. `None` when the service did not say (use the fallback download).
        output_url: Option<String>,
    },
    /// The render failed.
    Failed {
        /// The service's reason.
        error: String,
    },
    /// The render was cancelled.
    Cancelled,
    /// A status this SDK does not know, kept as sent; treated as still running.
    Unknown(String),
}

impl RenderStatus {
    /// True when the render will not change any more.
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            RenderStatus::Completed { .. } | RenderStatus::Failed { .. } | RenderStatus::Cancelled
        )
    }

    /// The status word, as the service spells it.
    pub fn as_str(&self) -> &str {
        match self {
            RenderStatus::Pending => "pending",
            RenderStatus::Processing => "processing",
            RenderStatus::Completed { .. } => "completed",
            RenderStatus::Failed { .. } => "failed",
            RenderStatus::Cancelled => "cancelled",
            RenderStatus::Unknown(status) => status,
        }
    }
}

impl fmt::Display for RenderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One poll's answer: the status and, when sent, the progress.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RenderProgress {
    /// The render's status.
    pub status: RenderStatus,
    /// Progress from 0 to 100, when the service sent it.
    pub progress: Option<f64>,
}

impl<'de> Deserialize<'de> for RenderProgress {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let map = Map::deserialize(deserializer)?;
        Ok(RenderProgress::from_map(&map))
    }
}

impl RenderProgress {
    /// Reads both documented shapes: `{"status", "progress", "outputUrl", "error"}` (inside
    /// `data`) and `{"status", "output": {"url"}}`.
    fn from_map(map: &Map<String, Value>) -> RenderProgress {
        let text = |value: Option<&Value>| -> Option<String> {
            match value? {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Null => None,
                Value::Object(inner) => inner
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| Some(Value::Object(inner.clone()).to_string())),
                Value::String(_) => None,
                other => Some(other.to_string()),
            }
        };
        let output_url = text(map.get("outputUrl"))
            .or_else(|| text(map.get("output_url")))
            .or_else(|| {
                map.get("output")
                    .and_then(|o| o.get("url"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .or_else(|| {
                map.get("output")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        let status_word = map
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let status = match status_word.as_str() {
            "pending" | "queued" => RenderStatus::Pending,
            "processing" | "running" | "rendering" => RenderStatus::Processing,
            "completed" | "complete" | "succeeded" | "success" | "done" => {
                RenderStatus::Completed { output_url }
            }
            "failed" | "error" => RenderStatus::Failed {
                error: text(map.get("error"))
                    .unwrap_or_else(|| "the service gave no reason".to_string()),
            },
            "cancelled" | "canceled" => RenderStatus::Cancelled,
            _ => RenderStatus::Unknown(status_word),
        };
        let progress = match map.get("progress") {
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.trim().trim_end_matches('%').parse().ok(),
            _ => None,
        }
        .filter(|p: &f64| p.is_finite())
        .map(|p| p.clamp(0.0, 100.0));
        RenderProgress { status, progress }
    }
}

/// Progress callback for [`NemoClient::wait_for_render`].
pub(crate) type RenderProgressFn = Arc<dyn Fn(&RenderProgress) + Send + Sync>;

/// How to wait for a render.
#[derive(Clone)]
#[non_exhaustive]
pub struct WaitOptions {
    /// Time between polls. Default 30 s.
    pub poll_interval: Duration,
    /// Longest total wait before [`Error::RenderTimedOut`]. Default 20 minutes.
    pub max_wait: Duration,
    /// Called after each successful poll.
    pub(crate) on_progress: Option<RenderProgressFn>,
}

impl fmt::Debug for WaitOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitOptions")
            .field("poll_interval", &self.poll_interval)
            .field("max_wait", &self.max_wait)
            .field("on_progress", &self.on_progress.is_some())
            .finish()
    }
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            poll_interval: DEFAULT_POLL_INTERVAL,
            max_wait: DEFAULT_MAX_WAIT,
            on_progress: None,
        }
    }
}

impl WaitOptions {
    /// Sets the poll interval (default 30 s).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets the longest wait (default 20 minutes).
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Sets a callback run after each poll with the status and progress.
    pub fn on_progress(
        mut self,
        callback: impl Fn(&RenderProgress) + Send + Sync + 'static,
    ) -> Self {
        self.on_progress = Some(Arc::new(callback));
        self
    }
}

/// Download progress: bytes written and, when the server said, the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DownloadProgress {
    /// Bytes written so far.
    pub received: u64,
    /// `Content-Length`, when sent.
    pub total: Option<u64>,
}

/// A finished render: its job and where its output is, all that
/// [`download`](NemoClient::download) needs. It is `Serialize + Deserialize`, so a
/// process can hand it to another that downloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Export {
    job: RenderJob,
    output_url: Option<String>,
}

impl Export {
    pub(crate) fn new(job: RenderJob, output_url: Option<String>) -> Export {
        Export { job, output_url }
    }

    /// The render job.
    pub fn job(&self) -> &RenderJob {
        &self.job
    }

    /// The output URL, when the service gave one ([`download`](NemoClient::download) falls
    /// back to the API's download endpoint when it did not, or when the URL fails).
    pub fn output_url(&self) -> Option<&str> {
        self.output_url.as_deref()
    }
}

/// A download progress callback: called from the downloading task, so keep it quick.
type DownloadProgressFn = Arc<dyn Fn(DownloadProgress) + Send + Sync>;

/// Settings for a download: see [`NemoClient::download_with`].
#[derive(Clone)]
#[non_exhaustive]
pub struct DownloadOptions {
    on_progress: Option<DownloadProgressFn>,
    overwrite: bool,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            on_progress: None,
            overwrite: true,
        }
    }
}

impl DownloadOptions {
    /// Calls `callback` with the bytes written (and the total, when the server said) as the
    /// file arrives. It runs on the downloading task, so keep it quick.
    pub fn on_progress(
        mut self,
        callback: impl Fn(DownloadProgress) + Send + Sync + 'static,
    ) -> Self {
        self.on_progress = Some(Arc::new(callback));
        self
    }

    /// Whether an existing file at the path is replaced (default `true`). With `false`, an
    /// existing file is refused before anything is downloaded, and a file that appears there
    /// while the download runs is kept (the download then fails and saves nothing).
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }
}

impl fmt::Debug for DownloadOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DownloadOptions")
            .field("on_progress", &self.on_progress.is_some())
            .field("overwrite", &self.overwrite)
            .finish()
    }
}

/// Settings for an export: see [`NemoClient::export_with`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ExportOptions {
    render: RenderOptions,
    wait: WaitOptions,
    job: Option<RenderJob>,
}

impl ExportOptions {
    /// The output settings (default: [`RenderOptions::default`], mp4 at high quality).
    pub fn render(mut self, render: RenderOptions) -> Self {
        self.render = render;
        self
    }

    /// How to wait for the render: poll interval, longest wait, progress callback
    /// (default: [`WaitOptions::default`]).
    pub fn wait(mut self, wait: WaitOptions) -> Self {
        self.wait = wait;
        self
    }

    /// Renders as this job (made with [`RenderJob::new`] and saved beforehand) instead of a
    /// new one: if the service knows the job already (a run before a restart submitted it),
    /// the export waits for it rather than paying for another render; otherwise it submits
    /// the job now, with its id.
    pub fn job(mut self, job: RenderJob) -> Self {
        self.job = Some(job);
        self
    }
}

#[derive(Serialize)]
struct SubmitBody<'a> {
    id: &'a str,
    #[serde(rename = "sessionId")]
    session_id: &'a str,
    draft: &'a RawValue,
    output: OutputBody<'a>,
}

#[derive(Serialize)]
struct OutputBody<'a> {
    format: &'a str,
    quality: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolution: Option<&'a str>,
}

/// A new render id, `render_<digits>`: the millisecond, then six random digits (so two
/// processes submitting in the same millisecond still differ), bumped past the last id this
/// process handed out (so two renders in one millisecond differ too). Returns the id and
/// the millisecond.
pub(crate) fn new_render_id() -> (String, u64) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    // u64 holds milliseconds × 10^6 until the year 2554.
    let candidate = now_ms
        .saturating_mul(1_000_000)
        .saturating_add(fastrand::u64(0..1_000_000));
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = candidate.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return (format!("render_{next}"), now_ms),
            Err(actual) => last = actual,
        }
    }
}

impl NemoClient {
    /// Submits `job` (made with [`RenderJob::new`] and saved beforehand) to render `draft`.
    /// Safe to call again with the same job, after a failure or a restart: the id is the
    /// service's idempotency key, so transient failures are retried and an answer saying the
    /// id already exists (HTTP 409) counts as submitted.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, session: nemo_video::Session, draft: nemo_video::draft::Draft) -> nemo_video::Result<()> {
    /// use nemo_video::render::{RenderJob, RenderOptions, WaitOptions};
    /// let job = RenderJob::new(&session);
    /// std::fs::write("render.json", serde_json::to_vec(&job).expect("a job serializes"))
    ///     .expect("saved before submitting");
    /// client.submit_render(&job, &draft, &RenderOptions::default()).await?;
    /// let url = client.wait_for_render(&job, &WaitOptions::default()).await?;
    /// # let _ = url; Ok(()) }
    /// ```
    pub async fn submit_render(
        &self,
        job: &RenderJob,
        draft: &Draft,
        options: &RenderOptions,
    ) -> Result<()> {
        let raw_draft: &RawValue = serde_json::from_str(draft.as_json_str()).map_err(|err| {
            Error::invalid_input(format!(
                "the draft is not valid JSON ({err}); pass the draft from NemoClient::state"
            ))
        })?;
        let body = SubmitBody {
            id: &job.id,
            session_id: &job.session_id,
            draft: raw_draft,
            output: OutputBody {
                format: &options.format,
                quality: &options.quality,
                resolution: options.resolution.as_deref(),
            },
        };
        let request = Request::post(&["api", "render", "proxy", "lambda"])
            .json(&body)?
            .idempotent()
            .session(&job.session_id)
            .expect("a render job");
        let submitted: Option<serde::de::IgnoredAny> = self
            .transport()
            .call_unless_status(request, Some(reqwest::StatusCode::CONFLICT))
            .await?;
        if submitted.is_none() {
            tracing::info!(render_id = %job.id, "the render was already submitted; waiting for it");
        }
        Ok(())
    }

    /// Polls a render once.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, job: nemo_video::render::RenderJob) -> nemo_video::Result<()> {
    /// let progress = client.render_status(&job).await?;
    /// println!("{} ({:?}%)", progress.status, progress.progress);
    /// # Ok(()) }
    /// ```
    pub async fn render_status(&self, job: &RenderJob) -> Result<RenderProgress> {
        let request = Request::get(&["api", "render", "proxy", "lambda", job.id.as_str()])
            .expect("a render status");
        self.transport().call(request).await
    }

    /// Waits until the render finishes and returns it as an [`Export`], ready for
    /// [`download`](Self::download).
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, job: nemo_video::render::RenderJob) -> nemo_video::Result<()> {
    /// use nemo_video::render::WaitOptions;
    /// let options = WaitOptions::default().on_progress(|p| println!("{} {:?}%", p.status, p.progress));
    /// let export = client.wait_for_render(&job, &options).await?;
    /// client.download(&export, "edited.mp4").await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_render(&self, job: &RenderJob, options: &WaitOptions) -> Result<Export> {
        let started = Instant::now();
        let mut last_status = "not polled yet".to_string();
        loop {
            match self.render_status(job).await {
                Ok(progress) => {
                    if let Some(callback) = &options.on_progress {
                        callback(&progress);
                    }
                    last_status = match progress.progress {
                        Some(percent) => format!("{} {percent:.0}%", progress.status),
                        None => progress.status.to_string(),
                    };
                    match progress.status {
                        RenderStatus::Completed { output_url } => {
                            return Ok(Export {
                                job: job.clone(),
                                output_url,
                            })
                        }
                        RenderStatus::Failed { error } => {
                            return Err(Error::RenderFailed {
                                job_id: job.id.clone(),
                                message: error,
                            })
                        }
                        RenderStatus::Cancelled => {
                            return Err(Error::RenderFailed {
                                job_id: job.id.clone(),
                                message: "the render was cancelled".to_string(),
                            })
                        }
                        _ => {}
                    }
                }
                Err(err) if err.is_transient() => {
                    tracing::warn!(render_id = %job.id, error = %err, "render poll failed; polling again at the next interval");
                }
                Err(err) => return Err(err),
            }
            let elapsed = started.elapsed();
            if elapsed >= options.max_wait {
                return Err(Error::RenderTimedOut {
                    job_id: job.id.clone(),
                    last_status,
                    waited: elapsed,
                });
            }
            tokio::time::sleep(options.poll_interval.min(options.max_wait - elapsed)).await;
        }
    }

    /// Exports the session in one call: reads the state, refuses with
    /// [`Error::NothingToExport`] when the timeline is empty, renders (mp4, high quality),
    /// waits (polling every 30 s for up to 20 minutes), and returns the [`Export`]. Download
    /// it with [`download`](Self::download). To choose the output, watch progress or survive
    /// a restart, use [`export_with`](Self::export_with).
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, session: nemo_video::Session) -> nemo_video::Result<()> {
    /// let export = client.export(&session).await?;
    /// client.download(&export, "edited.mp4").await?;
    /// # Ok(()) }
    /// ```
    pub async fn export(&self, session: &Session) -> Result<Export> {
        self.export_with(session, &ExportOptions::default()).await
    }

    /// [`export`](Self::export) with [`ExportOptions`]: output settings, how to wait, and the
    /// render job to use. To survive a restart without paying for a second render, make the
    /// job first, save it, and pass it: run again after a crash with the saved job, and the
    /// export waits for the render the first run submitted (or submits it, same id, if it
    /// never arrived).
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, session: nemo_video::Session) -> nemo_video::Result<()> {
    /// use nemo_video::render::{ExportOptions, RenderJob, RenderOptions, WaitOptions};
    /// let job = match std::fs::read("render.json") {
    ///     Ok(saved) => serde_json::from_slice(&saved).expect("a saved job"),
    ///     Err(_) => {
    ///         let job = RenderJob::new(&session);
    ///         std::fs::write("render.json", serde_json::to_vec(&job).expect("a job serializes"))
    ///             .expect("saved before submitting");
    ///         job
    ///     }
    /// };
    /// let options = ExportOptions::default()
    ///     .render(RenderOptions::default().resolution("1080p"))
    ///     .wait(WaitOptions::default().on_progress(|p| println!("{} {:?}%", p.status, p.progress)))
    ///     .job(job);
    /// let export = client.export_with(&session, &options).await?;
    /// # let _ = export; Ok(()) }
    /// ```
    pub async fn export_with(&self, session: &Session, options: &ExportOptions) -> Result<Export> {
        match &options.job {
            Some(job) => {
                if job.session_id != session.id() {
                    return Err(Error::invalid_input(format!(
                        "render job {} belongs to session {}, not {}; pass the session the job was made for",
                        job.id,
                        job.session_id,
                        session.id()
                    )));
                }
                self.ensure_submitted(job, &options.render).await?;
                self.wait_for_render(job, &options.wait).await
            }
            None => {
                let draft = self.exportable_draft(session).await?;
                let job = RenderJob::new(session);
                self.submit_render(&job, &draft, &options.render).await?;
                self.wait_for_render(&job, &options.wait).await
            }
        }
    }

    /// Makes sure the service knows `job`: if it does not (HTTP 404 on its status, so the
    /// submission never arrived), submits it now with the same id, from the session's current
    /// timeline.
    pub(crate) async fn ensure_submitted(
        &self,
        job: &RenderJob,
        options: &RenderOptions,
    ) -> Result<()> {
        match self.render_status(job).await {
            Ok(_) => Ok(()),
            Err(Error::Http { status: 404, .. }) => {
                let session = Session::from_id(job.session_id.clone());
                let draft = self.exportable_draft(&session).await?;
                self.submit_render(job, &draft, options).await
            }
            Err(err) => Err(err),
        }
    }

    /// The session's draft, or [`Error::NothingToExport`] when its timeline is empty.
    pub(crate) async fn exportable_draft(&self, session: &Session) -> Result<Draft> {
        let state = self.state(session).await?;
        state
            .draft()
            .filter(|draft| draft.is_ready_for_export())
            .cloned()
            .ok_or_else(|| Error::NothingToExport {
                session_id: session.id().to_string(),
            })
    }

    /// Cancels a render (`POST /api/render/proxy/lambda/<id>/cancel`).
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, job: nemo_video::render::RenderJob) -> nemo_video::Result<()> {
    /// client.cancel_render(&job).await?;
    /// # Ok(()) }
    /// ```
    pub async fn cancel_render(&self, job: &RenderJob) -> Result<()> {
        let request = Request::post(&[
            "api",
            "render",
            "proxy",
            "lambda",
            job.id.as_str(),
            "cancel",
        ])
        .expect("a cancel confirmation");
        let _: serde::de::IgnoredAny = self.transport().call(request).await?;
        Ok(())
    }

    /// Downloads a finished render to `path`: from its output URL when it has one, else (or
    /// when that fails) from `GET /api/render/proxy/<id>/download`. Streamed to a temporary
    /// file beside `path`, checked against `Content-Length`, and renamed into place only
    /// when whole; an existing file is replaced. Returns the number of bytes written. The
    /// output path is checked (see [`check_output_path`]) before anything is asked of the
    /// server. The bearer token goes only to the API's own origin.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, export: nemo_video::render::Export) -> nemo_video::Result<()> {
    /// let bytes = client.download(&export, "edited.mp4").await?;
    /// println!("saved {bytes} bytes");
    /// # Ok(()) }
    /// ```
    pub async fn download(&self, export: &Export, path: impl AsRef<Path>) -> Result<u64> {
        self.download_with(export, path, &DownloadOptions::default())
            .await
    }

    /// [`download`](Self::download) with [`DownloadOptions`]: a progress callback, and
    /// whether an existing file may be replaced.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, export: nemo_video::render::Export) -> nemo_video::Result<()> {
    /// use nemo_video::render::DownloadOptions;
    /// let options = DownloadOptions::default()
    ///     .overwrite(false)
    ///     .on_progress(|p| eprint!("\r{} bytes", p.received));
    /// client.download_with(&export, "edited.mp4", &options).await?;
    /// # Ok(()) }
    /// ```
    pub async fn download_with(
        &self,
        export: &Export,
        path: impl AsRef<Path>,
        options: &DownloadOptions,
    ) -> Result<u64> {
        self.download_render_as(export, path.as_ref(), None, options)
            .await
    }

    /// [`download_with`](Self::download_with) through the temporary file
    /// `.nemo-download-<temp_name>.part` (when given) instead of a random one, so that a
    /// resumed job finds (and replaces) what a killed process left behind.
    pub(crate) async fn download_render_as(
        &self,
        export: &Export,
        path: &Path,
        temp_name: Option<&str>,
        options: &DownloadOptions,
    ) -> Result<u64> {
        let job = &export.job;
        let path = output_target(path, options.overwrite)?;
        let path = path.as_path();
        let saving = Saving {
            idle_limit: self.transport().request_timeout(),
            target: path,
            temp_name,
            options,
        };
        if let Some(url) = export.output_url() {
            let url = download_url(url)?;
            let response = self.transport().open_url(&url).await;
            let saved = match response {
                Ok(response) => saving.save(response).await,
                Err(err) => Err(err),
            };
            match saved {
                Ok(bytes) => return Ok(bytes),
                Err(err @ (Error::InvalidInput { .. } | Error::Io { .. })) => return Err(err),
                Err(err) => {
                    tracing::warn!(render_id = %job.id, error = %err, "output URL download failed; trying the API's download endpoint");
                }
            }
        }
        let url =
            self.transport()
                .url_for(&["api", "render", "proxy", job.id.as_str(), "download"]);
        let response = self.transport().open_url(&url).await?;
        saving.save(response).await
    }
}

/// The temporary file a download named `temp_name` goes through, beside `target`.
pub(crate) fn named_part(target: &Path, temp_name: &str) -> PathBuf {
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    dir.join(format!(".nemo-download-{temp_name}.part"))
}

/// `url` as an http(s) URL to download from.
fn download_url(url: &str) -> Result<Url> {
    Url::parse(url)
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https"))
        .ok_or_else(|| {
            Error::invalid_input(format!("{url:?} is not an http(s) URL to download from"))
        })
}

/// Chunks queued between the network and the writer thread. A chunk is one read of the
/// connection (at most about 400 KiB), so this keeps a download's memory to about 3 MiB
/// while letting the network run ahead of the disk for a moment.
const WRITE_QUEUE: usize = 8;

/// What the network side tells the writer thread.
enum WriterMessage {
    Chunk(Bytes),
    /// Every byte arrived: sync the file and report.
    Finish,
}

/// Starts the thread that writes the download to `file`. Network reads and disk writes then
/// overlap instead of taking turns on one task, and the async runtime never blocks on the
/// disk. The thread reports once: `Ok` after [`WriterMessage::Finish`] when every write and
/// the sync succeeded, or else the first error. When the sender is dropped without `Finish`
/// (the download failed or was cancelled) it stops without syncing.
fn spawn_writer(
    mut file: File,
) -> std::io::Result<(
    tokio::sync::mpsc::Sender<WriterMessage>,
    tokio::sync::oneshot::Receiver<std::io::Result<()>>,
)> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel(WRITE_QUEUE);
    let (report, written) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("nemo-download-writer".to_string())
        .spawn(move || {
            let mut result = Ok(());
            while let Some(message) = receiver.blocking_recv() {
                match message {
                    // Chunks go straight to the file: they are already large, so a write
                    // buffer would only add a copy.
                    WriterMessage::Chunk(chunk) => {
                        if let Err(err) = file.write_all(&chunk) {
                            result = Err(err);
                            break;
                        }
                    }
                    WriterMessage::Finish => {
                        // Durability before the rename: after a crash the target is either
                        // absent or the whole file, never a torn one. It costs little here
                        // because it runs on this thread, after the writes that already
                        // overlapped the network, and never blocks the async runtime.
                        result = file.sync_all();
                        break;
                    }
                }
            }
            drop(receiver);
            drop(file);
            let _ = report.send(result);
        })?;
    Ok((sender, written))
}

/// Checks that a download can be saved at `path`, without sending anything, and returns the
/// absolute path. [`NemoClient::download`] and [`NemoClient::download_with`] run the same
/// checks before their first request; call it yourself to refuse a bad output path before
/// uploading, editing and rendering.
///
/// `path` must not be empty or a folder; its folder must exist and accept new files (checked
/// by creating and removing an empty file there); an existing file at `path` must be a
/// regular file (it will be replaced). Each failure is one [`Error::InvalidInput`] naming
/// the path and what to do.
///
/// ```
/// use nemo_video::render::check_output_path;
///
/// let err = check_output_path("no_such_folder/edited.mp4").unwrap_err();
/// assert!(err.to_string().contains("does not exist"));
/// ```
pub fn check_output_path(path: impl AsRef<Path>) -> Result<PathBuf> {
    output_target(path.as_ref(), true)
}

/// [`check_output_path`], and also refuses an output that is the file `input` (the same file
/// by any path: relative or absolute, through `..`, a symbolic or a hard link), since saving
/// there would overwrite the input.
///
/// ```no_run
/// use nemo_video::render::check_output_path_for;
///
/// let err = check_output_path_for("./clip.mp4", "clip.mp4").unwrap_err();
/// assert!(err.to_string().contains("is the input"));
/// ```
pub fn check_output_path_for(path: impl AsRef<Path>, input: impl AsRef<Path>) -> Result<PathBuf> {
    let target = output_target(path.as_ref(), true)?;
    if same_file(&target, input.as_ref()) {
        return Err(Error::invalid_input(format!(
            "the output {} is the input file; choose another output path (saving there would overwrite the input)",
            path.as_ref().display()
        )));
    }
    Ok(target)
}

/// Whether `a` and `b` name the same file. A path that does not exist is another file than
/// any existing one.
fn same_file(a: &Path, b: &Path) -> bool {
    if let (Ok(a), Ok(b)) = (std::path::absolute(a), std::path::absolute(b)) {
        if a == b {
            return true;
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(a), Ok(b)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return a.dev() == b.dev() && a.ino() == b.ino();
        }
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The absolute download target, after the checks of [`check_output_path`]; with
/// `overwrite` false, an existing file there is refused too.
fn output_target(path: &Path, overwrite: bool) -> Result<PathBuf> {
    let target = absolute(path)?;
    let dir = target.parent().unwrap_or_else(|| Path::new("/"));
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(Error::invalid_input(format!(
                "{} is not a folder, so {} cannot be created; choose another output path",
                dir.display(),
                path.display()
            )))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::invalid_input(format!(
                "the folder {} does not exist; create it or choose another output path",
                dir.display()
            )))
        }
        Err(err) => {
            return Err(Error::invalid_input(format!(
                "cannot open the folder {} ({}); choose another output path",
                dir.display(),
                io_reason(&err)
            )))
        }
    }
    if let Ok(meta) = std::fs::metadata(&target) {
        if !meta.is_file() {
            return Err(Error::invalid_input(format!(
                "{} exists and is not a regular file; choose another output path",
                path.display()
            )));
        }
        if !overwrite {
            return Err(Error::invalid_input(format!(
                "{} exists and overwriting was not allowed; choose another output path, remove the file, or allow it with DownloadOptions::overwrite(true)",
                path.display()
            )));
        }
    }
    check_writable(dir)?;
    Ok(target)
}

/// Proves that `dir` accepts new files by creating and removing an empty one, so a render is
/// not paid for and waited on only to fail at the end. The probe's name never reaches a
/// message.
fn check_writable(dir: &Path) -> Result<()> {
    let probe = dir.join(format!(
        ".nemo-write-check-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(file) => {
            drop(file);
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(err) => Err(Error::invalid_input(format!(
            "the folder {} is not writable ({}); choose another output folder",
            dir.display(),
            io_reason(&err)
        ))),
    }
}

/// What an I/O error means for a folder, in words (never with a path in them).
fn io_reason(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        std::io::ErrorKind::ReadOnlyFilesystem => "read-only file system".to_string(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            "no space left".to_string()
        }
        // A folder that exists but where a new file "does not exist": /proc, /sys and the like.
        std::io::ErrorKind::NotFound => "it does not accept new files".to_string(),
        _ => err.to_string(),
    }
}

/// Where and how a download is saved.
struct Saving<'a> {
    /// The longest silence between two pieces of the body.
    idle_limit: Duration,
    /// The target, checked by [`output_target`].
    target: &'a Path,
    /// The temporary file's fixed name (see [`named_part`]), else a random one.
    temp_name: Option<&'a str>,
    options: &'a DownloadOptions,
}

impl Saving<'_> {
    /// Streams a response body into the target through a temporary file in the same
    /// directory.
    async fn save(&self, response: RawResponse) -> Result<u64> {
        let Saving {
            idle_limit,
            target,
            temp_name,
            options,
        } = *self;
        let RawResponse { mut response, .. } = response;
        let target = target.to_path_buf();
        let dir = target
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let total = response.content_length();
        let (file, temp_path) = match temp_name {
            None => tempfile::Builder::new()
                .prefix(".nemo-download-")
                .suffix(".part")
                .tempfile_in(&dir)
                .map_err(|err| Error::io("could not create a temporary file in", &dir, err))?
                .into_parts(),
            Some(name) => {
                // A fixed name, replacing whatever an earlier (killed) run left there; private,
                // like tempfile's.
                let path = named_part(&target, name);
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create(true).truncate(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                let file = options
                    .open(&path)
                    .map_err(|err| Error::io("could not create a temporary file in", &dir, err))?;
                let temp = tempfile::TempPath::try_from_path(&path)
                    .map_err(|err| Error::io("could not create a temporary file in", &dir, err))?;
                (file, temp)
            }
        };
        // `temp_path` stays with this future: dropping it on any early return (error or
        // cancellation) deletes the file at once, even while the writer thread still holds it
        // open.
        let (chunks, written) =
            spawn_writer(file).map_err(|err| Error::io("could not start writing", &target, err))?;
        let mut received: u64 = 0;
        let mut writer_stopped = false;
        loop {
            let next = tokio::time::timeout(idle_limit, response.chunk())
                .await
                .map_err(|_| Error::Timeout {
                    kind: TimeoutKind::StreamIdle,
                    after: idle_limit,
                })?;
            let chunk = match next {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(err) => {
                    return Err(Error::Network {
                        may_have_reached_server: true,
                        source: Box::new(err.without_url()),
                    })
                }
            };
            received += chunk.len() as u64;
            if total.is_some_and(|total| received > total) {
                return Err(short_download(received, total));
            }
            if chunks.send(WriterMessage::Chunk(chunk)).await.is_err() {
                // The writer stopped on an error; its report below says which.
                writer_stopped = true;
                break;
            }
            if let Some(progress) = &options.on_progress {
                progress(DownloadProgress { received, total });
            }
        }
        if !writer_stopped && total.is_some_and(|total| received != total) {
            // Dropping `chunks` without `Finish` stops the writer without a sync.
            return Err(short_download(received, total));
        }
        // When the writer has already failed, this send fails too and its report has the error.
        let _ = chunks.send(WriterMessage::Finish).await;
        match written.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(Error::io("could not write to", &target, err)),
            Err(_) => {
                return Err(Error::io(
                    "could not write to",
                    &target,
                    std::io::Error::other("the download writer thread stopped unexpectedly"),
                ))
            }
        }
        if total.is_some_and(|total| received != total) {
            return Err(short_download(received, total));
        }
        // The temporary file is private (0600); the result should have an ordinary file's mode:
        // the replaced file's, or rw-r--r--.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&target)
                .map(|meta| meta.permissions().mode() & 0o7777)
                .unwrap_or(0o644);
            std::fs::set_permissions(&*temp_path, std::fs::Permissions::from_mode(mode))
                .map_err(|err| Error::io("could not set permissions on", &target, err))?;
        }
        let persisted = if options.overwrite {
            temp_path.persist(&target)
        } else {
            // A link that fails when the name is taken: a file that appeared meanwhile is kept.
            temp_path.persist_noclobber(&target)
        };
        persisted.map_err(|err| {
        if err.error.kind() == std::io::ErrorKind::AlreadyExists {
            Error::invalid_input(format!(
                "{} appeared while the video was downloading and overwriting was not allowed; nothing was saved: choose another output path or allow it with DownloadOptions::overwrite(true)",
                target.display()
            ))
        } else {
            Error::io(
                "could not move the download into place at",
                &target,
                err.error,
            )
        }
    })?;
        Ok(received)
    }
}

fn short_download(received: u64, total: Option<u64>) -> Error {
    Error::Network {
        may_have_reached_server: true,
        source: Box::new(std::io::Error::other(format!(
            "the download ended after {received} of {} bytes; nothing was saved, try again",
            total.map_or_else(|| "?".to_string(), |t| t.to_string())
        ))),
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.as_os_str().is_empty() {
        return Err(Error::invalid_input(
            "the output path is empty; name a file such as edited.mp4",
        ));
    }
    if path.is_dir() {
        return Err(Error::invalid_input(format!(
            "{} is a folder; name a file inside it, such as {}/edited.mp4",
            path.display(),
            path.display()
        )));
    }
    std::path::absolute(path).map_err(|err| Error::io("could not resolve", path, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(json: &str) -> RenderProgress {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn both_status_shapes() {
        let a = progress(
            r#"{"id":"r","status":"completed","progress":100,"outputUrl":"https://cdn/x.mp4"}"#,
        );
        assert_eq!(
            a.status,
            RenderStatus::Completed {
                output_url: Some("https://cdn/x.mp4".into())
            }
        );
        let b = progress(r#"{"status":"completed","output":{"url":"https://cdn/y.mp4"}}"#);
        assert_eq!(
            b.status,
            RenderStatus::Completed {
                output_url: Some("https://cdn/y.mp4".into())
            }
        );
        let failed = progress(r#"{"status":"failed","error":"boom"}"#);
        assert_eq!(
            failed.status,
            RenderStatus::Failed {
                error: "boom".into()
            }
        );
        let odd = progress(r#"{"status":"warming_up","progress":"12%"}"#);
        assert_eq!(odd.status, RenderStatus::Unknown("warming_up".into()));
        assert_eq!(odd.progress, Some(12.0));
        assert!(!odd.status.is_finished());
    }

    #[test]
    fn ids_are_unique_within_a_millisecond() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_render_id().0).collect();
        assert_eq!(ids.len(), 1000);
        // The millisecond leads (bumped forward at most), so ids still sort by time.
        let (id, ms) = new_render_id();
        let digits: u64 = id[7..].parse().unwrap();
        assert!(digits / 1_000_000 >= ms, "{id} {ms}");
        assert!(ids
            .iter()
            .all(|id| id.starts_with("render_") && id[7..].bytes().all(|b| b.is_ascii_digit())));
    }
}
