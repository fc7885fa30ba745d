//! The credit balance (`GET /api/credits/balance/simple`).

use serde::{Deserialize, Serialize};

use crate::client::NemoClient;
use crate::error::Result;
use crate::transport::Request;

/// A credit balance. Numbers are kept as `f64` because the service does not promise
/// integers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Credits {
    /// Credits that can be spent now.
    #[serde(default)]
    pub available: f64,
    /// Credits reserved by work in progress.
    #[serde(default)]
    pub frozen: f64,
    /// Available plus frozen.
    #[serde(default)]
    pub total: f64,
}

impl NemoClient {
    /// The account's credit balance.
    ///
    /// ```no_run
    /// # async fn run(client: nemo_video::NemoClient) -> nemo_video::Result<()> {
    /// let credits = client.credits().await?;
    /// println!("{} available, {} frozen", credits.available, credits.frozen);
    /// # Ok(()) }
    /// ```
    pub async fn credits(&self) -> Result<Credits> {
        self.transport()
            .call(Request::get(&["api", "credits", "balance", "simple"]).expect("a credit balance"))
            .await
    }
}
