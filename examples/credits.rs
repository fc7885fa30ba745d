//! Prints the credit balance.
//!
//! ```text
//! cargo run --example credits            # the real service (NEMO_TOKEN or an anonymous token)
//! cargo run --example credits -- --simulate
//! ```

use std::process::ExitCode;

use nemo_video::simulator::Simulator;
use nemo_video::NemoClient;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let simulate = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--simulate") => true,
        Some(other) => {
            return Err(format!(
                "unknown argument {other:?}; usage: credits [--simulate]"
            ))
        }
    };
    let simulator;
    let client = if simulate {
        simulator = Simulator::start()
            .await
            .map_err(|err| format!("could not start the simulator: {err}"))?;
        NemoClient::builder()
            .base_url(simulator.base_url())
            .no_persistence()
            .build()
    } else {
        NemoClient::from_env()
    }
    .map_err(|err| err.to_string())?;
    let credits = client.credits().await.map_err(|err| err.to_string())?;
    println!(
        "Credits: {} available, {} frozen, {} total",
        credits.available, credits.frozen, credits.total
    );
    if let Some(url) = client.registration_url() {
        println!("Anonymous account: register at {url} to keep your work and get more credits.");
    }
    Ok(())
}
