//! Headless Chromium for the tests that check pages and drawings as a browser shows them.
//!
//! Needs `chromium` (Debian's package; `.ci/run` installs it, with a Korean font). Where it is
//! missing [`chromium`] says so and the test passes, except under CI (`CI` set), where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `FOODCLIP_CHROMIUM`, else the first Chromium on `PATH` (as `.ci/run` looks for it); `None`
/// (after saying so) where there is none outside CI.
pub fn chromium() -> Option<PathBuf> {
    let from_env = std::env::var_os("FOODCLIP_CHROMIUM").map(PathBuf::from);
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .flat_map(|dir| ["chromium", "chromium-browser", "google-chrome"].map(|n| dir.join(n)));
    let found = from_env.into_iter().chain(on_path).find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium (.ci/run installs it)"
        );
        eprintln!("skipped: no chromium (apt-get install chromium fonts-nanum)");
    }
    found
}

/// Screenshots `page` with headless Chromium into `png`, in a window of `(width, height)`.
pub fn screenshot(browser: &Path, page: &Path, png: &Path, profile: &Path, (w, h): (u32, u32)) {
    let o = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--window-size={w},{h}"))
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        png.is_file(),
        "chromium wrote no screenshot: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A headless Chromium driven over the DevTools protocol, for pages that must be used, not
/// only looked at (picking a file, waiting for an answer).
pub struct Devtools {
    child: std::process::Child,
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next: u64,
}

impl Devtools {
    /// Starts `browser` with a `(width, height)` window and a fresh `profile`, and connects to
    /// its first tab.
    pub fn open(browser: &Path, profile: &Path, (w, h): (u32, u32)) -> Self {
        let child = Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--window-size={w},{h}"))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Chromium writes the port it picked into the profile.
        let file = profile.join("DevToolsActivePort");
        let start = std::time::Instant::now();
        let port = loop {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if let Some(port) = text
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<u16>().ok())
            {
                break port;
            }
            assert!(
                start.elapsed().as_secs() < 60,
                "chromium gave no DevTools port"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let list: serde_json::Value = ureq::get(&format!("http://127.0.0.1:{port}/json/list"))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        let url = list
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a tab")["webSocketDebuggerUrl"]
            .as_str()
            .unwrap()
            .to_string();
        let (mut ws, _) = tungstenite::connect(url).unwrap();
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_mut() {
            s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
                .unwrap();
        }
        Self { child, ws, next: 0 }
    }

    /// Calls a DevTools method and returns its result (events in between are skipped).
    pub fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next += 1;
        let id = self.next;
        let msg = serde_json::json!({"id": id, "method": method, "params": params});
        self.ws.send(msg.to_string().into()).unwrap();
        loop {
            let text = self.ws.read().unwrap().into_text().unwrap_or_default();
            let reply: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if reply["id"] == id {
                assert!(reply["error"].is_null(), "{method}: {}", reply["error"]);
                return reply["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression (promises awaited).
    pub fn eval(&mut self, expression: &str) -> serde_json::Value {
        let params = serde_json::json!({
            "expression": expression, "returnByValue": true, "awaitPromise": true
        });
        let result = self.call("Runtime.evaluate", params);
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// Waits up to a minute for `expression` to be true.
    pub fn wait_for(&mut self, expression: &str) {
        let start = std::time::Instant::now();
        while self.eval(expression) != serde_json::Value::Bool(true) {
            assert!(start.elapsed().as_secs() < 60, "never true: {expression}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Opens `url` and waits for it to load.
    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", serde_json::json!({ "url": url }));
        self.wait_for("document.readyState === 'complete'");
    }

    /// Picks `files` in the file input `selector`, as a person choosing them would.
    pub fn pick_files(&mut self, selector: &str, files: &[&Path]) {
        let root = self.call("DOM.getDocument", serde_json::json!({}))["root"]["nodeId"].clone();
        let node = self.call(
            "DOM.querySelector",
            serde_json::json!({"nodeId": root, "selector": selector}),
        )["nodeId"]
            .clone();
        let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        self.call(
            "DOM.setFileInputFiles",
            serde_json::json!({"nodeId": node, "files": files}),
        );
    }

    /// Writes a PNG of the page as shown.
    pub fn screenshot(&mut self, png: &Path) {
        use base64::Engine as _;
        let shot = self.call(
            "Page.captureScreenshot",
            serde_json::json!({"format": "png"}),
        );
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(png, bytes).unwrap();
    }
}

impl Drop for Devtools {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pixels of `shot` within 8 levels of `rgb` in every channel.
pub fn pixels_like(shot: &image::RgbImage, rgb: [u8; 3]) -> usize {
    shot.pixels()
        .filter(|p| p.0.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) < 8))
        .count()
}
