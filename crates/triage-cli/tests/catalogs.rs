//! The catalog presets under `models/catalogs/` work as they are: each loads, every enabled model has
//! predictions (outcomes, or a prior from a model the bundled policy knows), a prompt routes
//! to one of them, and `serve` starts with only the provider keys added.

#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

mod common;

use common::root;

fn presets() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(root().join("models/catalogs"))
        .expect("models/catalogs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    files
}

fn triage(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_triage"))
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "error")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("triage runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_preset_loads_predicts_every_model_and_routes() {
    for preset in presets() {
        let config = preset.to_string_lossy().into_owned();
        let (ok, listed, said) = triage(&["--config", &config, "models"]);
        assert!(ok, "{config}: {said}");
        let enabled: Vec<&str> = listed
            .lines()
            .skip(1)
            .filter(|l| l.split_whitespace().nth(5) == Some("true"))
            .collect();
        assert!(!enabled.is_empty(), "{config}: {listed}");
        for line in &enabled {
            assert!(
                line.contains("outcomes") || line.contains("prior: "),
                "{config}: a model with no predictions: {line}"
            );
        }
        let (ok, decided, said) = triage(&["--config", &config, "route", "What is 2+2?"]);
        assert!(ok, "{config}: {said}");
        let chosen = decided
            .lines()
            .find_map(|l| l.strip_prefix("model:"))
            .map(str::trim)
            .unwrap_or_default();
        assert!(
            enabled
                .iter()
                .any(|l| l.split_whitespace().next() == Some(chosen)),
            "{config}: routed to {chosen:?}, not an enabled model of the preset"
        );
    }
}

#[test]
fn serve_starts_on_a_preset_with_only_provider_keys_added() {
    let config = root().join("models/catalogs/seed-foundry.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = |keys: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_triage"))
            .arg("--config")
            .arg(&config)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .current_dir(root())
            .env_remove("OPENAI_API_KEY")
            .env_remove("ANTHROPIC_API_KEY")
            .envs(keys.iter().copied())
            .env("RUST_LOG", "error")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("triage serve starts")
    };
    // Without keys it says which variable to export.
    let refused = serve(&[]).wait_with_output().expect("exits");
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("_API_KEY"), "{said}");
    // With them it serves.
    let mut child = serve(&[
        ("OPENAI_API_KEY", "sk-test"),
        ("ANTHROPIC_API_KEY", "sk-test"),
    ]);
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("reads");
        lines.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(lines[0].starts_with("listening on "), "{lines:?}");
    assert!(lines[1].starts_with("gateway on "), "{lines:?}");
}
