//! Prints the credit balance.
//!
//! ```text
//! cargo run --example credits            # the real service (NEMO_TOKEN or an anonymous token)
//! cargo run --example credits -- --simulate
//! ```

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    support::exit(run().await)
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
    let (client, _simulator) = support::connect(simulate).await?;
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
