//! A real `triage serve` child process for the integration tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use triage_proto::v1::{FeedbackRequest, Message, RouteRequest};

/// The repository root (where `models/` and the encoder live).
pub fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Starts `triage serve` on port 0 over `data_dir` (gRPC only), with `env` set (on top of
/// `RUST_LOG=warn`), and returns it with the address it printed.
pub fn spawn_server(data_dir: &Path, env: &[(&str, &str)]) -> (Child, String) {
    let (child, mut urls) = spawn(data_dir, env, &["--http-listen", "off"], 1);
    (child, urls.remove(0))
}

/// Starts `triage serve` with its HTTP gateway on port 0 and `config`; returns it with the
/// gRPC and gateway URLs.
pub fn spawn_with_gateway(data_dir: &Path, config: &Path) -> (Child, String, String) {
    let config = config.to_string_lossy().into_owned();
    let args = ["--config", config.as_str(), "--http-listen", "127.0.0.1:0"];
    let (child, urls) = spawn(data_dir, &[], &args, 2);
    (child, urls[0].clone(), urls[1].clone())
}

/// Starts `triage serve` (gRPC only) with `config` and `env`; returns it with its URL.
pub fn spawn_with_config(data_dir: &Path, config: &Path, env: &[(&str, &str)]) -> (Child, String) {
    let config = config.to_string_lossy().into_owned();
    let args = ["--config", config.as_str(), "--http-listen", "off"];
    let (child, mut urls) = spawn(data_dir, env, &args, 1);
    (child, urls.remove(0))
}

fn spawn(
    data_dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
    lines: usize,
) -> (Child, Vec<String>) {
    let (global, serve): (Vec<&str>, Vec<&str>) = match args.first() {
        Some(&"--config") => (args[..2].to_vec(), args[2..].to_vec()),
        _ => (Vec::new(), args.to_vec()),
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_triage"))
        .args(global)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(serve)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("triage serve starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut urls = Vec::new();
    for _ in 0..lines {
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("reads the address lines");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .map(|a| format!("http://{a}"))
            .or_else(|| line.trim().strip_prefix("gateway on ").map(str::to_owned))
            .unwrap_or_else(|| panic!("unexpected line {line:?} (run scripts/setup.sh first)"));
        urls.push(addr);
    }
    // Keep reading so that later lines never meet a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    (child, urls)
}

/// `[[providers]]` entries for every provider the bundled catalog names, all pointed at the
/// local upstream at `base_url` (Anthropic's speaking the Messages API).
pub fn providers_at(base_url: &str) -> String {
    let mut providers = String::new();
    for (name, kind) in [
        ("openai", "openai"),
        ("anthropic", "anthropic"),
        ("deepseek", "openai"),
        ("together", "openai"),
        ("google", "openai"),
        ("fireworks", "openai"),
    ] {
        providers.push_str(&format!(
            "[[providers]]\nname = \"{name}\"\nkind = \"{kind}\"\nbase_url = \"{base_url}\"\n\n"
        ));
    }
    providers
}

/// Runs `triage ARGS` from the repository root; it must succeed. Returns its stdout.
pub fn triage(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_triage"))
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("triage runs");
    assert!(
        out.status.success(),
        "triage {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// What `triage train --from-log DIR --dry-run --json` counts in `dir` (it must succeed).
pub fn dry_run_counts(dir: &Path) -> serde_json::Value {
    let dir = dir.to_string_lossy();
    let out = triage(&["train", "--from-log", &dir, "--dry-run", "--json"]);
    serde_json::from_str(&out).expect("JSON on stdout")
}

/// A short distinct question, `i`.
pub fn route_request(i: usize) -> RouteRequest {
    RouteRequest {
        messages: vec![Message {
            role: "user".into(),
            content: format!("Question {i}: what is {i} times 7?"),
        }],
        ..Default::default()
    }
}

/// A good report on `request_id` answered by `model`.
pub fn report(request_id: &str, feedback_id: &str, model: &str) -> FeedbackRequest {
    FeedbackRequest {
        request_id: request_id.into(),
        feedback_id: feedback_id.into(),
        model: model.into(),
        quality: Some(1.0),
        output_tokens: 10,
        cost_usd: 0.0001,
        ..Default::default()
    }
}

/// A child process killed (and reaped) when dropped, so that a failing test leaves no server
/// running.
#[allow(dead_code)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
