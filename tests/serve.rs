//! `foodclip serve`, started on a free port: answers equal to `classify`, batching under
//! concurrent clients, errors as JSON with the server going on, the bounded queue, a graceful
//! stop, and the page used in headless Chromium.

mod common;

use common::{fixtures, foodclip};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running server, killed when dropped.
struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    url: String,
    /// Everything it wrote on stderr so far.
    log: Arc<Mutex<String>>,
}

/// An answer: status, `Retry-After`, and the JSON body.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

impl Server {
    /// `foodclip --model tiny-openai serve --port 0 ARGS`, once `/healthz` says ready.
    fn start(args: &[&str]) -> Self {
        Self::start_with(args, &[])
    }

    fn start_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::ready(Self::spawn(args, env))
    }

    /// Starts the server on the fixture checkpoint `model` and waits until it answers.
    fn start_model(model: &str, args: &[&str]) -> Self {
        Self::ready(Self::spawn_model(model, args, &[]))
    }

    fn ready(server: Self) -> Self {
        let start = Instant::now();
        while server.get("/healthz").status != 200 {
            assert!(
                start.elapsed().as_secs() < 60,
                "not ready: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Starts the server and waits only for its address.
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_model("tiny-openai", args, env)
    }

    /// Starts the server on the fixture checkpoint `model` and waits only for its address.
    fn spawn_model(model: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let model = fixtures().join(model);
        let mut cmd = foodclip();
        cmd.arg("--model")
            .arg(&model)
            .args(["serve", "--port", "0"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let line = line.unwrap_or_default();
                if let Some(at) = line.find("listening on http://") {
                    let url = line[at + "listening on ".len()..]
                        .split(' ')
                        .next()
                        .unwrap();
                    let _ = tx.send(url.to_string());
                }
                let mut log = kept.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no address: {}", log.lock().unwrap()));
        Self { child, url, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) for a line of the log that has all of `parts`, and returns it.
    fn log_line(&self, parts: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_string();
            }
            assert!(start.elapsed().as_secs() < 10, "no {parts:?} in {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn get(&self, path: &str) -> Answer {
        answer(ureq::get(&format!("{}{path}", self.url)).call())
    }

    /// POSTs `body` as the photo's bytes.
    fn post(&self, path: &str, body: &[u8]) -> Answer {
        self.post_with(path, body, &[])
    }

    fn post_with(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Answer {
        let mut req = ureq::post(&format!("{}{path}", self.url));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        answer(req.send_bytes(body))
    }

    /// POSTs a multipart form with an `image` field per `(file name, bytes)`.
    fn post_form(
        &self,
        path: &str,
        images: &[(&str, Vec<u8>)],
        headers: &[(&str, &str)],
    ) -> Answer {
        let fields: Vec<_> = images
            .iter()
            .map(|(n, b)| ("image", *n, b.clone()))
            .collect();
        self.post_fields(path, &fields, headers)
    }

    /// POSTs a multipart form with a field per `(field, file name, bytes)`.
    fn post_fields(
        &self,
        path: &str,
        fields: &[(&str, &str, Vec<u8>)],
        headers: &[(&str, &str)],
    ) -> Answer {
        let boundary = "foodclip-test-boundary-7d1f";
        let mut body = Vec::new();
        for (field, name, bytes) in fields {
            write!(
                body,
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .unwrap();
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        write!(body, "--{boundary}--\r\n").unwrap();
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let mut all = vec![("Content-Type", content_type.as_str())];
        all.extend_from_slice(headers);
        self.post_with(path, &body, &all)
    }

    /// The server's `/healthz` counter `name`.
    fn counter(&self, name: &str) -> u64 {
        self.get("/healthz").body[name].as_u64().unwrap()
    }

    /// Waits until `n` photos hold places in the queue.
    fn wait_for_waiting(&self, n: u64) {
        let start = Instant::now();
        while self.counter("waiting") != n {
            assert!(start.elapsed().as_secs() < 60, "never {n} waiting");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` and waits for the exit code.
    fn stop(&mut self, signal: i32) -> Option<i32> {
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.wait()
    }

    fn wait(&mut self) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                start.elapsed().as_secs() < 60,
                "never stopped: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> Answer {
    let response = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("no answer: {e}"),
    };
    let status = response.status();
    let retry_after = response.header("Retry-After").map(str::to_string);
    let text = response.into_string().unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        retry_after,
        body,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mixed() -> PathBuf {
    fixtures().join("labels/mixed.txt")
}

fn photos() -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(fixtures().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    all.sort();
    all
}

/// `foodclip --model tiny-openai classify --format jsonl ARGS`: the records.
fn classify(args: &[&str]) -> Vec<Value> {
    classify_with("tiny-openai", args)
}

/// `foodclip --model MODEL classify --format jsonl ARGS` on a fixture checkpoint: the records.
fn classify_with(model: &str, args: &[&str]) -> Vec<Value> {
    let o = foodclip()
        .arg("--model")
        .arg(fixtures().join(model))
        .args(["classify", "--format", "jsonl"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `classify` of `photos` with every class (the mixed labels): each photo's record by path.
fn classify_all(photos: &[PathBuf]) -> HashMap<String, Value> {
    let labels = mixed();
    let mut args = vec!["--labels", s(&labels), "-k", "0"];
    args.extend(photos.iter().map(|p| s(p)));
    classify(&args)
        .into_iter()
        .map(|r| (r["path"].as_str().unwrap().to_string(), r))
        .collect()
}

/// Asserts that two records hold the same answer: region, decision, and every listed class's
/// score and probability within 1e-5 (in the same order, ties aside), groups too.
fn assert_same(got: &Value, want: &Value, what: &str) {
    assert_eq!(got["region"], want["region"], "{what}: region");
    assert_eq!(got["label"], want["label"], "{what}: decision");
    for key in ["predictions", "groups"] {
        let by_name = |v: &Value| -> HashMap<String, (f64, f64)> {
            let name = if key == "groups" { "group" } else { "label" };
            v[key]
                .as_array()
                .map(|a| a.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    let score = p["score"].as_f64().unwrap_or(0.0);
                    let prob = p["prob"].as_f64().unwrap();
                    (p[name].as_str().unwrap().to_string(), (score, prob))
                })
                .collect()
        };
        let (g, w) = (by_name(got), by_name(want));
        assert_eq!(
            g.keys().collect::<std::collections::BTreeSet<_>>(),
            w.keys().collect(),
            "{what}: {key}"
        );
        for (label, (score, prob)) in &w {
            let (gs, gp) = g[label];
            assert!(
                (gs - score).abs() < 1e-5 && (gp - prob).abs() < 1e-5,
                "{what}: {label}: {gs} {gp} vs {score} {prob}"
            );
        }
    }
}

#[test]
fn answers_equal_classify_for_every_fixture_photo() {
    let server = Server::start(&["--labels", s(&mixed())]);
    let all = photos();
    let want = classify_all(&all);
    for photo in &all {
        let a = server.post("/v1/classify?top_k=0", &std::fs::read(photo).unwrap());
        assert_eq!(a.status, 200, "{}: {}", photo.display(), a.body);
        let records = a.body.as_array().unwrap();
        assert_eq!(records.len(), 1);
        assert!(records[0].get("path").is_none() && records[0].get("file").is_none());
        assert_same(&records[0], &want[s(photo)], s(photo));
    }
    // A form with several photos: one record each, in order, with the fields' file names.
    let pair = [&all[1], &all[4]];
    let form: Vec<(&str, Vec<u8>)> = pair
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            (name, std::fs::read(p).unwrap())
        })
        .collect();
    let a = server.post_form("/v1/classify?top_k=0", &form, &[]);
    assert_eq!(a.status, 200, "{}", a.body);
    let records = a.body.as_array().unwrap();
    assert_eq!(records.len(), 2);
    for (record, photo) in records.iter().zip(pair) {
        assert_eq!(record["file"], photo.file_name().unwrap().to_str().unwrap());
        assert_same(record, &want[s(photo)], s(photo));
    }
    // top_k cuts, and the embeddings are the ones `embed` writes.
    let a = server.post("/v1/classify", &std::fs::read(&all[0]).unwrap());
    assert_eq!(a.body[0]["predictions"].as_array().unwrap().len(), 5);
    let embedded = foodclip()
        .arg("--model")
        .arg(fixtures().join("tiny-openai"))
        .args(["embed", s(&all[0])])
        .output()
        .unwrap();
    let want: Value = serde_json::from_slice(&embedded.stdout).unwrap();
    let got = server.post("/v1/embed", &std::fs::read(&all[0]).unwrap());
    assert_eq!(got.status, 200);
    let (g, w) = (&got.body[0]["embedding"], &want["embedding"]);
    assert_eq!(g.as_array().unwrap().len(), w.as_array().unwrap().len());
    for (g, w) in g.as_array().unwrap().iter().zip(w.as_array().unwrap()) {
        assert!((g.as_f64().unwrap() - w.as_f64().unwrap()).abs() < 1e-5);
    }
    // The labels in use.
    let labels = server.get("/v1/labels").body;
    let names: Vec<&str> = labels["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert_eq!(names[..2], ["김치찌개", "bibimbap"]);
    assert!(labels["model"].as_str().unwrap().contains("tiny-openai"));
}

/// A SigLIP checkpoint serves the per-class sigmoids `classify` gives, an open-set threshold
/// reading them.
#[test]
fn a_siglip_model_serves_what_classify_gives() {
    let labels = mixed();
    let server = Server::start_model("tiny-siglip", &["--labels", s(&labels)]);
    let all = photos();
    let mut args = vec!["--labels", s(&labels), "-k", "0"];
    args.extend(all.iter().map(|p| s(p)));
    let want: HashMap<String, Value> = classify_with("tiny-siglip", &args)
        .into_iter()
        .map(|r| (r["path"].as_str().unwrap().to_string(), r))
        .collect();
    for photo in &all[..4] {
        let a = server.post("/v1/classify?top_k=0", &std::fs::read(photo).unwrap());
        assert_eq!(a.status, 200, "{}: {}", photo.display(), a.body);
        let record = &a.body[0];
        assert_same(record, &want[s(photo)], s(photo));
        let total: f64 = record["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["prob"].as_f64().unwrap())
            .sum();
        assert!(
            (total - 1.0).abs() > 1e-3,
            "sigmoids, not a softmax: {total}"
        );
    }
    assert!(server.get("/v1/labels").body["model"]
        .as_str()
        .unwrap()
        .contains("tiny-siglip"));
}

#[test]
fn groups_open_set_regions_and_layouts_answer_as_classify() {
    let korean = Path::new(env!("CARGO_MANIFEST_DIR")).join("labels/korean.txt");
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("labels/trays/school-5.toml");
    let photo = fixtures().join("images/exif-orient6.jpg");
    let bytes = std::fs::read(&photo).unwrap();
    let server = Server::start(&["--labels", s(&korean), "--layout", s(&layout)]);
    // The server's layout, with group scores and an open-set threshold.
    let want = classify(&[
        "--labels",
        s(&korean),
        "--layout",
        s(&layout),
        "--group-scores",
        "-k",
        "3",
        "--threshold",
        "0.02",
        s(&photo),
    ]);
    let got = server.post(
        "/v1/classify?group_scores=true&top_k=3&threshold=0.02",
        &bytes,
    );
    assert_eq!(got.status, 200, "{}", got.body);
    let got = got.body.as_array().unwrap().clone();
    assert_eq!(got.len(), 5);
    for (g, w) in got.iter().zip(&want) {
        assert_same(g, w, "layout");
        assert!(!g["groups"].as_array().unwrap().is_empty());
    }
    // A request's own boxes replace the layout: those of a 2x2 grid give the grid's answers.
    let want = classify(&["--labels", s(&korean), "--grid", "2x2", s(&photo)]);
    let boxes: Vec<Value> = want
        .iter()
        .map(|r| serde_json::json!({"name": r["region"]["name"], "box": r["region"]["box"]}))
        .collect();
    let query = format!(
        "/v1/classify?regions={}",
        percent(&serde_json::to_string(&boxes).unwrap())
    );
    let got = server.post(&query, &bytes);
    assert_eq!(got.status, 200, "{}", got.body);
    let got = got.body.as_array().unwrap().clone();
    assert_eq!(got.len(), 4);
    for (g, w) in got.iter().zip(&want) {
        assert_same(g, w, "request boxes");
    }
    // A box outside the photo is that region's error; the others are answered.
    let got = server.post(
        &format!(
            "/v1/classify?regions={}",
            percent("[[0,0,50,50],[9000,9000,9100,9100]]")
        ),
        &bytes,
    );
    assert_eq!(got.status, 200);
    assert!(got.body[0]["predictions"].is_array());
    assert!(got.body[1]["error"].as_str().unwrap().contains("empty box"));
}

#[test]
fn leftovers_answer_as_the_command_does() {
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("labels/trays/school-5.toml");
    let set = fixtures().join("leftovers/perturbed");
    let (served, returned) = (
        set.join("served/tray02.jpg"),
        set.join("returned/tray02.jpg"),
    );
    let want = leftovers_command("tray02", &served, &returned, &["--layout", s(&layout)]);
    assert_eq!(want.len(), 5);

    let server = Server::start(&["--labels", s(&mixed()), "--layout", s(&layout)]);
    let read = |p: &Path| std::fs::read(p).unwrap();
    let got = server.post_fields(
        "/v1/leftovers?tray=tray02&date=2026-11-03",
        &[
            ("served", "s.jpg", read(&served)),
            ("returned", "r.jpg", read(&returned)),
        ],
        &[],
    );
    assert_eq!(got.status, 200, "{}", got.body);
    let got = got.body.as_array().unwrap();
    assert_eq!(got.len(), 5);
    same_leftovers(got, &want);
    assert!(got.iter().all(|g| g["served"] == "s.jpg"));
    // Without a returned photo: 400; with one that is no photo: 422; the server goes on.
    let only = server.post_fields("/v1/leftovers", &[("served", "s.jpg", read(&served))], &[]);
    assert_eq!(only.status, 400, "{}", only.body);
    assert!(
        only.body["error"].as_str().unwrap().contains("returned"),
        "{}",
        only.body
    );
    let broken = server.post_fields(
        "/v1/leftovers",
        &[
            ("served", "s.jpg", read(&served)),
            ("returned", "r.jpg", b"not a photo".to_vec()),
        ],
        &[],
    );
    assert_eq!(broken.status, 422, "{}", broken.body);
    assert!(
        broken.body["error"]
            .as_str()
            .unwrap()
            .starts_with("r.jpg: "),
        "{}",
        broken.body
    );
    assert_eq!(server.get("/healthz").status, 200);
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn an_adapter_serves_its_classes_and_cache() {
    let dir = tempfile::tempdir().unwrap();
    let all = photos();
    // Two dishes with three photos each: enough for an adapter that beats nothing.
    for (class, range) in [("김치찌개", 0..3), ("bibimbap", 3..6)] {
        let folder = dir.path().join("data").join(class);
        std::fs::create_dir_all(&folder).unwrap();
        for p in &all[range] {
            std::fs::copy(p, folder.join(p.file_name().unwrap())).unwrap();
        }
    }
    let adapter = dir.path().join("a.safetensors");
    let o = foodclip()
        .arg("--model")
        .arg(fixtures().join("tiny-openai"))
        .args([
            "adapt",
            s(&dir.path().join("data")),
            "--labels",
            s(&mixed()),
        ])
        .args(["-o", s(&adapter), "--alpha", "2", "--beta", "3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let server = Server::start(&["--adapter", s(&adapter)]);
    let photo = &all[8];
    let want = classify(&["--adapter", s(&adapter), "-k", "0", s(photo)]);
    let zero_shot = classify(&["--labels", s(&mixed()), "-k", "0", s(photo)]);
    let got = server.post("/v1/classify?top_k=0", &std::fs::read(photo).unwrap());
    assert_same(&got.body[0], &want[0], "adapter");
    // The adapter's cache moved the probabilities.
    assert_ne!(want[0]["predictions"], zero_shot[0]["predictions"]);
    assert_eq!(server.get("/v1/labels").body["adapter"], "a.safetensors");
}

#[test]
fn sixteen_concurrent_clients_share_model_calls() {
    // A generous wait, so that photos still decoding join the call however the threads run.
    let server = Server::start(&["--labels", s(&mixed()), "--batch-wait", "300"]);
    let all = photos();
    let want = classify_all(&all);
    let barrier = Arc::new(std::sync::Barrier::new(16));
    let server = Arc::new(server);
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let photo = all[i % all.len()].clone();
            let (barrier, server) = (barrier.clone(), server.clone());
            std::thread::spawn(move || {
                let bytes = std::fs::read(&photo).unwrap();
                barrier.wait();
                (photo, server.post("/v1/classify?top_k=0", &bytes))
            })
        })
        .collect();
    for client in clients {
        let (photo, a) = client.join().unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        assert_same(&a.body[0], &want[s(&photo)], s(&photo));
    }
    let (photos, calls) = (server.counter("photos"), server.counter("model_calls"));
    assert_eq!(photos, 16);
    assert!(calls < photos, "{calls} model calls for {photos} photos");
}

/// Sends a request's head and the first `part` bytes of a `length`-byte body, and leaves the
/// connection open.
fn partial_request(port: u16, path: &str, length: usize, part: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    stream.write_all(part).unwrap();
    stream.flush().unwrap();
    stream
}

/// Reads a whole response from `stream`: status and body.
fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut text = Vec::new();
    let _ = stream.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no response: {text:?}"));
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

#[test]
fn bad_requests_get_json_errors_and_the_server_goes_on() {
    let server = Server::start_with(
        &["--labels", s(&mixed()), "--max-body", "1MB"],
        &[("FOODCLIP_TOKEN", "s3cret")],
    );
    let auth = [("Authorization", "Bearer s3cret")];
    let good = std::fs::read(fixtures().join("images/baseline.jpg")).unwrap();
    let error = |a: &Answer| a.body["error"].as_str().unwrap_or_default().to_string();
    // 401: no token, a wrong one; /healthz and the page need none.
    for headers in [&[][..], &[("Authorization", "Bearer wrong")][..]] {
        let a = server.post_with("/v1/classify", &good, headers);
        assert_eq!(a.status, 401);
        assert!(error(&a).contains("token"), "{}", a.body);
    }
    assert_eq!(server.get("/v1/labels").status, 401);
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.get("/").status, 200);
    // 413 before the body is read: the head alone gets the answer.
    let mut stream = partial_request(server.port(), "/v1/classify", 40_000_000, b"");
    let (status, body) = read_response(&mut stream);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("--max-body"), "{body}");
    // 400: an empty body, bad query parameters, a form without images.
    for (path, body, want) in [
        ("/v1/classify", &b""[..], "empty"),
        ("/v1/classify?top_k=many", &good[..], "top_k"),
        ("/v1/classify?threshold=1.5", &good[..], "probability"),
        ("/v1/classify?group_scores=true", &good[..], "[group]"),
        ("/v1/classify?regions=%5B1%2C2%5D", &good[..], "regions"),
        ("/v1/classify?topk=3", &good[..], "topk"),
        ("/v1/classify?to%0Apk=3", &good[..], "to\npk"),
        ("/v1/embed?top_k=3", &good[..], "/v1/classify"),
    ] {
        let a = server.post_with(path, body, &auth);
        assert_eq!(a.status, 400, "{path}: {}", a.body);
        assert!(error(&a).contains(want), "{path}: {}", a.body);
    }
    // 422: not an image, a decompression bomb.
    for (file, want) in [
        ("not-an-image.jpg", "not an image"),
        ("bomb.png", "megapixels"),
    ] {
        let bytes = std::fs::read(fixtures().join("bad").join(file)).unwrap();
        let a = server.post_with("/v1/classify", &bytes, &auth);
        assert_eq!(a.status, 422, "{file}: {}", a.body);
        assert!(error(&a).contains(want), "{file}: {}", a.body);
    }
    // A form whose photo is in a field of another name: 400, naming the field to use.
    let wrong = [("photo", "tray.jpg", good.clone())];
    let a = server.post_fields("/v1/classify", &wrong, &auth);
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(error(&a).contains("no image field") && error(&a).contains("-F image=@"));
    // A form whose only photo is empty.
    let a = server.post_form("/v1/classify", &[("empty.jpg", Vec::new())], &auth);
    assert_eq!(a.status, 422, "{}", a.body);
    assert_eq!(error(&a), "empty.jpg: empty file");
    // In a form, a bad photo is its own record beside the good one.
    let form = [
        ("good.jpg", good.clone()),
        ("bad.jpg", b"not a photo".to_vec()),
    ];
    let a = server.post_form("/v1/classify", &form, &auth);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body[0]["predictions"].is_array());
    assert_eq!(a.body[1]["file"], "bad.jpg");
    assert!(a.body[1]["error"]
        .as_str()
        .unwrap()
        .contains("not an image"));
    // 404 for anything else, as JSON.
    let a = server.get("/etc/passwd");
    assert_eq!(a.status, 404);
    assert!(error(&a).contains("/v1/classify"));
    // And the server still answers.
    let a = server.post_with("/v1/classify", &good, &auth);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body[0]["predictions"].is_array());
    // The access log has a line per request, with the refusals' reasons; probes are left out.
    let line = server.log_line(&["POST /v1/classify 401 ", " ms: missing or wrong token"]);
    assert!(line.starts_with("foodclip: 127.0.0.1:"), "{line}");
    server.log_line(&["POST /v1/classify 422 ", "not an image"]);
    server.log_line(&["POST /v1/classify 413 ", "--max-body"]);
    server.log_line(&["GET /etc/passwd 404 "]);
    server.log_line(&["GET / 200 "]);
    server.log_line(&["POST /v1/classify 400 ", "unknown field `to\\npk`"]);
    server.log_line(&["POST /v1/classify 200 "]);
    let log = server.log();
    assert!(!log.contains("GET /healthz 200"), "{log}");
}

#[test]
fn a_full_queue_answers_503_at_once_and_recovers() {
    let server = Server::start(&["--labels", s(&mixed()), "--max-queue", "1"]);
    let good = std::fs::read(fixtures().join("images/baseline.jpg")).unwrap();
    // A request whose body is still on its way holds the queue's only place.
    let mut slow = partial_request(server.port(), "/v1/classify", good.len(), &good[..100]);
    server.wait_for_waiting(1);
    let start = Instant::now();
    let a = server.post("/v1/classify", &good);
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    assert!(a.body["error"].as_str().unwrap().contains("queue"));
    assert!(start.elapsed() < Duration::from_secs(5));
    // Its body arrives: it is answered, and the place is free again.
    slow.write_all(&good[100..]).unwrap();
    let (status, body) = read_response(&mut slow);
    assert_eq!(status, 200, "{body}");
    let a = server.post("/v1/classify", &good);
    assert_eq!(a.status, 200, "{}", a.body);
    // A form whose second photo finds the queue full is refused as it is met; the client, still
    // sending several megabytes after it, reads the 503 rather than a reset connection.
    let form = [("a.jpg", good.clone()), ("b.jpg", vec![0u8; 8 << 20])];
    let a = server.post_form("/v1/classify", &form, &[]);
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.body["error"].as_str().unwrap().contains("queue"));
    assert_eq!(server.counter("waiting"), 0);
}

/// `METHOD path` with `headers`: the status and the answer's `Access-Control-*` headers.
fn cross_origin(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, HashMap<String, String>) {
    let mut req = ureq::request(method, &format!("{}{path}", server.url));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let response = match req.call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("no answer: {e}"),
    };
    let cors = response
        .headers_names()
        .into_iter()
        .filter(|n| n.starts_with("access-control-"))
        .map(|n| (n.clone(), response.header(&n).unwrap().to_string()))
        .collect();
    (response.status(), cors)
}

#[test]
fn cors_lets_the_named_origins_call_and_no_other() {
    let kitchen = "http://kitchen.local:3000";
    let server = Server::start_with(
        &["--labels", s(&mixed()), "--cors-origin", kitchen],
        &[("FOODCLIP_TOKEN", "t")],
    );
    // A browser's preflight for a POST with the token is answered without the token.
    let preflight = [
        ("Origin", kitchen),
        ("Access-Control-Request-Method", "POST"),
        (
            "Access-Control-Request-Headers",
            "authorization,content-type",
        ),
    ];
    let (status, cors) = cross_origin(&server, "OPTIONS", "/v1/classify", &preflight);
    assert_eq!(status, 200, "{cors:?}");
    assert_eq!(cors["access-control-allow-origin"], kitchen);
    assert!(cors["access-control-allow-methods"].contains("POST"));
    assert!(cors["access-control-allow-headers"].contains("authorization"));
    // Answers, refusals too, say the kitchen's page may read them.
    let auth = [("Origin", kitchen), ("Authorization", "Bearer t")];
    let (status, cors) = cross_origin(&server, "GET", "/v1/labels", &auth);
    assert_eq!(
        (status, cors["access-control-allow-origin"].as_str()),
        (200, kitchen)
    );
    let (status, cors) = cross_origin(&server, "GET", "/v1/labels", &[("Origin", kitchen)]);
    assert_eq!(
        (status, cors["access-control-allow-origin"].as_str()),
        (401, kitchen)
    );
    assert!(cors["access-control-expose-headers"].contains("retry-after"));
    // Another origin is not named in any answer.
    let other = [
        ("Origin", "http://elsewhere.example"),
        ("Authorization", "Bearer t"),
    ];
    let (status, cors) = cross_origin(&server, "GET", "/v1/labels", &other);
    assert_eq!(status, 200);
    assert!(
        !cors.contains_key("access-control-allow-origin"),
        "{cors:?}"
    );
    // Without --cors-origin there are no CORS headers; `*` allows any origin.
    let plain = Server::start(&["--labels", s(&mixed())]);
    let (_, cors) = cross_origin(&plain, "GET", "/v1/labels", &[("Origin", kitchen)]);
    assert!(cors.is_empty(), "{cors:?}");
    let any = Server::start(&["--labels", s(&mixed()), "--cors-origin", "*"]);
    let (_, cors) = cross_origin(&any, "GET", "/v1/labels", &[("Origin", kitchen)]);
    assert_eq!(cors["access-control-allow-origin"], "*");
}

#[test]
fn a_stop_signal_finishes_the_request_in_flight_then_exits_0() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut server = Server::start(&["--labels", s(&mixed())]);
        let good = std::fs::read(fixtures().join("images/baseline.jpg")).unwrap();
        let mut in_flight =
            partial_request(server.port(), "/v1/classify", good.len(), &good[..100]);
        server.wait_for_waiting(1);
        unsafe { libc::kill(server.child.id() as i32, signal) };
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "it waits for the request"
        );
        in_flight.write_all(&good[100..]).unwrap();
        let (status, body) = read_response(&mut in_flight);
        assert_eq!(status, 200, "{body}");
        let records: Value = serde_json::from_str(&body).unwrap();
        assert!(records[0]["predictions"].is_array());
        assert_eq!(server.wait(), Some(0), "{}", server.log());
        assert!(server.log().contains("stopping"));
    }
}

#[test]
fn configuration_errors_exit_2_with_one_line() {
    let run = |args: &[&str]| {
        let o = foodclip()
            .arg("--model")
            .arg(fixtures().join("tiny-openai"))
            .arg("serve")
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        (o.status.code(), err)
    };
    let (code, err) = run(&["--labels", s(&mixed()), "--regions", "boxes.csv"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--layout, --grid or --regions auto"), "{err}");
    let (code, err) = run(&["--labels", s(&mixed()), "--max-body", "lots"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = run(&[
        "--labels",
        s(&mixed()),
        "--cors-origin",
        "kitchen.local/app",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--cors-origin kitchen.local/app: give an origin"),
        "{err}"
    );
    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, err) = run(&["--labels", s(&mixed()), "--port", &port]);
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot listen on 127.0.0.1"), "{err}");
    // A model that cannot be named fails before listening; one that does not load ends the
    // server after it has started listening.
    let (code, err) = {
        let o = foodclip()
            .args(["--model", "/nonexistent/model", "serve", "--port", "0"])
            .args(["--labels", s(&mixed())])
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(2), "{err}");
    assert!(
        !err.contains("listening") && err.contains("no such directory"),
        "{err}"
    );
    let broken = tempfile::tempdir().unwrap();
    common::copy_checkpoint("tiny-openai", broken.path());
    std::fs::write(broken.path().join("config.json"), "{ not json").unwrap();
    let o = foodclip()
        .arg("--model")
        .arg(broken.path())
        .args(["serve", "--port", "0", "--labels", s(&mixed())])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("listening") && err.contains("cannot load model"),
        "{err}"
    );
    assert_eq!(
        err.lines().last().unwrap().matches("foodclip:").count(),
        1,
        "{err}"
    );
    // Every interface: a warning, and the server answers.
    let mut open = Server::spawn(&["--labels", s(&mixed()), "--host", "0.0.0.0"], &[]);
    assert!(open.log().contains("open to the network"), "{}", open.log());
    let start = Instant::now();
    while !open.log().contains("ready") {
        assert!(start.elapsed().as_secs() < 30, "{}", open.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(open.stop(libc::SIGTERM), Some(0));
    // --quiet keeps only where it listens: no ready, access or stopping lines.
    let mut quiet = Server::start(&["--labels", s(&mixed()), "--quiet"]);
    assert_eq!(quiet.get("/v1/labels").status, 200);
    assert_eq!(quiet.get("/nowhere").status, 404);
    assert_eq!(quiet.stop(libc::SIGTERM), Some(0));
    std::thread::sleep(Duration::from_millis(200));
    let log = quiet.log();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains("listening on"), "{log}");
}

#[test]
fn the_page_classifies_a_picked_photo_in_headless_chromium() {
    let Some(browser) = common::browser::chromium() else {
        return;
    };
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("labels/trays/school-5.toml");
    let server = Server::start(&["--labels", s(&mixed()), "--layout", s(&layout)]);
    let photo = fixtures().join("images/wide.jpg");
    let api = server.post("/v1/classify", &std::fs::read(&photo).unwrap());
    let profile = tempfile::tempdir().unwrap();
    let mut page = common::browser::Devtools::open(&browser, profile.path(), (1200, 1400));
    page.navigate(&format!("{}/", server.url));
    page.wait_for("document.body.dataset.ready === '1'");
    page.pick_files("#pick", &[&photo]);
    page.wait_for("!!document.querySelector('.card[data-done]')");
    page.wait_for("document.querySelectorAll('.frame svg rect').length === 5");
    // What the page shows is what the API answers: each region's best dish and its top 5.
    let shown = page.eval(
        "[...document.querySelectorAll('.record')].map(r => ({
            answer: r.querySelector('.answer').textContent,
            bars: [...r.querySelectorAll('.predictions .bar .label')].map(l => l.textContent),
            pct: r.querySelector('.predictions .bar .pct').textContent }))",
    );
    let shown = shown.as_array().unwrap();
    let records = api.body.as_array().unwrap();
    assert_eq!(shown.len(), records.len());
    for (s, r) in shown.iter().zip(records) {
        let predictions = r["predictions"].as_array().unwrap();
        assert_eq!(s["answer"], predictions[0]["label"]);
        let labels: Vec<&Value> = predictions.iter().map(|p| &p["label"]).collect();
        let bars: Vec<&Value> = s["bars"].as_array().unwrap().iter().collect();
        assert_eq!(bars, labels);
        let pct = format!("{:.1}%", predictions[0]["prob"].as_f64().unwrap() * 100.0);
        assert_eq!(s["pct"], pct.as_str());
    }
    let text = page.eval("document.body.innerText").to_string();
    assert!(
        text.contains("김치찌개") && text.contains("side-left"),
        "{text}"
    );
    // Hangul is drawn with a font that has it: as wide as two Latin letters each, not boxes.
    let ratio = page
        .eval(
            "(() => { const c = document.createElement('canvas').getContext('2d');
               c.font = getComputedStyle(document.body).font;
               return c.measureText('김치찌개').width / c.measureText('MMMM').width; })()",
        )
        .as_f64()
        .unwrap();
    assert!(ratio > 0.7, "Hangul width ratio {ratio}");
    let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-page.png");
    page.screenshot(&png);
    // The boxes are on screen in the first region's colour.
    let shot = image::open(&png).unwrap().to_rgb8();
    let orange = shot
        .pixels()
        .filter(|p| p.0[0] > 200 && (70..120).contains(&p.0[1]) && p.0[2] < 40)
        .count();
    assert!(orange > 200, "{orange} pixels of the box colour");
    // This page, standing for a kitchen application's page on another origin (its own CSP,
    // which allows only its server, set aside), calls a server that names its origin (after
    // the preflight its token needs), and is kept from reading one that does not.
    page.call("Page.setBypassCSP", serde_json::json!({"enabled": true}));
    page.navigate(&format!("{}/", server.url));
    let named = Server::start_with(
        &["--labels", s(&mixed()), "--cors-origin", &server.url],
        &[("FOODCLIP_TOKEN", "t")],
    );
    let other = Server::start(&["--labels", s(&mixed()), "--cors-origin", "http://x.example"]);
    let bytes = std::fs::read(&photo).unwrap();
    let call = |url: &str| {
        use base64::Engine as _;
        let photo = base64::engine::general_purpose::STANDARD.encode(&bytes);
        format!(
            "fetch('{url}/v1/classify?top_k=1', {{method: 'POST',
                body: Uint8Array.from(atob('{photo}'), c => c.charCodeAt(0)),
                headers: {{Authorization: 'Bearer t', 'Content-Type': 'image/jpeg'}}}})
               .then(r => r.json()).then(j => j[0].predictions[0].label, e => 'blocked')"
        )
    };
    let auth = [("Authorization", "Bearer t")];
    let want = named.post_with("/v1/classify?top_k=1", &bytes, &auth);
    assert_eq!(
        page.eval(&call(&named.url)),
        want.body[0]["predictions"][0]["label"],
        "{}",
        named.log()
    );
    assert_eq!(page.eval(&call(&other.url)), "blocked");
}

#[test]
fn forecasts_answer_as_the_command_does() {
    let dir = tempfile::tempdir().unwrap();
    let kitchen = common::kitchen::Kitchen::standard();
    let served = kitchen.history("2024-01-01", 364, 11, false);
    let history = dir.path().join("history.csv");
    let mut csv = Vec::new();
    kitchen.write_daily_csv(&served, &mut csv);
    std::fs::write(&history, csv).unwrap();
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, kitchen.labels()).unwrap();
    let plan = [
        ("2024-12-30", "쌀밥", "300", "210"),
        ("2024-12-30", "불고기", "", ""),
        ("2024-12-30", "kkakdugi", "300", "40"),
        ("2024-12-31", "오이무침", "280", "40"),
    ];
    let mut text = String::from("date,dish,servings,portion_g\n");
    let mut items = Vec::new();
    for (date, dish, servings, portion) in plan {
        text += &format!("{date},{dish},{servings},{portion}\n");
        let mut item = serde_json::json!({"date": date, "dish": dish});
        if !servings.is_empty() {
            item["servings"] = servings.parse::<f64>().unwrap().into();
            item["portion_g"] = portion.parse::<f64>().unwrap().into();
        }
        items.push(item);
    }
    let menu = dir.path().join("plan.csv");
    std::fs::write(&menu, text).unwrap();
    let o = foodclip()
        .args(["forecast", "--format", "jsonl", "--service-level", "0.95"])
        .args([
            "--history",
            s(&history),
            "--labels",
            s(&labels),
            "--menu",
            s(&menu),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = common::jsonl_records(&o.stdout);

    let server = Server::start(&["--labels", s(&labels), "--history", s(&history)]);
    let json = [("Content-Type", "application/json")];
    let body = serde_json::json!({"plan": items, "service_level": 0.95}).to_string();
    let a = server.post_with("/v1/forecast", body.as_bytes(), &json);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["forecasts"].as_array().unwrap(), &want);
    // A dish that names no class, a bad date, a body that is not a plan: 400, and it goes on.
    for (bad, says) in [
        (
            r#"{"plan":[{"date":"2024-12-30","dish":"쌀밥"},{"date":"2024-12-30","dish":"마라탕"}]}"#,
            "plan[1]: \"마라탕\" names no class",
        ),
        (
            r#"{"plan":[{"date":"30.12.2024","dish":"쌀밥"}]}"#,
            "plan[0]: date",
        ),
        (r#"{"menu":[]}"#, "send JSON"),
        (r#"{"plan":[],"service_level":1.5}"#, "service_level"),
    ] {
        let a = server.post_with("/v1/forecast", bad.as_bytes(), &json);
        assert_eq!(a.status, 400, "{bad}: {}", a.body);
        assert!(
            a.body["error"].as_str().unwrap().contains(says),
            "{bad}: {}",
            a.body
        );
    }
    let a = server.post_with("/v1/forecast", body.as_bytes(), &json);
    assert_eq!(a.status, 200, "{}", a.body);
    // Without a history there is nothing to forecast from.
    let bare = Server::start(&["--labels", s(&labels)]);
    let a = bare.post_with("/v1/forecast", body.as_bytes(), &json);
    assert_eq!(a.status, 404, "{}", a.body);
    assert!(a.body["error"].as_str().unwrap().contains("--history"));
}

#[test]
fn a_server_with_regions_auto_answers_as_classify_does() {
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("plate.png");
    image::RgbImage::from_fn(320, 240, |x, y| {
        let (dx, dy) = (x as i64 - 100, y as i64 - 110);
        if dx * dx + dy * dy < 70 * 70 {
            image::Rgb([180, 50 + (x % 7) as u8, 40])
        } else {
            image::Rgb([200, 184, 154])
        }
    })
    .save(&photo)
    .unwrap();
    let labels = mixed();
    let want = classify(&[
        "--labels",
        s(&labels),
        "--regions",
        "auto",
        "-k",
        "0",
        s(&photo),
    ]);
    let server = Server::start(&["--labels", s(&labels), "--regions", "auto"]);
    let a = server.post("/v1/classify?top_k=0", &std::fs::read(&photo).unwrap());
    assert_eq!(a.status, 200, "{}", a.body);
    let got = a.body.as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g["region"], w["region"]);
        assert_same(g, w, "plate.png");
    }
    // Leftovers measure the dishes found on the served photo, as the command does.
    let returned = dir.path().join("returned.png");
    let mut eaten = image::open(&photo).unwrap().to_rgb8();
    for (x, y, p) in eaten.enumerate_pixels_mut() {
        let (dx, dy) = (x as i64 - 100, y as i64 - 110);
        if dx * dx + dy * dy < 70 * 70 && dx > 0 {
            *p = image::Rgb([236, 234, 228]);
        }
    }
    eaten.save(&returned).unwrap();
    let want = leftovers_command("tray01", &photo, &returned, &["--regions", "auto"]);
    assert!(!want.is_empty());
    let a = server.post_fields(
        "/v1/leftovers?tray=tray01&date=2026-11-03",
        &[
            ("served", "s.png", std::fs::read(&photo).unwrap()),
            ("returned", "r.png", std::fs::read(&returned).unwrap()),
        ],
        &[],
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let got = a.body.as_array().unwrap();
    assert_eq!(got.len(), want.len());
    same_leftovers(got, &want);
}

/// `foodclip leftovers` with the fixture labels on one pair of photos (`tray`, 2026-11-03) and
/// the region flags `regions`: its records.
fn leftovers_command(tray: &str, served: &Path, returned: &Path, regions: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.csv");
    std::fs::write(
        &pairs,
        format!("{tray},{},{},2026-11-03\n", s(served), s(returned)),
    )
    .unwrap();
    let o = foodclip()
        .arg("--model")
        .arg(fixtures().join("tiny-openai"))
        .args(["leftovers", "--format", "jsonl", "--labels", s(&mixed())])
        .args(regions)
        .args(["--pairs", s(&pairs)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    common::jsonl_records(&o.stdout)
}

/// The server's leftovers records are the command's (the served photo's name aside).
fn same_leftovers(got: &[Value], want: &[Value]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        for key in [
            "tray",
            "date",
            "compartment",
            "box",
            "dish",
            "served_coverage",
            "returned_coverage",
            "leftover",
            "registration",
        ] {
            assert_eq!(g[key], w[key], "{key}: {g} against {w}");
        }
        assert!((g["prob"].as_f64().unwrap() - w["prob"].as_f64().unwrap()).abs() < 1e-4);
    }
}
