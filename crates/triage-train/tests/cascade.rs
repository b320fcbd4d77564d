//! Verify, then escalate, end to end on a slice of real outcomes with the models' real answer
//! texts: `train --responses` learns an acceptor the policy file carries, `eval --cascade`
//! scores it beside routing alone and the two fixed rules, and bad responses files are refused.
//!
//! Needs `../shared/data/` (or `$TRIAGE_SHARED_DATA`); skips, saying so, where it is absent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use triage_policy::Policy;
use triage_train::cascade::eval::{evaluate_cascade, export_cascade_choices};
use triage_train::responses::{Responses, ResponsesSource};
use triage_train::table::Split;
use triage_train::{TrainOptions, prepare, train};

mod common;
use common::{MODELS, options, shared_file, slice};

fn source(path: &Path, answer_column: Option<&str>) -> ResponsesSource {
    ResponsesSource {
        path: path.to_path_buf(),
        answer_column: answer_column.map(str::to_owned),
    }
}

/// Training options for the slice with the shared responses file (keys from `answer_column`
/// when given), and that file's path; `None` where the shared data is absent.
fn with_responses(dir: &Path, answer_column: Option<&str>) -> Option<(TrainOptions, PathBuf)> {
    let data = slice(dir)?;
    let responses = shared_file("zeroeval_responses.parquet")?;
    let mut opts = options(data, dir.join("policy.json"));
    opts.force = true;
    opts.responses = Some(source(&responses, answer_column));
    Some((opts, responses))
}

#[test]
fn a_trained_acceptor_is_scored_beside_routing_and_every_call_is_paid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((opts, responses_path)) = with_responses(dir.path(), None) else {
        return;
    };
    let report = train(&opts).expect("trains with responses");
    let acceptor = report.policy.acceptor.as_ref().expect("an acceptor");
    assert_eq!(acceptor.answers, "generic");
    assert!(!acceptor.settings.is_empty());
    assert!(
        acceptor
            .plans
            .iter()
            .flat_map(|p| &p.drafts)
            .all(|m| MODELS.contains(&m.as_str()))
    );
    // The file on disk carries it and validates.
    let policy = Policy::load(&opts.out).expect("loads");
    assert_eq!(policy.file().acceptor.as_ref(), Some(acceptor));
    assert!(report.policy.training["acceptor"]["settings"].is_array());

    let prepared = prepare(&opts).expect("prepare");
    let responses =
        Responses::load(&source(&responses_path, None), &prepared.outcomes).expect("responses");
    let catalog = opts.settings.catalog().expect("catalog");
    let c = evaluate_cascade(&prepared, &policy, &responses, &catalog, Split::Test, 200)
        .expect("cascade");
    // The default catalog has every slice model's latency, so the critical path is modelled.
    assert!(
        c.paths
            .iter()
            .all(|(_, f)| f.iter().all(|x| x.critical_ms > 0.0))
    );
    assert_eq!(c.routers.len(), 4, "learned, routing, two fixed rules");
    assert!(c.routers.iter().all(|r| r.aiq.is_finite() && r.aiq > 0.0));
    let b = c.bootstrap.as_ref().expect("bootstrap");
    assert_eq!(
        b.comparisons.len(),
        4,
        "against routing, both rules, the zero router"
    );

    // Cost counts every call: the exported calls, priced from the table, give each λ's mean.
    let csv = dir.path().join("choices.csv");
    export_cascade_choices(&c, &csv).expect("export");
    let df = CsvReadOptions::default()
        .try_into_reader_with_file_path(Some(csv))
        .expect("reader")
        .finish()
        .expect("csv");
    let col = |n: &str| -> Vec<String> {
        df.column(n)
            .unwrap_or_else(|_| panic!("column {n}"))
            .str()
            .expect("text")
            .iter()
            .map(|v| v.unwrap_or_default().to_owned())
            .collect()
    };
    let (ids, knobs, answered, called) = (
        col("prompt_id"),
        col("knob_setting"),
        col("answered_by"),
        col("called"),
    );
    let o = &prepared.outcomes;
    let index: HashMap<&str, usize> = o
        .prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id.as_str(), i))
        .collect();
    let mut cost_by_knob: HashMap<&str, (f64, usize)> = HashMap::new();
    let mut escalated = 0;
    for k in 0..ids.len() {
        let calls: Vec<&str> = called[k].split(';').collect();
        assert!(calls.contains(&answered[k].as_str()), "row {k}");
        escalated += usize::from(calls.len() > 1 && calls.last() == Some(&answered[k].as_str()));
        let p = index[ids[k].as_str()];
        let cost: f64 = calls
            .iter()
            .map(|m| {
                o.cells[p][o.model_index(m).expect("model")]
                    .expect("cell")
                    .cost_usd
            })
            .sum();
        let e = cost_by_knob.entry(knobs[k].as_str()).or_default();
        e.0 += cost;
        e.1 += 1;
    }
    for f in &c.paths[0].1 {
        let label = format!("lambda={}", f.lambda);
        let (sum, n) = cost_by_knob[label.as_str()];
        assert!((sum / n as f64 - f.point.cost).abs() < 1e-12, "{label}");
    }
    assert!(escalated > 0 || c.paths[0].1.iter().all(|f| f.accepted > 0.999));
}

#[test]
fn the_benchmark_extraction_can_stand_in_for_the_generic_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((mut opts, _)) = with_responses(dir.path(), Some("final_answer")) else {
        return;
    };
    opts.folds = 3;
    let report = train(&opts).expect("trains");
    assert_eq!(
        report.policy.acceptor.as_ref().map(|a| a.answers.as_str()),
        Some("final_answer")
    );
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn bad_responses_files_are_refused_with_what_to_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(data) = slice(dir.path()) else {
        return;
    };
    let prepared = prepare(&options(data, dir.path().join("p.json"))).expect("prepare");
    let id = prepared.outcomes.prompts[0].id.clone();
    let model = prepared.outcomes.models[0].clone();
    let cases = [
        (
            "dup.csv",
            format!("prompt_id,model,response\n{id},{model},a\n{id},{model},b\n"),
            "second response",
        ),
        (
            "nocol.csv",
            format!("prompt_id,model,text\n{id},{model},a\n"),
            "response",
        ),
        (
            "nomatch.csv",
            "prompt_id,model,response\nnope,nobody,a\n".to_owned(),
            "no response matches",
        ),
    ];
    for (name, text, expected) in cases {
        let path = write(dir.path(), name, &text);
        let err = Responses::load(&source(&path, None), &prepared.outcomes)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(expected), "{name}: {err}");
    }
    let ok = write(
        dir.path(),
        "ok.csv",
        &format!("prompt_id,model,response\n{id},{model},\"The answer is 4.\"\n"),
    );
    let err = Responses::load(&source(&ok, Some("final_answer")), &prepared.outcomes)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("--answer-column final_answer"), "{err}");
    let loaded = Responses::load(&source(&ok, None), &prepared.outcomes).expect("loads");
    let e = loaded.evidence(0, 0, 0.7).expect("joined");
    assert_eq!(
        (e.answer.as_deref(), e.predicted_quality),
        (Some("num:4"), 0.7)
    );
}
