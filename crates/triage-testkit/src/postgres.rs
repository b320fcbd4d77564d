//! A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` in a temporary directory
//! (as an unprivileged user when run as root, which PostgreSQL refuses), started on a free
//! loopback port, stopped and removed when dropped, also when a test fails. No test touches a
//! database that happens to run on the machine.
//!
//! The server binaries come from `TRIAGE_PG_BIN` or the newest `/usr/lib/postgresql/*/bin`
//! (Debian's `postgresql` package, which `scripts/setup.sh` installs); without them
//! [`PgCluster::start`] returns `None` and says why, so callers skip.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running throwaway cluster.
pub struct PgCluster {
    /// Holds the data directory; removed on drop.
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    /// Who runs the server (`None`: this process's user).
    run_as: Option<String>,
    running: bool,
}

impl PgCluster {
    /// Creates and starts a cluster with database `triage`, user `triage`, trust auth on
    /// loopback. `None` (with the reason on stderr) where PostgreSQL is not installed.
    pub fn start() -> Option<Self> {
        let Some(bin) = server_binaries() else {
            eprintln!(
                "SKIP: no PostgreSQL server binaries (set TRIAGE_PG_BIN, or run scripts/setup.sh, \
                 which installs Debian's postgresql package)"
            );
            return None;
        };
        let scratch =
            std::env::var_os("TRIAGE_PG_SCRATCH").map_or_else(std::env::temp_dir, PathBuf::from);
        let root = scratch.join(format!(
            "triage-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(root.join("data")).expect("cluster directory");
        let run_as = is_root().then(unprivileged_user);
        if let Some(user) = &run_as {
            // The server's user must reach and own its directories.
            let _ = set_mode(&root, 0o755);
            run(Command::new("chown").arg("-R").arg(user).arg(&root));
        }
        let mut cluster = Self {
            root,
            bin,
            port: free_port(),
            run_as,
            running: false,
        };
        let data = cluster.data();
        let mut initdb = cluster.command("initdb");
        run(initdb.arg("-D").arg(&data).args([
            "-U",
            "triage",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        ]));
        cluster.resume();
        let mut createdb = cluster.command("createdb");
        run(createdb.args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port.to_string(),
            "-U",
            "triage",
            "triage",
        ]));
        Some(cluster)
    }

    /// `postgres://triage@127.0.0.1:PORT/triage`.
    pub fn url(&self) -> String {
        format!("postgres://triage@127.0.0.1:{}/triage", self.port)
    }

    /// Stops the server (fast shutdown: connections are cut, as in an outage).
    pub fn stop(&mut self) {
        if self.running {
            let data = self.data();
            let mut stop = self.command("pg_ctl");
            run(stop.arg("-D").arg(&data).args(["-m", "fast", "-w", "stop"]));
            self.running = false;
        }
    }

    /// Starts the server again on the same port and data.
    pub fn resume(&mut self) {
        if self.running {
            return;
        }
        let data = self.data();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=200",
            self.port,
            self.root.display()
        );
        let mut start = self.command("pg_ctl");
        run(start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(self.root.join("server.log"))
            .args(["-o", &options, "-w", "start"]));
        self.running = true;
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// A command for server binary `name`, as the cluster's user.
    fn command(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn server_binaries() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TRIAGE_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// `postgres` where the package created it, else `nobody`.
fn unprivileged_user() -> String {
    let exists = |user: &str| {
        Command::new("id")
            .arg(user)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if exists("postgres") {
        "postgres"
    } else {
        "nobody"
    }
    .to_owned()
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Runs `command`, panicking with its output when it fails (a test cannot go on without it).
fn run(command: &mut Command) {
    let out = command.output().expect("PostgreSQL command starts");
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
