//! What a proxy process tree costs, read from `/proc`: resident memory (`VmRSS` of every process
//! in the tree, so nginx's and HAProxy's workers count too) and CPU time (`utime + stime`).

use std::collections::HashMap;
use std::fs;
use std::time::Duration;

/// Memory and CPU of one process tree at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Usage {
    /// Summed `VmRSS` of the tree, KiB.
    pub(crate) rss_kib: u64,
    /// Summed user + system CPU time of the tree.
    pub(crate) cpu: Duration,
}

/// `root` and every descendant, summed. A process that exits mid-read is skipped.
pub(crate) fn tree_usage(root: u32) -> std::io::Result<Usage> {
    let tick = clock_ticks_per_second();
    let mut parents: HashMap<u32, u32> = HashMap::new();
    for entry in fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(stat) = read_stat(pid) {
            parents.insert(pid, stat.ppid);
        }
    }
    if !parents.contains_key(&root) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no process {root}"),
        ));
    }
    let in_tree = |mut pid: u32| loop {
        if pid == root {
            return true;
        }
        match parents.get(&pid) {
            Some(&parent) if parent != 0 && parent != pid => pid = parent,
            _ => return false,
        }
    };
    let mut usage = Usage::default();
    for &pid in parents.keys().filter(|&&p| in_tree(p)) {
        if let Some(stat) = read_stat(pid) {
            usage.cpu += Duration::from_secs_f64((stat.utime + stat.stime) as f64 / tick);
        }
        usage.rss_kib += read_rss_kib(pid).unwrap_or(0);
    }
    Ok(usage)
}

struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
}

/// `/proc/PID/stat` (proc(5)): the command name is in parentheses and may hold spaces, so the
/// fields are counted from the last `)`: state, ppid, ... utime is field 14, stime 15.
fn read_stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state).
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        utime: fields.get(11)?.parse().ok()?,
        stime: fields.get(12)?.parse().ok()?,
    })
}

fn read_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// `USER_HZ`: 100 on every Linux architecture the kernel exposes through `/proc` (times(2)).
fn clock_ticks_per_second() -> f64 {
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line =
            "1234 (nginx: worker (x)) S 1200 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!((stat.ppid, stat.utime, stat.stime), (1200, 250, 50));
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn own_process_has_memory_and_cpu() {
        let mut spin = 0u64;
        for i in 0..5_000_000u64 {
            spin = spin.wrapping_add(i * i);
        }
        assert_ne!(spin, 1);
        let usage = tree_usage(std::process::id()).unwrap();
        assert!(usage.rss_kib > 0);
        assert!(tree_usage(u32::MAX).is_err());
    }
}
