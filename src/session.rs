//! Sessions: the project a conversation with the agent works on, and the claim link that
//! opens it in the web editor.
//!
//! A [`Session`] is `Serialize + Deserialize`: store it and resume later with the same
//! session id (the service keeps the timeline). A session that is gone answers 1002
//! ([`Error::SessionNotFound`]); the SDK never replaces it silently, since the timeline would
//! be lost.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::NemoClient;
use crate::error::{Error, Result};
use crate::transport::Request;

/// A NemoVideo session (a project with its timeline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Session {
    #[serde(deserialize_with = "crate::wire::id")]
    session_id: String,
    #[serde(default, deserialize_with = "crate::wire::opt_id")]
    task_id: Option<String>,
    #[serde(default, deserialize_with = "crate::wire::opt_id")]
    user_id: Option<String>,
}

impl Session {
    /// A session known only by its id (for example one stored elsewhere).
    pub fn from_id(session_id: impl Into<String>) -> Session {
        Session {
            session_id: session_id.into(),
            task_id: None,
            user_id: None,
        }
    }

    /// The session id (a long number-like string; never treat it as a number).
    pub fn id(&self) -> &str {
        &self.session_id
    }

    /// The task id, which [`claim_link`](NemoClient::claim_link) needs; the service gives it
    /// when the session is created (a session made with [`from_id`](Self::from_id) has none).
    pub fn task_id(&self) -> Option<&str> {
        self.task_id.as_deref()
    }

    /// The user id the service reported when the session was created, when it did.
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }
}

/// Settings for a new session: see [`NemoClient::create_session_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionOptions {
    language: Option<String>,
}

impl SessionOptions {
    /// The language of the agent's replies, as a code such as `"en"`, `"zh"` or `"zh-CN"`
    /// (default: the service's choice).
    pub fn language(mut self, code: impl Into<String>) -> Self {
        self.language = Some(code.into());
        self
    }
}

/// A link a person opens in a browser to take over the project in the web editor, without
/// seeing the API token.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClaimLink {
    /// `<web url>/workspace/claim?ct=<claim token>`.
    pub url: String,
    /// How long the link stays valid, when the service said.
    pub expires_in: Option<Duration>,
}

#[derive(Serialize)]
struct CreateSessionBody<'a> {
    task_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    language: Option<&'a str>,
}

#[derive(Serialize)]
struct ClaimBody<'a> {
    task_id: &'a str,
    session_id: &'a str,
}

#[derive(Deserialize)]
struct ClaimData {
    claim_token: String,
    #[serde(default)]
    expires_in: Option<f64>,
}

impl NemoClient {
    /// Creates a session (`task_name` "project"), the agent replying in the service's
    /// default language. Store it (it is `Serialize + Deserialize`) to come back to the same
    /// timeline later.
    ///
    /// Creating is not idempotent, so it is re-sent only when the request never reached the
    /// service.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient) -> nemo_video::Result<()> {
    /// let session = client.create_session().await?;
    /// println!("session {}", session.id());
    /// # Ok(()) }
    /// ```
    pub async fn create_session(&self) -> Result<Session> {
        self.create_session_with(&SessionOptions::default()).await
    }

    /// [`create_session`](Self::create_session) with [`SessionOptions`], such as the language
    /// of the agent's replies. A language that is not a code is refused before anything is
    /// sent.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient) -> nemo_video::Result<()> {
    /// use nemo_video::SessionOptions;
    /// let session = client
    ///     .create_session_with(&SessionOptions::default().language("en"))
    ///     .await?;
    /// # let _ = session; Ok(()) }
    /// ```
    pub async fn create_session_with(&self, options: &SessionOptions) -> Result<Session> {
        let language = options.language.as_deref();
        if let Some(language) = language {
            if language.is_empty()
                || language.len() > 16
                || !language
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(Error::invalid_input(format!(
                    "{language:?} is not a language code; use a code like \"en\" or \"zh-CN\""
                )));
            }
        }
        let request = Request::post(&["api", "tasks", "me", "with-session", "nemo_agent"])
            .json(&CreateSessionBody {
                task_name: "project",
                language,
            })?
            .expect("a new session");
        let session: Session = self.transport().call(request).await?;
        if let Some(user_id) = &session.user_id {
            self.transport().identity().note_user_id(user_id);
        }
        Ok(session)
    }

    /// A link that opens the project in the web editor (`POST /api/auth/claim-token`).
    /// Needs the session's task id, which [`create_session`](Self::create_session) provides.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient, session: nemo_video::Session) -> nemo_video::Result<()> {
    /// let link = client.claim_link(&session).await?;
    /// println!("open in the editor: {}", link.url);
    /// # Ok(()) }
    /// ```
    pub async fn claim_link(&self, session: &Session) -> Result<ClaimLink> {
        let task_id = session.task_id().ok_or_else(|| {
            Error::invalid_input(
                "this session has no task id, which a claim link needs; use the Session returned by create_session",
            )
        })?;
        let request = Request::post(&["api", "auth", "claim-token"])
            .json(&ClaimBody {
                task_id,
                session_id: &session.session_id,
            })?
            .session(&session.session_id)
            .expect("a claim token");
        let data: ClaimData = self.transport().call(request).await?;
        let mut url = self.transport().web_url().clone();
        url.set_path("/workspace/claim");
        url.query_pairs_mut()
            .clear()
            .append_pair("ct", &data.claim_token);
        Ok(ClaimLink {
            url: url.to_string(),
            expires_in: data
                .expires_in
                .filter(|secs| secs.is_finite() && *secs >= 0.0)
                // `from_secs_f64` panics past u64::MAX seconds; such a link never expires.
                .map(|secs| Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)),
        })
    }
}
