//! The server's resident memory, from `/proc/<pid>/status` (Linux), and finding the process
//! that listens on a local TCP port (through `/proc/net/tcp*` and `/proc/*/fd`).

use std::path::Path;

/// VmRSS of a process, in KiB; `None` when the process is gone or not readable.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The process listening on TCP `port` (IPv4 or IPv6), if this user may see its descriptors.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if owns_socket(&entry.path().join("fd"), &wanted) {
            return Some(pid);
        }
    }
    None
}

fn owns_socket(fd_dir: &Path, wanted: &[String]) -> bool {
    let Ok(fds) = std::fs::read_dir(fd_dir) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .ok()
            .and_then(|t| t.to_str().map(|s| wanted.iter().any(|w| w == s)))
            .unwrap_or(false)
    })
}

/// Inodes of sockets in LISTEN state (0A) on `port` in a `/proc/net/tcp` table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    let want = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit_once(':')?.1;
            (local_port == want && *f.get(3)? == "0A")
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tsignet\nVmPeak:\t  900 kB\nVmRSS:\t   23456 kB\nThreads:\t9\n";
        assert_eq!(parse_vm_rss(status), Some(23456));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn only_listening_sockets_on_the_port_are_taken() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0 100 0 0 10 0\n\
   2: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4444 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(table, 8080), vec![4242]);
    }

    #[test]
    fn this_process_has_a_resident_size() {
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
