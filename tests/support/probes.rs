//! Leak probes: threads by name, live Tokio tasks, established TCP connections, peak memory,
//! and download temporaries left in a directory. Linux (`/proc`) only; elsewhere they report
//! nothing found.

use std::path::Path;

/// Download temporaries (`.nemo-download-*.part`) left in `dir`.
pub fn part_files(dir: &Path) -> Vec<String> {
    super::file_names(dir)
        .into_iter()
        .filter(|name| name.starts_with(".nemo-download-") || name.ends_with(".part"))
        .collect()
}

/// Threads of this process whose name starts with `prefix` (names are cut to 15 bytes by the
/// kernel: the upload reader shows as `nemo-upload-rea`).
pub fn threads_named(prefix: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("comm")).ok())
        .filter(|comm| comm.trim_end().starts_with(prefix))
        .count()
}

/// Live tasks of the current Tokio runtime.
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Client-side TCP connections in state ESTABLISHED whose remote end is `127.0.0.1:port`
/// (from `/proc/net/tcp`).
pub fn established_to(port: u16) -> usize {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return 0;
    };
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[2] == remote && fields[3] == "01"
        })
        .count()
}

/// The port of an `http://host:port` URL.
pub fn port_of(url: &str) -> u16 {
    url::Url::parse(url)
        .expect("url")
        .port_or_known_default()
        .expect("port")
}

/// Peak resident set size of this process in KiB (`VmHWM`).
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}
