//! What the examples share: connecting to the real service or to the offline simulator, and
//! turning a failure into one line on stderr with exit status 1.

use std::process::ExitCode;

use nemo_video::simulator::Simulator;
use nemo_video::NemoClient;

/// A client for the real service (configured from the environment), or, when `simulate` is
/// set, for a fresh in-process simulator. Keep the returned simulator alive while the client
/// is used. Simulator tokens stay in memory, never mixed with real credentials.
pub async fn connect(simulate: bool) -> Result<(NemoClient, Option<Simulator>), String> {
    if !simulate {
        return NemoClient::from_env()
            .map(|client| (client, None))
            .map_err(|err| err.to_string());
    }
    let simulator = Simulator::start()
        .await
        .map_err(|err| format!("could not start the offline simulator: {err}"))?;
    let client = NemoClient::builder()
        .base_url(simulator.base_url())
        .no_persistence()
        .build()
        .map_err(|err| err.to_string())?;
    Ok((client, Some(simulator)))
}

/// Exit status 0, or 1 with one clear line on stderr (never a debug dump).
pub fn exit(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
