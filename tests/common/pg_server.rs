//! A throwaway Postgres server on a free port, so a test can stop and start
//! it under a running worker without touching anyone else's database.

use std::path::PathBuf;
use std::process::Command;

pub struct TempPostgres {
    bin: PathBuf,
    data: tempfile::TempDir,
    pub port: u16,
    /// Extra `-c name=value` server settings.
    settings: Vec<(String, String)>,
}

fn postgres_bin() -> PathBuf {
    let root = PathBuf::from("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|err| {
            panic!(
                "Postgres server binaries are needed in {}: {err}",
                root.display()
            )
        })
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|bin| bin.join("pg_ctl").is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("a Postgres version with pg_ctl under /usr/lib/postgresql")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free local port")
        .port()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { nix::libc::geteuid() == 0 }
}

impl TempPostgres {
    /// `initdb` a fresh cluster and start it.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`TempPostgres::start`], with server settings of the test's own
    /// (e.g. `("max_connections", "8")`), kept across restarts.
    pub fn start_with(settings: &[(&str, &str)]) -> Self {
        let bin = postgres_bin();
        let data = tempfile::tempdir().expect("a temporary folder");
        if is_root() {
            // Postgres refuses to run as root; the cluster belongs to `postgres`.
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(data.path())
                .status()
                .expect("chown runs");
            assert!(
                status.success(),
                "cannot hand {} to postgres",
                data.path().display()
            );
        }
        let server = TempPostgres {
            bin,
            data,
            port: free_port(),
            settings: settings
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        };
        server.run(
            "initdb",
            &[
                "-D",
                &server.dir(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        server.start_server();
        server
    }

    fn dir(&self) -> String {
        self.data.path().join("cluster").display().to_string()
    }

    /// A Postgres tool, run as `postgres` when we are root.
    fn tool(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let output = self
            .tool(tool)
            .args(args)
            .output()
            .expect("the Postgres tool runs");
        assert!(
            output.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn start_server(&self) {
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.data.path().display()
        );
        for (name, value) in &self.settings {
            options.push_str(&format!(" -c {name}={value}"));
        }
        let log = self.data.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &self.dir(), "-o", &options, "-l", &log, "-w", "start"],
        );
    }

    pub fn stop_server(&self) {
        self.run("pg_ctl", &["-D", &self.dir(), "-m", "fast", "-w", "stop"]);
    }

    /// Stop as a crash would: no checkpoint, WAL not yet written is lost.
    pub fn crash_server(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.dir(), "-m", "immediate", "-w", "stop"],
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let dir = self.dir();
        let _ = self
            .tool("pg_ctl")
            .args(["-D", &dir, "-m", "immediate", "stop"])
            .output();
    }
}
