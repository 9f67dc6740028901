//! Processes: started with their output in a log file, stopped with
//! SIGTERM (nginx's master takes its worker with it), and measured from
//! `/proc`: CPU time and peak RSS of a process and its children.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running process, stopped when dropped.
#[derive(Debug)]
pub(crate) struct Proc {
    child: Child,
}

impl Proc {
    /// Starts `command` with stdout and stderr in `log`.
    pub(crate) fn start(command: &mut Command, log: &Path) -> Result<Self, String> {
        let out = File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("opening {}: {e}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {command:?}: {e}"))?;
        Ok(Self { child })
    }

    /// The process and its children (nginx's workers), as pids.
    pub(crate) fn tree(&self) -> Vec<u32> {
        let parent = self.child.id();
        let mut pids = vec![parent];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                if stat_fields(pid).and_then(|f| f.get(1).and_then(|p| p.parse().ok()))
                    == Some(parent)
                {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .output();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fields of `/proc/<pid>/stat` after the command name: state first,
/// then the parent pid, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    Some(after_name.split_whitespace().map(String::from).collect())
}

/// Clock ticks per second, the unit of CPU times in `/proc`.
pub(crate) fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User plus system CPU time of `pids`, in clock ticks.
pub(crate) fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| stat_fields(*pid))
        // utime and stime are fields 14 and 15 of stat; 12 and 13 here.
        .map(|f| {
            let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            field(11) + field(12)
        })
        .sum()
}

/// Peak resident set (VmHWM) of `pids` together, in KiB.
pub(crate) fn peak_rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

/// Runs `command` to completion; its output goes to the terminal.
pub(crate) fn run(command: &mut Command) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("running {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed: {status}"))
    }
}

/// Waits up to `within` until `GET /` with `headers` on `port` answers
/// `status`.
pub(crate) fn wait_ready(
    port: u16,
    headers: &[(&str, &str)],
    status: u16,
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match get_status(port, headers) {
            Ok(got) if got == status => return Ok(()),
            Ok(got) => last = format!("status {got}"),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "port {port} did not answer {status} within {} s (last: {last})",
        within.as_secs()
    ))
}

fn get_status(port: u16, headers: &[(&str, &str)]) -> Result<u16, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut request = String::from("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| e.to_string())?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "not an HTTP response".to_string())
}
