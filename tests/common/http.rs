//! An HTTP test client and a `signet serve` child process, for the tests over real HTTP.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Fixture;

/// Servers still running, by pid. A server kept in a test binary's static (shared by its
/// tests) is never dropped: the test process stops what is left as it exits.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn register(pid: u32) {
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    AT_EXIT.call_once(|| {
        // SAFETY: registers a plain `extern "C" fn` that takes no arguments.
        unsafe {
            libc::atexit(stop_running_servers);
        }
    });
    RUNNING.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

fn unregister(pid: u32) {
    RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid);
}

/// At exit: SIGTERM to every server still running, SIGKILL to any not gone within 10 s.
extern "C" fn stop_running_servers() {
    let Ok(running) = RUNNING.try_lock() else {
        return;
    };
    let mut left: Vec<i32> = running.iter().map(|p| *p as i32).collect();
    drop(running);
    for pid in &left {
        // SAFETY: signals a child process of ours.
        unsafe {
            libc::kill(*pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !left.is_empty() && Instant::now() < deadline {
        // SAFETY: reaps our own children without blocking; 0 means still running.
        left.retain(|pid| unsafe { libc::waitpid(*pid, std::ptr::null_mut(), libc::WNOHANG) } == 0);
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in left {
        // SAFETY: as above; this child ignored SIGTERM for 10 s.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
}

/// A running `signet serve`; stopped with SIGTERM on drop.
pub struct Server {
    child: Child,
    pub base: String,
    /// Everything the server wrote on stdout and stderr so far.
    log: Arc<Mutex<String>>,
    /// The threads copying stdout and stderr into `log`: they end at the pipes' end.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(f: &Fixture) -> Server {
        Self::start_with(f, &[])
    }

    pub fn start_with(f: &Fixture, env: &[(&str, String)]) -> Server {
        Self::start_config(f, &f.config, env)
    }

    /// `signet serve` with another config.
    pub fn start_config(f: &Fixture, config: &Path, env: &[(&str, String)]) -> Server {
        let mut cmd = f.command(config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start signet serve");
        register(child.id());
        let log = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("stdout");
        let out_log = log.clone();
        let out_reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut l = out_log.lock().unwrap_or_else(|e| e.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let base = loop {
            let line = match lines.next() {
                Some(l) => l.expect("read stderr"),
                None => panic!(
                    "signet serve ended before serving:\n{}",
                    log.lock().unwrap_or_else(|e| e.into_inner())
                ),
            };
            {
                let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
            if let Some(url) = line.strip_prefix("signet: serving on ") {
                break url.trim().to_string();
            }
            assert!(Instant::now() < deadline, "signet serve did not start");
        };
        // Keep draining stderr (into the log) so the server never blocks on a full pipe.
        let err_log = log.clone();
        let err_reader = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut l = err_log.lock().unwrap_or_else(|e| e.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        Server {
            child,
            base,
            log,
            readers: vec![out_reader, err_reader],
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server has logged so far (stdout and stderr).
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the server logs, after its first `from` bytes, a line that `says` holds for,
    /// within `within`. Its standard error reaches the test through a pipe and a reader
    /// thread: a line written before an answer may arrive a moment after the answer.
    pub fn logs_within(&self, from: usize, within: Duration, says: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if says(log.get(from..).unwrap_or_default()) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server and returns everything it logged, to the end.
    pub fn stop_and_log(mut self) -> String {
        self.terminate();
        // The reader threads see end-of-file once the process is gone (a few seconds at most:
        // a process the server started could still hold the pipes).
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.log()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn stop(mut self) {
        self.terminate();
    }

    /// SIGKILL: the process gets no chance to finish anything (a crash, a power cut).
    pub fn kill(mut self) {
        unregister(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) {
        unregister(self.child.id());
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Before the child is reaped, after which its pid may be another process's.
        unregister(self.child.id());
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

pub struct Reply {
    pub status: u16,
    pub body: String,
    pub content_type: String,
    /// The Retry-After header, when present.
    pub retry_after: Option<String>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {}", self.body))
            .to_string()
    }
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
}

pub fn finish(r: Result<ureq::Response, ureq::Error>) -> Reply {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("HTTP transport error: {e}"),
    };
    let status = resp.status();
    let content_type = resp.header("content-type").unwrap_or("").to_string();
    let retry_after = resp.header("retry-after").map(str::to_string);
    let body = resp.into_string().unwrap_or_default();
    Reply {
        status,
        body,
        content_type,
        retry_after,
    }
}

pub fn post_json(s: &Server, path: &str, token: Option<&str>, body: &Value) -> Reply {
    let mut req = agent()
        .post(&s.url(path))
        .set("Content-Type", "application/json");
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    finish(req.send_string(&body.to_string()))
}

pub fn post_raw(
    s: &Server,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Reply {
    let mut req = agent().post(&s.url(path)).set("Content-Type", content_type);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    finish(req.send_bytes(body))
}

pub fn get(s: &Server, path: &str, token: Option<&str>) -> Reply {
    let mut req = agent().get(&s.url(path));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    finish(req.call())
}

pub fn get_bytes(s: &Server, path: &str) -> (u16, String, Vec<u8>) {
    let resp = match agent().get(&s.url(path)).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("HTTP transport error: {e}"),
    };
    let status = resp.status();
    let ct = resp.header("content-type").unwrap_or("").to_string();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).unwrap();
    (status, ct, bytes)
}

pub fn base64_std(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn base64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        buf = (buf << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}
