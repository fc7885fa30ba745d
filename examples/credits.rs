//! Prints the credit balance.
//!
//! ```text
//! cargo run --example credits            # offline, against the built-in simulator
//! cargo run --example credits -- --live   # the real service (NEMO_TOKEN or an anonymous token)
//! ```
//!
//! Like every example, it talks to a service only when pointed at one (`--live`, or
//! `NEMO_API_BASE`); the first line says which.
//!
//! Exit status: 0 done, 1 failed (one `error: ...` line on stderr), 2 bad usage.

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;

use clap::Parser;
use support::{describe, ServiceArgs};

/// Print the NemoVideo credit balance (and, for an anonymous account, where to register).
#[derive(Parser, Debug)]
#[command(name = "credits", version)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    support::exit(run(Args::parse()).await)
}

async fn run(args: Args) -> Result<(), String> {
    let service = support::connect(&args.service.target(false), args.service.timeout).await?;
    let client = &service.client;
    let credits = client.credits().await.map_err(|err| describe(&err))?;
    println!(
        "Credits: {} available, {} frozen, {} total",
        credits.available, credits.frozen, credits.total
    );
    if let Some(url) = client.registration_url().await {
        if service.simulator.is_some() {
            println!("Simulator account: {url} explains that it exists only in the simulator.");
        } else {
            println!(
                "Anonymous account: register at {url} to keep your work and get more credits."
            );
        }
    }
    Ok(())
}
