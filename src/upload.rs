//! Uploads: local files streamed from disk as one multipart request, or media by URL.
//!
//! Policy and defaults:
//! - Checked locally before anything is sent: each file exists, is a readable regular file,
//!   has a supported extension (case-insensitive: mp4 mov avi webm mkv jpg png gif webp mp3
//!   wav m4a aac), is not empty, and is within the size limit (500 MiB by default,
//!   [`NemoClientBuilder::max_upload_bytes`](crate::NemoClientBuilder::max_upload_bytes)).
//!   A failed check sends no request. [`check_upload_file`] runs the same checks on their
//!   own, so an app can refuse a bad file before it opens a session.
//! - One `multipart/form-data` request with one part named `files` per file, the file name
//!   kept, and an exact `Content-Length`. Bodies are streamed from disk by a reader thread in
//!   256 KiB reads with at most 4 chunks in flight, into six buffers recycled for the whole
//!   upload, so memory stays flat (about 1.5 MiB of buffers) whatever the size.
//! - Uploading is not idempotent (a second upload adds a second copy): it is re-sent only when
//!   the request certainly never reached the server.
//! - Time limit: the upload follows its progress, not an assumed bandwidth. It fails when
//!   the connection accepts no bytes for the request timeout (60 s by default); a slow uplink
//!   that keeps moving finishes, however long it takes. Progress is seen at the grain of the
//!   body's 256 KiB chunks (8 s apart at 32 KiB/s; slicing them finer cost a 500 MiB upload
//!   on loopback 13% more CPU and showed no more, since the kernel's send buffer takes bytes
//!   in bursts anyway). The operating system takes the last few megabytes into its socket
//!   buffers at once and sends them on unseen, so after the last byte the answer may take
//!   the request timeout plus 1 s per 32 KiB of what those buffers can hold (at most 4 MiB:
//!   128 s), the one place a floor on the uplink (32 KiB/s) is assumed.
//! - URL imports accept only `http`/`https` URLs with a host.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::client::NemoClient;
use crate::error::{Error, Result, SUPPORTED_FORMATS};
use crate::session::Session;
use crate::transport::{Request, StreamBody};

/// Size of each read from disk.
const READ_CHUNK: usize = 256 * 1024;
/// Chunks buffered between the reader thread and the connection.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Progress of an upload, passed to the progress callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct UploadProgress {
    /// Bytes handed to the connection so far (multipart framing included).
    pub sent: u64,
    /// Bytes the whole request body will have.
    pub total: u64,
}

/// A progress callback: called from the uploading task, so keep it quick.
pub(crate) type ProgressFn = Arc<dyn Fn(UploadProgress) + Send + Sync>;

/// Settings for an upload: see [`NemoClient::upload_with`].
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct UploadOptions {
    on_progress: Option<ProgressFn>,
}

impl UploadOptions {
    /// Calls `callback` with the bytes sent and the total as the body streams out. It runs
    /// on the uploading task, so keep it quick.
    pub fn on_progress(
        mut self,
        callback: impl Fn(UploadProgress) + Send + Sync + 'static,
    ) -> Self {
        self.on_progress = Some(Arc::new(callback));
        self
    }
}

impl fmt::Debug for UploadOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadOptions")
            .field("on_progress", &self.on_progress.is_some())
            .finish()
    }
}

/// One uploaded file as the service describes it. Every field is optional; fields this SDK
/// does not know are kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct UploadedFile {
    /// File name as stored.
    pub filename: Option<String>,
    /// Kind of media (`video`, `image`, `audio`, ...).
    pub file_type: Option<String>,
    /// Where the service stored it.
    pub cdn_url: Option<String>,
    /// Duration in seconds.
    pub duration: Option<f64>,
    /// Width in pixels.
    pub width: Option<u32>,
    /// Height in pixels.
    pub height: Option<u32>,
    /// Frames per second.
    pub fps: Option<f64>,
    /// Content hash.
    pub hash: Option<String>,
    /// Everything else the service sent.
    pub extra: Map<String, Value>,
}

/// The result of an upload.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct UploadResult {
    /// The uploaded files, in the order the service listed them.
    pub files: Vec<UploadedFile>,
    /// Whether the service added the media to the session's state.
    pub session_state_applied: Option<bool>,
    /// Everything else the service sent.
    pub extra: Map<String, Value>,
}

impl<'de> Deserialize<'de> for UploadResult {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let mut map = Map::deserialize(deserializer)?;
        let files = match map.remove("files") {
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    Value::Object(map) => UploadedFile::from_map(map),
                    other => {
                        let mut extra = Map::new();
                        extra.insert("value".to_string(), other);
                        UploadedFile {
                            extra,
                            ..UploadedFile::default()
                        }
                    }
                })
                .collect(),
            Some(other) => {
                map.insert("files".to_string(), other);
                Vec::new()
            }
            None => Vec::new(),
        };
        let session_state_applied = match map.remove("session_state_applied") {
            Some(Value::Bool(applied)) => Some(applied),
            Some(other) => {
                map.insert("session_state_applied".to_string(), other);
                None
            }
            None => None,
        };
        Ok(UploadResult {
            files,
            session_state_applied,
            extra: map,
        })
    }
}

impl UploadedFile {
    /// Takes the known fields out of `map` when they have the expected type; anything else
    /// (unknown keys, or known keys with surprising types) stays in `extra`.
    fn from_map(mut map: Map<String, Value>) -> UploadedFile {
        fn take<T>(
            map: &mut Map<String, Value>,
            key: &str,
            convert: impl Fn(&Value) -> Option<T>,
        ) -> Option<T> {
            let value = map.get(key)?;
            let converted = convert(value)?;
            map.remove(key);
            Some(converted)
        }
        let string = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let float = |v: &Value| match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        let pixels = |v: &Value| match v {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()).or_else(|| {
                n.as_f64()
                    .filter(|f| *f >= 0.0 && *f < 1e9)
                    .map(|f| f.round() as u32)
            }),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        UploadedFile {
            filename: take(&mut map, "filename", string),
            file_type: take(&mut map, "file_type", string),
            cdn_url: take(&mut map, "cdn_url", string),
            duration: take(&mut map, "duration", float),
            width: take(&mut map, "width", pixels),
            height: take(&mut map, "height", pixels),
            fps: take(&mut map, "fps", float),
            hash: take(&mut map, "hash", string),
            extra: map,
        }
    }
}

/// A file checked and ready to send.
#[derive(Clone)]
struct CheckedFile {
    path: PathBuf,
    file_name: String,
    content_type: &'static str,
    len: u64,
}

impl fmt::Debug for CheckedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckedFile")
            .field("path", &self.path)
            .field("len", &self.len)
            .finish()
    }
}

/// The MIME type sent for each supported extension.
fn content_type_for(extension: &str) -> Option<&'static str> {
    Some(match extension {
        "mp4" => "video/mp4",
        "mov" => "video/quicktime",
        "avi" => "video/x-msvideo",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        "jpg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "m4a" => "audio/mp4",
        "aac" => "audio/aac",
        _ => return None,
    })
}

/// Checks a file the way [`NemoClient::upload`] does before sending anything, and
/// returns its size in bytes. Use it to refuse a bad input before opening a session or
/// spending credits.
///
/// In this order: the file exists, is a regular file (not a folder), can be opened for
/// reading, has a supported extension ([`SUPPORTED_FORMATS`], any case), is not empty, and is
/// at most `max_bytes` long (the client's limit is
/// [`Config::max_upload_bytes`](crate::Config::max_upload_bytes), by default
/// [`DEFAULT_MAX_UPLOAD_BYTES`](crate::DEFAULT_MAX_UPLOAD_BYTES)). Each failure is one
/// error naming the file and what to do: [`Error::InvalidInput`],
/// [`Error::Io`], [`Error::UnsupportedFile`] or [`Error::FileTooLarge`].
///
/// ```
/// use nemo_video::upload::check_upload_file;
/// use nemo_video::DEFAULT_MAX_UPLOAD_BYTES;
///
/// let err = check_upload_file("no_such_clip.mp4", DEFAULT_MAX_UPLOAD_BYTES).unwrap_err();
/// assert!(err.to_string().contains("does not exist"));
/// ```
pub fn check_upload_file(path: impl AsRef<Path>, max_bytes: u64) -> Result<u64> {
    check_file(path.as_ref(), max_bytes).map(|file| file.len)
}

/// Runs every local check on one file; sends nothing.
fn check_file(path: &Path, limit: u64) -> Result<CheckedFile> {
    let metadata = std::fs::metadata(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => {
            Error::invalid_input(format!("{} does not exist; check the path", path.display()))
        }
        _ => Error::io("could not read", path, err),
    })?;
    if !metadata.is_file() {
        return Err(Error::invalid_input(format!(
            "{} is not a regular file; pass a media file",
            path.display()
        )));
    }
    // Opening proves it is readable now, rather than failing halfway through the upload.
    File::open(path).map_err(|err| Error::io("could not open", path, err))?;
    let extension = path
        .extension()
        .and_then(|ext| ext.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    debug_assert!(SUPPORTED_FORMATS
        .iter()
        .all(|f| content_type_for(f).is_some()));
    let Some(content_type) = content_type_for(&extension) else {
        return Err(Error::UnsupportedFile {
            file: Some(path.to_path_buf()),
            extension: Some(extension).filter(|e| !e.is_empty()),
            info: None,
        });
    };
    let len = metadata.len();
    // An empty file would be uploaded, "edited" and charged for, with nothing to work on.
    if len == 0 {
        return Err(Error::invalid_input(format!(
            "{} is empty (0 bytes); pass a media file with content",
            path.display()
        )));
    }
    if len > limit {
        return Err(Error::FileTooLarge {
            file: Some(path.to_path_buf()),
            size: Some(len),
            limit: Some(limit),
            info: None,
        });
    }
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("upload.{extension}"));
    Ok(CheckedFile {
        path: path.to_path_buf(),
        file_name,
        content_type,
        len,
    })
}

/// Quotes a file name for a `Content-Disposition` header as browsers do (WHATWG): `"`, CR and
/// LF are percent-encoded; other bytes, UTF-8 included, pass through.
fn quote_filename(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for ch in name.chars() {
        match ch {
            '"' => out.push_str("%22"),
            '\r' => out.push_str("%0D"),
            '\n' => out.push_str("%0A"),
            other => out.push(other),
        }
    }
    out
}

/// The multipart framing around each file, computed once so the length is exact.
struct MultipartPlan {
    boundary: String,
    heads: Vec<Bytes>,
    tail: Bytes,
    files: Vec<CheckedFile>,
    total: u64,
}

impl MultipartPlan {
    fn new(files: Vec<CheckedFile>) -> MultipartPlan {
        let boundary = format!("nemo-video-{}", uuid::Uuid::new_v4().simple());
        let heads: Vec<Bytes> = files
            .iter()
            .enumerate()
            .map(|(index, file)| {
                let lead = if index == 0 { "" } else { "\r\n" };
                Bytes::from(format!(
                    "{lead}--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{}\"\r\nContent-Type: {}\r\n\r\n",
                    quote_filename(&file.file_name),
                    file.content_type
                ))
            })
            .collect();
        let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
        let total = heads.iter().map(|h| h.len() as u64).sum::<u64>()
            + files.iter().map(|f| f.len).sum::<u64>()
            + tail.len() as u64;
        MultipartPlan {
            boundary,
            heads,
            tail,
            files,
            total,
        }
    }

    /// Starts a reader thread that produces the body's chunks, and wraps them as a body.
    fn body(&self, progress: Option<ProgressFn>, watch: Arc<Watch>) -> Result<StreamBody> {
        let (sender, receiver) =
            tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(CHUNKS_IN_FLIGHT);
        let heads = self.heads.clone();
        let tail = self.tail.clone();
        let files = self.files.clone();
        // Failing here, before the request starts, means nothing is sent at all.
        std::thread::Builder::new()
            .name("nemo-upload-reader".to_string())
            .spawn(move || produce_chunks(&heads, &files, tail, &sender))
            .map_err(|err| Error::Network {
                may_have_reached_server: false,
                source: Box::new(std::io::Error::other(format!(
                    "could not start the upload reader thread: {err}"
                ))),
            })?;
        let total = self.total;
        watch.set(Phase::Sending(tokio::time::Instant::now()));
        let stream = async_stream::stream! {
            let mut receiver = receiver;
            let mut sent = 0u64;
            // The attempt's body, however it ends: dropped before its end, the attempt is
            // over (the transport may wait, then send a new body).
            let _attempt = AttemptGuard(Arc::clone(&watch));
            while let Some(chunk) = receiver.recv().await {
                let bytes = match chunk {
                    Ok(bytes) => bytes,
                    Err(err) => {
                        yield Err(err);
                        continue;
                    }
                };
                sent += bytes.len() as u64;
                // Asked for: the connection took what it had. The last chunk completes the
                // body (the connection may not ask for more: it knows the length).
                let now = tokio::time::Instant::now();
                watch.set(if sent == total { Phase::Sent(now) } else { Phase::Sending(now) });
                if let Some(progress) = &progress {
                    progress(UploadProgress { sent, total });
                }
                yield Ok(bytes);
            }
            if sent != total {
                yield Err(std::io::Error::other("the upload body ended early"));
            }
        };
        Ok(StreamBody {
            body: reqwest::Body::wrap_stream(stream),
            content_type: format!("multipart/form-data; boundary={}", self.boundary),
            content_length: self.total,
        })
    }
}

/// A read buffer on loan to the connection. When the connection is done with the chunk (the
/// last `Bytes` clone is dropped) the buffer goes back to the reader thread's pool, so a whole
/// upload allocates and zeroes a handful of buffers once, whatever the file size, instead of a
/// fresh zeroed buffer for every read.
struct PooledChunk {
    buffer: Vec<u8>,
    len: usize,
    pool: std::sync::mpsc::Sender<Vec<u8>>,
}

impl AsRef<[u8]> for PooledChunk {
    fn as_ref(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

impl Drop for PooledChunk {
    fn drop(&mut self) {
        // The reader may have finished already; then the buffer is simply freed.
        let _ = self.pool.send(std::mem::take(&mut self.buffer));
    }
}

/// The reader thread's buffers: up to `limit` of them, recycled from the connection.
struct BufferPool {
    returned: std::sync::mpsc::Receiver<Vec<u8>>,
    return_to: std::sync::mpsc::Sender<Vec<u8>>,
    allocated: usize,
    limit: usize,
    buffer_len: usize,
}

impl BufferPool {
    fn new(limit: usize, buffer_len: usize) -> BufferPool {
        let (return_to, returned) = std::sync::mpsc::channel();
        BufferPool {
            returned,
            return_to,
            allocated: 0,
            limit,
            buffer_len,
        }
    }

    /// A buffer of `buffer_len` bytes: a returned one, a new one while under the limit, or
    /// else the next one the connection gives back. `None` when the body was dropped.
    fn take(
        &mut self,
        sender: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    ) -> Option<Vec<u8>> {
        if let Ok(buffer) = self.returned.try_recv() {
            return Some(buffer);
        }
        if self.allocated < self.limit {
            self.allocated += 1;
            return Some(vec![0; self.buffer_len]);
        }
        loop {
            match self.returned.recv_timeout(Duration::from_millis(100)) {
                Ok(buffer) => return Some(buffer),
                // Chunks still queued in a closed channel may never come back; stop instead.
                Err(_) if sender.is_closed() => return None,
                Err(_) => {}
            }
        }
    }
}

/// The reader thread: framing and file bytes, exactly `len` bytes per file. Stops as soon as
/// the receiver is gone (request dropped or failed).
fn produce_chunks(
    heads: &[Bytes],
    files: &[CheckedFile],
    tail: Bytes,
    sender: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) {
    // The chunks in the channel, one the connection is writing, and one being filled.
    let mut pool = BufferPool::new(CHUNKS_IN_FLIGHT + 2, READ_CHUNK);
    for (head, file) in heads.iter().zip(files) {
        if sender.blocking_send(Ok(head.clone())).is_err() {
            return;
        }
        let mut reader = match File::open(&file.path) {
            Ok(reader) => reader,
            Err(err) => {
                let _ = sender.blocking_send(Err(err));
                return;
            }
        };
        let mut remaining = file.len;
        while remaining > 0 {
            let Some(mut buffer) = pool.take(sender) else {
                return;
            };
            let want = buffer
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let mut filled = 0;
            while filled < want {
                match reader.read(&mut buffer[filled..want]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        let _ = sender.blocking_send(Err(err));
                        return;
                    }
                }
            }
            if filled == 0 {
                let _ = sender.blocking_send(Err(std::io::Error::other(format!(
                    "{} shrank while it was being uploaded",
                    file.path.display()
                ))));
                return;
            }
            remaining -= filled as u64;
            let chunk = Bytes::from_owner(PooledChunk {
                buffer,
                len: filled,
                pool: pool.return_to.clone(),
            });
            if sender.blocking_send(Ok(chunk)).is_err() {
                return;
            }
        }
    }
    let _ = sender.blocking_send(Ok(tail));
}

#[derive(Serialize)]
struct UrlUploadBody<'a> {
    urls: &'a [String],
    source_type: &'static str,
}

impl NemoClient {
    /// Uploads local files into the session as one multipart request (one `files` part per
    /// file). See the [module docs](crate::upload) for the checks made before sending.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, session: nemo_video::Session) -> nemo_video::Result<()> {
    /// let result = client.upload(&session, &["clip.mp4"]).await?;
    /// for file in &result.files {
    ///     println!("{:?}: {:?} s", file.filename, file.duration);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn upload<P: AsRef<Path>>(
        &self,
        session: &Session,
        paths: &[P],
    ) -> Result<UploadResult> {
        self.upload_files_inner(session, paths, None).await
    }

    /// [`upload`](Self::upload) with [`UploadOptions`], such as a progress callback.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, session: nemo_video::Session) -> nemo_video::Result<()> {
    /// use nemo_video::upload::UploadOptions;
    /// let options = UploadOptions::default().on_progress(|p| eprint!("\r{} / {} bytes", p.sent, p.total));
    /// client.upload_with(&session, &["clip.mp4"], &options).await?;
    /// # Ok(()) }
    /// ```
    pub async fn upload_with<P: AsRef<Path>>(
        &self,
        session: &Session,
        paths: &[P],
        options: &UploadOptions,
    ) -> Result<UploadResult> {
        self.upload_files_inner(session, paths, options.on_progress.clone())
            .await
    }

    pub(crate) async fn upload_files_inner<P: AsRef<Path>>(
        &self,
        session: &Session,
        paths: &[P],
        progress: Option<ProgressFn>,
    ) -> Result<UploadResult> {
        if paths.is_empty() {
            return Err(Error::invalid_input(
                "no files to upload; pass at least one path",
            ));
        }
        let limit = self.config().max_upload_bytes;
        let files = paths
            .iter()
            .map(|path| check_file(path.as_ref(), limit))
            .collect::<Result<Vec<_>>>()?;
        let plan = Arc::new(MultipartPlan::new(files));
        let stall = self.config().request_timeout;
        let watch = Arc::new(Watch::new(plan.total));
        let factory_plan = Arc::clone(&plan);
        let factory_watch = Arc::clone(&watch);
        // No overall limit: the watch below limits silence instead (see the module docs).
        let request = Request::post(&["api", "upload-video", "nemo_agent", "me", session.id()])
            .stream_body(Arc::new(move || {
                factory_plan.body(progress.clone(), Arc::clone(&factory_watch))
            }))
            .timeout(None)
            .session(session.id())
            .expect("an upload result");
        let path = format!("/api/upload-video/nemo_agent/me/{}", session.id());
        tokio::select! {
            result = self.transport().call(request) => result,
            stalled = watch.stalled(stall) => Err(Error::Unconfirmed {
                request: format!("POST {path}"),
                cause: Box::new(stalled),
            }),
        }
        .map_err(|err| attach_file(err, &plan.files))
    }

    /// Imports media by URL (`{"urls": [...], "source_type": "url"}`). Only `http`/`https`
    /// URLs are accepted.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, session: nemo_video::Session) -> nemo_video::Result<()> {
    /// client.upload_urls(&session, &["https://example.com/clip.mp4"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn upload_urls<S: AsRef<str>>(
        &self,
        session: &Session,
        urls: &[S],
    ) -> Result<UploadResult> {
        if urls.is_empty() {
            return Err(Error::invalid_input(
                "no URLs to import; pass at least one http(s) URL",
            ));
        }
        let urls = urls
            .iter()
            .map(|raw| {
                let raw = raw.as_ref().trim();
                match url::Url::parse(raw) {
                    Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => Ok(url.to_string()),
                    _ => Err(Error::invalid_input(format!(
                        "{raw:?} is not an http(s) URL; only http:// and https:// links can be imported"
                    ))),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let request = Request::post(&["api", "upload-video", "nemo_agent", "me", session.id()])
            .json(&UrlUploadBody {
                urls: &urls,
                source_type: "url",
            })?
            .session(session.id())
            .expect("an upload result");
        self.transport().call(request).await
    }
}

/// Where an upload attempt is, for its stall limit.
#[derive(Clone, Copy, Default)]
enum Phase {
    /// No attempt's body is out (before the first, or between two while the transport waits).
    #[default]
    Idle,
    /// The connection last took a piece of the body at this time.
    Sending(tokio::time::Instant),
    /// The whole body was handed over at this time; the answer is awaited.
    Sent(tokio::time::Instant),
}

/// What an upload's bodies report of their progress: the phase, in one atomic word (it is
/// set for every piece of the body): 0 for idle, else the time since `base` in nanoseconds
/// plus one, with the top bit set once the body was all sent.
struct Watch {
    base: tokio::time::Instant,
    phase: std::sync::atomic::AtomicU64,
    /// The longest the bytes of the body may still be on their way once all were handed
    /// over: sitting in socket buffers, sent on at no rate this client can see.
    unseen: Duration,
}

/// What the operating system's socket buffers hold at most (Linux grows a TCP send buffer up
/// to 4 MiB by default), and the slowest uplink they are allowed to drain at.
const MAX_BUFFERED: u64 = 4 * 1024 * 1024;
const SLOWEST_UPLINK_PER_SEC: u64 = 32 * 1024;
/// The top bit of [`Watch`]'s word: the body was all sent.
const SENT: u64 = 1 << 63;

impl Watch {
    fn new(total: u64) -> Watch {
        Watch {
            base: tokio::time::Instant::now(),
            phase: std::sync::atomic::AtomicU64::new(0),
            unseen: Duration::from_secs(total.min(MAX_BUFFERED).div_ceil(SLOWEST_UPLINK_PER_SEC)),
        }
    }

    fn set(&self, phase: Phase) {
        let since = |at: tokio::time::Instant| {
            let nanos = at.saturating_duration_since(self.base).as_nanos();
            u64::try_from(nanos).unwrap_or(u64::MAX >> 1).min(SENT - 2) + 1
        };
        let word = match phase {
            Phase::Idle => 0,
            Phase::Sending(at) => since(at),
            Phase::Sent(at) => since(at) | SENT,
        };
        self.phase.store(word, std::sync::atomic::Ordering::Relaxed);
    }

    fn phase(&self) -> Phase {
        let word = self.phase.load(std::sync::atomic::Ordering::Relaxed);
        if word == 0 {
            return Phase::Idle;
        }
        let at = self.base + Duration::from_nanos((word & !SENT) - 1);
        if word & SENT != 0 {
            Phase::Sent(at)
        } else {
            Phase::Sending(at)
        }
    }

    /// Resolves when the connection has taken nothing for `stall`, or no answer came within
    /// `stall` (plus what buffered bytes may need) of the last byte: the timeout error.
    async fn stalled(&self, stall: Duration) -> Error {
        loop {
            let since = match self.phase() {
                Phase::Idle => None,
                Phase::Sending(at) => Some((at, stall)),
                Phase::Sent(at) => Some((at, stall.saturating_add(self.unseen))),
            };
            match since {
                Some((at, limit)) if at.elapsed() >= limit => {
                    return Error::Timeout {
                        kind: crate::error::TimeoutKind::Request,
                        after: limit,
                    }
                }
                Some((at, limit)) => {
                    tokio::time::sleep_until(at.checked_add(limit).unwrap_or_else(far_future)).await
                }
                // Connecting and authenticating have limits of their own.
                None => tokio::time::sleep(stall.min(Duration::from_secs(1))).await,
            }
        }
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// Marks the attempt over when its body goes before it was all sent.
struct AttemptGuard(Arc<Watch>);

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        if let Phase::Sending(_) = self.0.phase() {
            self.0.set(Phase::Idle);
        }
    }
}

/// The file name as the multipart header carries it (quotes and line breaks
/// percent-encoded, as browsers do): what the service stores, and so what finds an upload
/// again in the session's media.
pub(crate) fn name_as_sent(path: &Path) -> Option<String> {
    path.file_name()
        .map(|name| quote_filename(&name.to_string_lossy()))
}

/// Names the local file in a 4001/4002 from the server when only one file was sent.
fn attach_file(err: Error, files: &[CheckedFile]) -> Error {
    let single = (files.len() == 1).then(|| &files[0]);
    match (err, single) {
        (
            Error::UnsupportedFile {
                file: None,
                extension,
                info,
            },
            Some(file),
        ) => Error::UnsupportedFile {
            file: Some(file.path.clone()),
            extension,
            info,
        },
        (
            Error::FileTooLarge {
                file: None,
                limit,
                info,
                ..
            },
            Some(file),
        ) => Error::FileTooLarge {
            file: Some(file.path.clone()),
            size: Some(file.len),
            limit,
            info,
        },
        (err, _) => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_format_has_a_content_type() {
        for format in SUPPORTED_FORMATS {
            assert!(content_type_for(format).is_some(), "{format}");
        }
    }

    #[test]
    fn filenames_are_quoted_like_browsers_do() {
        assert_eq!(quote_filename("a\"b\r\n.mp4"), "a%22b%0D%0A.mp4");
        assert_eq!(quote_filename("vidéo.mp4"), "vidéo.mp4");
    }

    #[test]
    fn plan_length_matches_framing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.mp4");
        std::fs::write(&path, vec![7u8; 1000]).unwrap();
        let file = check_file(&path, 10_000).unwrap();
        let plan = MultipartPlan::new(vec![file.clone(), file]);
        let framing: usize = plan.heads.iter().map(Bytes::len).sum::<usize>() + plan.tail.len();
        assert_eq!(plan.total, framing as u64 + 2000);
    }
}
