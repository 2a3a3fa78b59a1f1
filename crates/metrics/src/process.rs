//! The process's resident memory and open file descriptors, read from
//! `/proc/self` at scrape time (Linux; elsewhere both are absent).

/// Resident set size in bytes and open descriptors.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcessSample {
    pub rss_bytes: Option<u64>,
    pub open_fds: Option<u64>,
}

pub(crate) fn sample() -> ProcessSample {
    ProcessSample {
        rss_bytes: rss(),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64),
    }
}

/// `VmRSS` of `/proc/self/status` (in kB there).
fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
