//! A real browser for the webmail tests: Debian's headless Chromium, driven by its
//! chromedriver over WebDriver (fantoccini), in the host's or a test's network namespace.
//!
//! The calls are blocking (each runs on the harness's own tokio runtime), for plain
//! `#[test]` functions; do not call them from inside another tokio runtime.

use std::future::Future;
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use fantoccini::cookies::Cookie;
use fantoccini::error::{CmdError, ErrorStatus, NewSessionError};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use super::{installed, Netns, TIMEOUT};

/// The browser window's size, so screenshots and layouts are the same on every machine.
pub const WINDOW: (u32, u32) = (1280, 900);

/// The first bytes of every PNG file.
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Whether a browser test can run: chromium and chromedriver are installed; else the test
/// is skipped, with which one is missing.
pub fn present(test: &str) -> bool {
    installed(test, "chromium") && installed(test, "chromedriver")
}

#[derive(thiserror::Error)]
pub enum BrowserError {
    #[error("starting chromedriver: {0}")]
    Spawn(std::io::Error),
    #[error("chromedriver did not say which port it listens on within {limit:?} (it printed {printed:?})")]
    NoPort { limit: Duration, printed: String },
    #[error("entering network namespace {netns}: {source}")]
    Netns {
        netns: String,
        source: std::io::Error,
    },
    #[error(
        "starting a headless Chromium session through chromedriver on 127.0.0.1:{port}: {source}"
    )]
    Session { port: u16, source: NewSessionError },
    #[error("{doing}: {source}")]
    WebDriver { doing: String, source: CmdError },
    #[error("{doing}: no answer from chromedriver within {limit:?}")]
    NoAnswer { doing: String, limit: Duration },
    #[error("waiting {limit:?} for a displayed `{selector}` on {url}: none appeared")]
    NotDisplayed {
        selector: String,
        url: String,
        limit: Duration,
    },
    #[error("writing the screenshot {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the screenshot of {url} is not a PNG: it starts with {head:02x?}")]
    NotPng { url: String, head: Vec<u8> },
}

/// As Display: `unwrap()` in a test then says what was being done, without chromedriver's
/// unsymbolized stack trace.
impl std::fmt::Debug for BrowserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A headless Chromium session. Dropping it ends the session and kills chromedriver's
/// process group (chromedriver, Chromium and Chromium's helpers), also when a test fails.
pub struct Browser {
    client: Client,
    runtime: tokio::runtime::Runtime,
    // Fields drop in order: the session ends (Drop), then the group is killed, then the
    // profile is removed.
    _chromedriver: ProcessGroup,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// chromedriver (on a port it picks) and a headless Chromium session through it, both
    /// in `netns` when given (the appliance's services are only reachable there), else in
    /// the test's own namespace. Chromium resolves each `(name, address)` of `hosts` to
    /// that address (a test namespace has no DNS resolver of its own).
    pub fn start(netns: Option<&Netns>, hosts: &[(&str, &str)]) -> Result<Browser, BrowserError> {
        let profile = tempfile::tempdir().map_err(BrowserError::Spawn)?;
        // Every WebDriver request runs on the runtime's one worker thread, so its sockets
        // are made in the namespace chromedriver listens in.
        let runtime = runtime_in(netns)?;
        let mut command = match netns {
            Some(netns) => {
                // chromedriver listens on 127.0.0.1, which a fresh namespace has down.
                netns.ip(&["link", "set", "lo", "up"]);
                netns.exec("chromedriver")
            }
            None => std::process::Command::new("chromedriver"),
        };
        let mut chromedriver = ProcessGroup(
            command
                .arg("--port=0")
                .process_group(0)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                // Not the test's stderr: a chromedriver or Chromium outliving a killed test
                // (tests/run's time limit) would hold the runner's pipe open.
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(BrowserError::Spawn)?,
        );
        let port = listening_port(&mut chromedriver.0)?;
        let capabilities = capabilities(&profile, hosts);
        let connect = async move {
            let mut builder = ClientBuilder::new(HttpConnector::new());
            builder.capabilities(capabilities);
            let url = format!("http://127.0.0.1:{port}");
            tokio::time::timeout(TIMEOUT, builder.connect(&url)).await
        };
        let client = match runtime.block_on(runtime.spawn(connect)) {
            Ok(Ok(Ok(client))) => client,
            Ok(Ok(Err(source))) => return Err(BrowserError::Session { port, source }),
            Ok(Err(_)) => {
                return Err(BrowserError::NoAnswer {
                    doing: format!(
                        "starting a headless Chromium through chromedriver on 127.0.0.1:{port}"
                    ),
                    limit: TIMEOUT,
                })
            }
            Err(panic) => std::panic::resume_unwind(panic.into_panic()),
        };
        Ok(Browser {
            client,
            runtime,
            _chromedriver: chromedriver,
            _profile: profile,
        })
    }

    /// Opens `url` and waits for its load event.
    pub fn goto(&self, url: &str) -> Result<(), BrowserError> {
        let (client, target) = (self.client.clone(), url.to_string());
        self.call(format!("opening {url}"), async move {
            client.goto(&target).await
        })
    }

    /// Types `text` into the (displayed) field `selector`, after clearing it.
    pub fn fill(&self, selector: &str, text: &str) -> Result<(), BrowserError> {
        let (client, selector, text) =
            (self.client.clone(), selector.to_string(), text.to_string());
        let doing = self.on_page(format!("filling `{selector}`"));
        self.call(doing, async move {
            let field = displayed(&client, &selector, TIMEOUT).await?;
            field.clear().await?;
            field.send_keys(&text).await
        })
    }

    /// Clicks the (displayed) element `selector`.
    pub fn click(&self, selector: &str) -> Result<(), BrowserError> {
        let (client, selector) = (self.client.clone(), selector.to_string());
        let doing = self.on_page(format!("clicking `{selector}`"));
        self.call(doing, async move {
            displayed(&client, &selector, TIMEOUT).await?.click().await
        })
    }

    /// Chooses the file at `path` in the file input `selector`, as a person would in the
    /// file dialog (file inputs are often hidden behind a button: it need not be displayed).
    pub fn choose_file(&self, selector: &str, path: &std::path::Path) -> Result<(), BrowserError> {
        let (client, selector) = (self.client.clone(), selector.to_string());
        let path = path.display().to_string();
        let doing = self.on_page(format!("choosing {path} in `{selector}`"));
        self.call(doing, async move {
            client
                .find(Locator::Css(&selector))
                .await?
                .send_keys(&path)
                .await
        })
    }

    /// Waits up to `limit` for an element `selector` to be displayed; its text.
    pub fn wait_for(&self, selector: &str, limit: Duration) -> Result<String, BrowserError> {
        let (client, wanted) = (self.client.clone(), selector.to_string());
        let doing = self.on_page(format!("waiting for `{selector}`"));
        let found = self.call(doing, async move {
            match displayed(&client, &wanted, limit).await {
                Ok(element) => element.text().await.map(Some),
                Err(CmdError::WaitTimeout) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        found.ok_or_else(|| BrowserError::NotDisplayed {
            selector: selector.to_string(),
            url: self.current_url().unwrap_or_else(|e| e.to_string()),
            limit,
        })
    }

    /// The text of the page as displayed (the body's innerText).
    pub fn page_text(&self) -> Result<String, BrowserError> {
        let client = self.client.clone();
        let doing = self.on_page("reading the text".to_string());
        self.call(doing, async move {
            client.find(Locator::Css("body")).await?.text().await
        })
    }

    /// The page's HTML as the browser has it now (with what scripts changed).
    pub fn page_source(&self) -> Result<String, BrowserError> {
        let client = self.client.clone();
        let doing = self.on_page("reading the source".to_string());
        self.call(doing, async move { client.source().await })
    }

    /// What the script `js` (a function body) returns, run in the page.
    pub fn script(&self, js: &str) -> Result<serde_json::Value, BrowserError> {
        let (client, js) = (self.client.clone(), js.to_string());
        let doing = self.on_page(format!("running `{js}`"));
        self.call(doing, async move { client.execute(&js, Vec::new()).await })
    }

    pub fn current_url(&self) -> Result<String, BrowserError> {
        let client = self.client.clone();
        self.call("asking for the current URL".to_string(), async move {
            client.current_url().await.map(String::from)
        })
    }

    /// Every cookie the browser would send to the current page.
    pub fn cookies(&self) -> Result<Vec<Cookie<'static>>, BrowserError> {
        let client = self.client.clone();
        let doing = self.on_page("reading the cookies".to_string());
        self.call(doing, async move { client.get_all_cookies().await })
    }

    /// Sets `cookie` (forged or replayed) for the current page's domain; WebDriver only
    /// sets cookies for the page the browser is on.
    pub fn add_cookie(&self, mut cookie: Cookie<'static>) -> Result<(), BrowserError> {
        let client = self.client.clone();
        let doing = self.on_page(format!("setting the cookie {}", cookie.name()));
        self.call(doing, async move {
            // chromedriver refuses a null domain or path (fantoccini sends unset ones as
            // null): the page's host and "/" are what WebDriver means by unset.
            if cookie.domain().is_none() {
                let url = client.current_url().await?;
                cookie.set_domain(url.host_str().unwrap_or_default().to_string());
            }
            if cookie.path().is_none() {
                cookie.set_path("/");
            }
            // fantoccini sends an unset SameSite as None, which Chromium refuses without
            // Secure; Lax is what browsers assume when a cookie does not say.
            if cookie.same_site().is_none() {
                cookie.set_same_site(cookie::SameSite::Lax);
            }
            client.add_cookie(cookie).await
        })
    }

    /// A PNG of the window, written to `target/test-artifacts/NAME.png` (for a human, or
    /// CI's artifacts); its path.
    pub fn screenshot(&self, name: &str) -> Result<PathBuf, BrowserError> {
        let client = self.client.clone();
        let url = self.current_url()?;
        let png = self.call(format!("taking a screenshot of {url}"), async move {
            client.screenshot().await
        })?;
        if !png.starts_with(PNG_SIGNATURE) {
            let head = png[..png.len().min(8)].to_vec();
            return Err(BrowserError::NotPng { url, head });
        }
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
        let path = dir.join(format!("{name}.png"));
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, &png))
            .map_err(|source| BrowserError::Write {
                path: path.clone(),
                source,
            })?;
        Ok(path)
    }

    /// Runs one WebDriver exchange on the runtime's worker (in the namespace); `doing`
    /// names it in the error.
    fn call<T: Send + 'static>(
        &self,
        doing: String,
        exchange: impl Future<Output = Result<T, CmdError>> + Send + 'static,
    ) -> Result<T, BrowserError> {
        // Longer than any wait inside: a hung Chromium fails the test instead of hanging it.
        let limit = TIMEOUT * 2;
        let task = self
            .runtime
            .spawn(async move { tokio::time::timeout(limit, exchange).await });
        match self.runtime.block_on(task) {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(source))) => Err(BrowserError::WebDriver { doing, source }),
            Ok(Err(_)) => Err(BrowserError::NoAnswer { doing, limit }),
            Err(panic) => std::panic::resume_unwind(panic.into_panic()),
        }
    }

    /// "`what` on URL", for an error message (the URL as far as the browser says).
    fn on_page(&self, what: String) -> String {
        let client = self.client.clone();
        let url = self.runtime.block_on(
            self.runtime
                .spawn(async move { client.current_url().await }),
        );
        match url {
            Ok(Ok(url)) => format!("{what} on {url}"),
            _ => what,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session lets chromedriver quit Chromium before its profile is removed;
        // the group's SIGKILL (ProcessGroup's drop) then takes whatever is left.
        let client = self.client.clone();
        let close =
            async move { tokio::time::timeout(Duration::from_secs(5), client.close()).await };
        let _ = self.runtime.block_on(self.runtime.spawn(close));
    }
}

/// The session's capabilities: Chromium headless, as root (no sandbox), with a fresh
/// profile, trusting the appliance's self-signed certificate.
fn capabilities(
    profile: &tempfile::TempDir,
    hosts: &[(&str, &str)],
) -> serde_json::Map<String, serde_json::Value> {
    let (width, height) = WINDOW;
    let rules: Vec<String> = hosts
        .iter()
        .map(|(name, address)| format!("MAP {name} {address}"))
        .collect();
    let json = serde_json::json!({
        "browserName": "chrome",
        "acceptInsecureCerts": true,
        "timeouts": { "pageLoad": TIMEOUT.as_millis() as u64, "script": TIMEOUT.as_millis() as u64 },
        "goog:chromeOptions": {
            "args": [
                "--headless=new",
                "--no-sandbox",
                // The container's /dev/shm is small; Chromium crashes when it fills.
                "--disable-dev-shm-usage",
                format!("--user-data-dir={}", profile.path().display()),
                format!("--window-size={width},{height}"),
                // No GPU here; no calls home, and no first-run pages, to slow or disturb a test.
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
                "--no-default-browser-check",
                format!("--host-resolver-rules={}", rules.join(", ")),
            ],
        },
    });
    match json {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// The port chromedriver (run with --port=0) reports it listens on.
fn listening_port(chromedriver: &mut std::process::Child) -> Result<u16, BrowserError> {
    let stdout = chromedriver.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads on after the port, so chromedriver never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut printed = String::new();
    while let Ok(line) =
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        if let Some(port) = line
            .strip_prefix("ChromeDriver was started successfully on port ")
            .and_then(|rest| rest.trim_end_matches('.').parse().ok())
        {
            return Ok(port);
        }
        printed.push_str(&line);
        printed.push('\n');
    }
    Err(BrowserError::NoPort {
        limit: TIMEOUT,
        printed,
    })
}

/// A runtime whose one worker thread (and blocking threads) are in `netns`, when given.
fn runtime_in(netns: Option<&Netns>) -> Result<tokio::runtime::Runtime, BrowserError> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(1).enable_all();
    if let Some(netns) = netns {
        let path = format!("/run/netns/{}", netns.name);
        let file = std::fs::File::open(&path).map_err(|source| BrowserError::Netns {
            netns: netns.name.clone(),
            source,
        })?;
        let file = Arc::new(file);
        builder.on_thread_start(move || {
            nix::sched::setns(&*file, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("the runtime's thread enters the network namespace");
        });
    }
    builder.build().map_err(BrowserError::Spawn)
}

/// chromedriver, leader of its own process group (Chromium and its helpers are in it): on
/// drop the group gets SIGKILL and chromedriver is reaped.
struct ProcessGroup(std::process::Child);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// The first element `selector` matches once it is displayed, polled until `limit`.
async fn displayed(
    client: &Client,
    selector: &str,
    limit: Duration,
) -> Result<fantoccini::elements::Element, CmdError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        // Not there yet, or replaced by a navigation between the find and the check.
        let found = match client.find(Locator::Css(selector)).await {
            Ok(element) => element
                .is_displayed()
                .await
                .map(|shown| shown.then_some(element)),
            Err(e) => Err(e),
        };
        match found {
            Ok(Some(element)) => return Ok(element),
            Ok(None) => {}
            Err(CmdError::Standard(e))
                if matches!(
                    e.error,
                    ErrorStatus::NoSuchElement | ErrorStatus::StaleElementReference
                ) => {}
            Err(e) => return Err(e),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CmdError::WaitTimeout);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
