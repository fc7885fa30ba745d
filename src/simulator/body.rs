//! Response bodies: whole buffers, and scheduled bodies that write one piece at a time with
//! delays between them (the SSE stream) and may end abruptly (fault injection).
//!
//! A scheduled body keeps its own timer instead of a producer task, so it lives and dies with
//! its connection: nothing to leak when a client goes away or the simulator is dropped.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// One step of a scheduled body.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// Write these bytes.
    Send(Bytes),
    /// Write nothing for this long.
    Wait(Duration),
    /// Fail the body: hyper drops the connection without finishing the response.
    Abort,
}

/// The error that makes hyper cut a connection mid-response.
#[derive(Debug)]
pub(crate) struct Aborted;

impl fmt::Display for Aborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("simulated connection drop")
    }
}

impl std::error::Error for Aborted {}

/// Every response body the simulator sends.
pub(crate) enum SimBody {
    Full(Option<Bytes>),
    Scheduled {
        steps: VecDeque<Step>,
        sleep: Option<Pin<Box<Sleep>>>,
        /// Dropped with the body: when the response ends or its connection goes.
        guard: Option<Box<dyn Send + Sync>>,
    },
}

impl SimBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            SimBody::Full(None)
        } else {
            SimBody::Full(Some(bytes))
        }
    }

    pub(crate) fn scheduled(steps: impl IntoIterator<Item = Step>) -> Self {
        SimBody::Scheduled {
            steps: steps.into_iter().collect(),
            sleep: None,
            guard: None,
        }
    }

    /// Keeps `guard` alive for as long as the body (a session's running turn).
    pub(crate) fn guarded(mut self, held: impl Send + Sync + 'static) -> Self {
        if let SimBody::Scheduled { guard, .. } = &mut self {
            *guard = Some(Box::new(held));
        }
        self
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        match self.get_mut() {
            SimBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            SimBody::Scheduled { steps, sleep, .. } => loop {
                if let Some(timer) = sleep.as_mut() {
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *sleep = None;
                }
                match steps.pop_front() {
                    None => return Poll::Ready(None),
                    Some(Step::Send(bytes)) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
                    Some(Step::Abort) => return Poll::Ready(Some(Err(Aborted))),
                    Some(Step::Wait(delay)) => {
                        if !delay.is_zero() {
                            *sleep = Some(Box::pin(tokio::time::sleep(delay)));
                        }
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SimBody::Full(bytes) => bytes.is_none(),
            SimBody::Scheduled { steps, sleep, .. } => steps.is_empty() && sleep.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            SimBody::Scheduled { .. } => SizeHint::default(),
        }
    }
}
