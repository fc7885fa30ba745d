//! A real `redis-server` for the fleet-store tests: started on a free `127.0.0.1` port in a
//! private directory, with no persistence, and stopped by pid when dropped.
//!
//! Without `redis-server` on the machine, a test that asks for one fails under CI (`CI` or
//! `NEMO_REQUIRE_REDIS` set; `.ci/run` installs the server and sets the latter); elsewhere it
//! says loudly on stderr that it did not run, and how to install the server, so a
//! contributor's first `cargo test` on a fresh machine is not a wall of failures.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`; killed (SIGKILL) and reaped when dropped.
pub struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

/// Where the server binary is: `REDIS_SERVER` if set, else `redis-server` on the `PATH`.
fn binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

/// True when a missing `redis-server` must fail the run.
fn required() -> bool {
    ["CI", "NEMO_REQUIRE_REDIS"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0"))
}

fn installed() -> bool {
    Command::new(binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

impl RedisServer {
    /// A server for the test `test`, or `None` (after saying so on stderr) when the machine
    /// has no `redis-server` and no CI requires one.
    pub fn for_test(test: &str) -> Option<RedisServer> {
        if !installed() && !required() {
            eprintln!(
                "NOT RUN: {test}: redis-server is not installed (Debian: `apt-get install redis-server`, or set REDIS_SERVER to its path); under CI this fails"
            );
            return None;
        }
        Some(RedisServer::start())
    }

    /// Starts a server and waits until it answers `PING`.
    pub fn start() -> RedisServer {
        // A port that was free a moment ago may be taken by the time the server binds it;
        // the server then exits at once, and the next try takes another port.
        let mut last_failure = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("a temporary directory for redis-server");
            let spawned = Command::new(binary())
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--protected-mode", "yes", "--loglevel", "warning"])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn();
            let mut child = match spawned {
                Ok(child) => child,
                Err(err) => panic!(
                    "could not start redis-server ({err}): the Redis store tests need a real server; install it (Debian: `apt-get install redis-server`) or set REDIS_SERVER to its path"
                ),
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.try_wait().expect("redis-server's status") {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = pipe.read_to_string(&mut stderr);
                    }
                    last_failure = format!("redis-server exited with {status}: {stderr}");
                    break;
                }
                if ping(port) {
                    return RedisServer {
                        child,
                        port,
                        _dir: dir,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("redis-server did not answer PING on port {port} within 30 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start redis-server: {last_failure}");
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a command in Redis's inline form and returns the first reply line (for checks
    /// from a test without a client library: `DBSIZE`, `KEYS *`).
    pub fn command(&self, line: &str) -> String {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("a read timeout");
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("send");
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while stream.read(&mut byte).unwrap_or(0) == 1 {
            reply.push(byte[0]);
            if reply.ends_with(b"\r\n") {
                break;
            }
        }
        String::from_utf8_lossy(&reply).trim_end().to_string()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    matches!(stream.read(&mut reply), Ok(n) if reply[..n].starts_with(b"+PONG"))
}
