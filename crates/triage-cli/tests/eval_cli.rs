//! `triage train` then `triage eval` as a user runs them, on a small table written here whose
//! models are known only by their `cost_usd` (not in the catalog, no prices): both commands work
//! on it, the evaluation's JSON carries the paired bootstrap asked for with `--bootstrap` (none
//! with 0), and options that could only fail late (an output directory that cannot be made, a
//! policy of other models, impossible `--folds`) are refused before anything is evaluated.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Arithmetic prompts only the dear model gets right; writing prompts both get right. Enough dev
/// prompts that training chooses its blend and margins by replaying decisions.
fn write_table(path: &Path) {
    write_table_where(path, |_| false);
}

/// [`write_table`], with the cheap model also right on the arithmetic prompts `small_sums` picks.
fn write_table_where(path: &Path, small_sums: impl Fn(usize) -> bool) {
    let mut csv = String::from("prompt_id,prompt,model,quality,cost_usd,split\n");
    for i in 0..200 {
        let split = ["train", "train", "train", "dev", "test"][i % 5];
        let (prompt, small_right) = if i % 2 == 0 {
            (
                format!("What is {i} times {} plus 17?", i + 3),
                u8::from(small_sums(i)),
            )
        } else {
            (
                format!("Write a short friendly note to neighbour number {i}."),
                1,
            )
        };
        let _ = writeln!(csv, "p{i},{prompt},big,1,0.01,{split}");
        let _ = writeln!(csv, "p{i},{prompt},small,{small_right},0.001,{split}");
    }
    std::fs::write(path, csv).expect("write table");
}

fn run(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_triage"))
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("triage runs")
}

fn triage(args: &[&str], cache: &Path) -> Output {
    let out = run(args, cache);
    assert!(
        out.status.success(),
        "triage {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The table written under `dir` and a policy trained on it with `triage train`, as a user
/// would: (table, policy, embedding cache).
fn trained(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (table, policy, cache) = (
        dir.join("table.csv"),
        dir.join("policy.json"),
        dir.join("cache"),
    );
    write_table(&table);
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let out = triage(
        &["train", "--data", &path(&table), "--out", &path(&policy)],
        &cache,
    );
    assert!(
        !out.stderr.contains(&0x1b),
        "no terminal escapes when stderr is not a terminal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (table, policy, cache)
}

fn report(path: &Path) -> serde_json::Value {
    let text = std::fs::read(path).expect("eval wrote its JSON");
    let json: serde_json::Value = serde_json::from_slice(&text).expect("valid JSON");
    json["report"].clone()
}

#[test]
fn eval_reports_the_bootstrap_it_is_asked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (table, policy, cache) = trained(dir.path());
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();

    // Its directory does not exist yet: eval makes it, as train does for --out.
    let json = dir.path().join("reports").join("eval.json");
    let eval = |resamples: &str| {
        let args = [
            "eval",
            "--data",
            &path(&table),
            "--policy",
            &path(&policy),
            "--bootstrap",
            resamples,
            "--json",
            &path(&json),
        ];
        String::from_utf8_lossy(&triage(&args, &cache).stdout).into_owned()
    };
    let stdout = eval("50");
    assert!(
        stdout.contains("paired bootstrap, 50 resamples of the 40 prompts"),
        "{stdout}"
    );
    let r = report(&json);
    let boot = &r["bootstrap"];
    assert_eq!(boot["resamples"], 50);
    assert_eq!(boot["triage_aiq"], r["routers"][0]["aiq"]);
    let against: Vec<&str> = boot["comparisons"]
        .as_array()
        .expect("comparisons")
        .iter()
        .filter_map(|c| c["against"].as_str())
        .collect();
    assert!(against.iter().any(|a| a.starts_with("kNN")), "{against:?}");

    let stdout = eval("0");
    assert!(!stdout.contains("paired bootstrap"), "{stdout}");
    assert!(report(&json)["bootstrap"].is_null());
}

#[test]
fn eval_refuses_bad_options_before_evaluating() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (table, cache) = (dir.path().join("table.csv"), dir.path().join("cache"));
    write_table(&table);
    let table = table.to_str().expect("utf-8 path");
    let refused = |extra: &[&str], expected: &str| {
        let mut args = vec!["eval", "--data", table, "--policy", "models/policy.json"];
        args.extend_from_slice(extra);
        let out = run(&args, &cache);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("router"),
            "{extra:?}: evaluated before refusing"
        );
    };
    // An output under a file cannot have its directory made.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").expect("write");
    let json = file.join("eval.json");
    let expected = format!(
        "cannot write {}: cannot create directory {}",
        json.display(),
        file.display()
    );
    refused(&["--json", json.to_str().expect("utf-8 path")], &expected);
    // The bundled policy's models are not this table's.
    refused(&[], "none of the selected models");
    refused(&[], "which has: big, small");
}

#[test]
fn folds_are_checked_before_the_evaluation_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (table, policy, cache) = trained(dir.path());
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    for (folds, expected) in [
        ("1", "--folds needs at least 2 folds"),
        ("150", "--folds 150: fold"),
        ("5000", "--folds 5000: the table has only 200 prompts"),
        ("18446744073709551615", "the table has only 200 prompts"),
    ] {
        let args = [
            "eval",
            "--data",
            &path(&table),
            "--policy",
            &path(&policy),
            "--folds",
            folds,
        ];
        let out = run(&args, &cache);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "{stderr}"
        );
        assert!(String::from_utf8_lossy(&out.stdout).is_empty());
    }
    // Training's cross-validation needs two folds at least, on `train` as on `eval`.
    let (table, policy) = (path(&table), path(&policy));
    for args in [
        vec!["train", "--data", &table, "--cv-folds", "1"],
        vec![
            "eval",
            "--data",
            &table,
            "--policy",
            &policy,
            "--cv-folds",
            "1",
        ],
    ] {
        let out = run(&args, &cache);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("1 is not in 2..=100"),
            "{args:?}: {stderr}"
        );
    }
}

/// The cheap model is right on every 4th prompt's sum, which the prompt does not show; its
/// draft does: a plain answer when right, a hedged one when wrong.
fn small_sums(i: usize) -> bool {
    i.is_multiple_of(4)
}

/// Answer texts for [`write_table_where`] with [`small_sums`]: the dear model always gives the
/// right sum; both write a note (no final answer) for the writing prompts.
fn write_responses(path: &Path) {
    let mut csv = String::from("prompt_id,model,response\n");
    for i in 0..200 {
        let right = i * (i + 3) + 17;
        if i % 2 == 1 {
            let _ = writeln!(csv, "p{i},big,\"Dear neighbour, hello!\"");
            let _ = writeln!(csv, "p{i},small,\"Hi neighbour, warm wishes!\"");
            continue;
        }
        let _ = writeln!(csv, "p{i},big,\"Working it out... The answer is {right}.\"");
        if small_sums(i) {
            let _ = writeln!(csv, "p{i},small,\"The answer is {right}.\"");
        } else {
            let _ = writeln!(csv, "p{i},small,\"I'm not sure; probably {}.\"", right + 1);
        }
    }
    std::fs::write(path, csv).expect("write responses");
}

#[test]
fn cascades_are_trained_and_scored_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (table, plain_policy, cache) = trained(dir.path());
    write_table_where(&table, small_sums);
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let responses = dir.path().join("responses.csv");
    write_responses(&responses);
    let (table, responses) = (path(&table), path(&responses));

    // --cascade needs the answer texts, and a policy trained with them.
    let plain = path(&plain_policy);
    let eval_plain = |extra: &[&str]| {
        let mut args = vec!["eval", "--data", &table, "--policy", &plain, "--cascade"];
        args.extend_from_slice(extra);
        run(&args, &cache)
    };
    let out = eval_plain(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--responses"));
    let out = eval_plain(&["--responses", &responses]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("has no acceptor"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "refused before evaluating");

    let policy = path(&dir.path().join("verify.json"));
    let out = triage(
        &[
            "train",
            "--data",
            &table,
            "--responses",
            &responses,
            "--out",
            &policy,
        ],
        &cache,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The prompt cannot tell which sums the cheap model gets right; its draft can, so drafts
    // pay somewhere on the curve.
    assert!(stdout.contains("acceptor: 1 draft plans"), "{stdout}");
    assert!(!stdout.contains("drafts first at 0 of"), "{stdout}");

    let (json, choices, plot) = (
        path(&dir.path().join("eval.json")),
        path(&dir.path().join("choices.csv")),
        path(&dir.path().join("plot.svg")),
    );
    let out = triage(
        &[
            "eval",
            "--data",
            &table,
            "--policy",
            &policy,
            "--cascade",
            "--responses",
            &responses,
            "--json",
            &json,
            "--export-choices",
            &choices,
            "--bootstrap",
            "50",
            "--plot",
            &plot,
        ],
        &cache,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("verify, then escalate (40 prompts"),
        "{stdout}"
    );
    let text = std::fs::read(&json).expect("json");
    let report: serde_json::Value = serde_json::from_slice(&text).expect("valid JSON");
    assert_eq!(
        report["cascade"]["routers"].as_array().map(Vec::len),
        Some(4)
    );
    assert_eq!(report["cascade"]["bootstrap"]["resamples"], 50);
    let csv = std::fs::read_to_string(&choices).expect("choices");
    let svg = std::fs::read_to_string(&plot).expect("plot");
    assert!(
        svg.contains("cascade (learned acceptor)"),
        "the cascade is plotted"
    );
    assert!(
        csv.starts_with("prompt_id,knob_setting,answered_by,called\n"),
        "{csv:.200}"
    );
}
