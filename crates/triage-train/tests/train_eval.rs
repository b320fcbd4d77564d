//! Training and evaluation end to end on a slice of real outcome data, the train → serve
//! agreement, and the refusal of malformed tables.
//!
//! The real data lives in `../shared/data/` (or `$TRIAGE_SHARED_DATA`); tests that need it skip,
//! saying so, where it is absent.

use std::path::{Path, PathBuf};

use polars::prelude::*;
use triage_core::Settings;
use triage_policy::Policy;
use triage_train::eval::ablation::{HEADS_ONLY, NO_NEIGHBOURHOOD, NO_SHARED, NO_TRUST_CURVE};
use triage_train::eval::{EvalOptions, evaluate};
use triage_train::table::Split;
use triage_train::{fit_policy, neighbour_set, prepare, train};

mod common;
use common::{options, root, slice};

/// The slice with holes, as real logs have them: every 7th gemini-1.5-flash row has no grade.
fn slice_with_holes(dir: &Path) -> Option<(PathBuf, usize)> {
    let full = slice(dir)?;
    let mut df = CsvReadOptions::default()
        .try_into_reader_with_file_path(Some(full))
        .expect("reader")
        .finish()
        .expect("read csv");
    let models = df
        .column("model")
        .expect("model")
        .str()
        .expect("str")
        .clone();
    let quality = df.column("quality").expect("q").f64().expect("f64").clone();
    let mut seen = 0;
    let mut holes = 0;
    let punched: Vec<Option<f64>> = models
        .iter()
        .zip(quality.iter())
        .map(|(m, q)| {
            if m != Some("gemini-1.5-flash") {
                return q;
            }
            seen += 1;
            if seen % 7 == 0 {
                holes += 1;
                None
            } else {
                q
            }
        })
        .collect();
    df.replace(
        "quality",
        Series::new("quality".into(), punched).into_column(),
    )
    .expect("replace");
    let out = dir.join("holes.csv");
    CsvWriter::new(std::fs::File::create(&out).expect("create"))
        .finish(&mut df)
        .expect("write csv");
    Some((out, holes))
}

#[test]
fn a_table_with_holes_trains_and_evaluates_without_extra_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((data, holes)) = slice_with_holes(dir.path()) else {
        return;
    };
    assert!(holes > 10, "{holes}");
    let policy_path = dir.path().join("policy.json");
    let mut opts = options(data, policy_path.clone());
    let report = train(&opts).expect("rows without a grade are left out, not fatal");
    assert_eq!(report.policy.models.len(), 3);
    let prepared = prepare(&opts).expect("prepare");
    let test_prompts = prepared.outcomes.indices(Split::Test).len();
    let policy = Policy::load(&policy_path).expect("written policy loads");
    let eval = evaluate_test_split(&prepared, &policy, 50);
    assert!(
        eval.prompts < test_prompts && eval.prompts > test_prompts / 2,
        "test prompts lacking gemini's grade are left out: {} of {test_prompts} scored",
        eval.prompts
    );
    opts.strict = true;
    let refused = train(&opts)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(refused.contains("quality"), "{refused}");
}

/// `evaluate` on the test split, with `resamples` bootstrap resamples.
fn evaluate_test_split(
    prepared: &triage_train::Prepared,
    policy: &Policy,
    resamples: usize,
) -> triage_train::eval::EvalReport {
    evaluate(
        prepared,
        policy,
        &EvalOptions {
            split: Split::Test,
            pair: None,
            resamples,
        },
    )
    .expect("eval")
}

#[test]
fn trains_on_a_slice_beats_the_cheapest_model_and_serving_agrees_with_eval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(data) = slice(dir.path()) else {
        return;
    };
    let policy_path = dir.path().join("policy.json");
    let opts = options(data, policy_path.clone());
    let report = train(&opts).expect("training succeeds");
    assert_eq!(report.policy.models.len(), 3);
    let policy = Policy::load(&policy_path).expect("written policy loads");
    // Retraining the same data into the same file compares the forms fitted on every prompt
    // (both saw fold 0), so the twin is not refused by judging fold 0's policy against it.
    let again = train(&opts).expect("retraining succeeds");
    assert!(again.verdict.promote, "{:?}", again.verdict);
    assert_eq!(again.verdict.evidence, "held-out");
    assert!(
        again.verdict.reason.contains("both fitted on every prompt"),
        "{}",
        again.verdict.reason
    );
    assert_eq!(again.policy.version, report.policy.version);

    let prepared = prepare(&opts).expect("prepare");
    // What is written is the recipe cross-validation chose, fitted on every training prompt;
    // fold 0's policy (the gate's) is the same recipe fitted without fold 0.
    let fitted = fit_policy(&prepared, 5).expect("fits");
    let (validated, held_out) = fitted
        .fold_policies
        .first()
        .expect("enough prompts to cross-validate");
    assert_eq!(fitted.fold_policies.len(), 5);
    assert_eq!(fitted.deployed.decision, validated.decision);
    let training = triage_train::training_prompts(&prepared.outcomes);
    assert!(!held_out.is_empty() && held_out.len() < training.len() / 2);
    assert!(
        fitted
            .deployed
            .models
            .iter()
            .zip(&validated.models)
            .any(|(d, v)| d.quality != v.quality),
        "fold 0's prompts changed no head"
    );
    let cv = &fitted.deployed.training["cross_validation"];
    assert_eq!(cv["folds"], 5, "{cv}");
    let candidates = cv["candidates"].as_array().expect("candidates");
    let labels: Vec<&str> = candidates
        .iter()
        .filter_map(|c| c["label"].as_str())
        .collect();
    assert!(labels.contains(&"heads alone"), "{labels:?}");
    assert!(labels.iter().any(|l| l.starts_with("kNN k=")), "{labels:?}");
    assert!(
        candidates
            .iter()
            .all(|c| c["aiq"].as_array().is_some_and(|a| a.len() == 5))
    );
    if let (Some(d), Some(v)) = (&fitted.deployed.neighbours, &validated.neighbours) {
        assert_eq!(
            (v.rows, d.rows),
            (training.len() - held_out.len(), training.len())
        );
        assert_eq!(
            (d.k, d.weight, d.length_weight, d.temperature),
            (v.k, v.weight, v.length_weight, v.temperature)
        );
    }
    match (&validated.shared, &fitted.deployed.shared) {
        (Some(v), Some(d)) => {
            assert_eq!(v.share, d.share);
            assert_ne!(
                v.w1, d.w1,
                "the classifier was not refitted on every prompt"
            );
        }
        (None, None) => {}
        _ => panic!("fold 0's and the written policy disagree on the shared classifier"),
    }
    assert_eq!(report.policy.version, fitted.deployed.version);
    // Every policy measures familiarity against its training prompts; the curve's evidence
    // (held-out rows, with each task of the slice left out in turn) is in the metadata.
    let familiarity = fitted.deployed.familiarity.as_ref().expect("familiarity");
    assert_eq!(familiarity.prior.len(), fitted.deployed.models.len());
    let neighbours = fitted
        .deployed
        .neighbours
        .as_ref()
        .expect("training prompts kept");
    assert_eq!(neighbours.rows, training.len());
    let fit = &fitted.deployed.training["familiarity"];
    assert!(fit["rows"].as_u64().is_some_and(|r| r > 0), "{fit}");
    assert!(fit["chosen"].is_string(), "{fit}");
    let eval = evaluate_test_split(&prepared, &policy, 200);
    let buckets = eval
        .calibration
        .as_ref()
        .expect("calibration by familiarity");
    assert_eq!(buckets.len(), 5);
    assert_eq!(
        buckets.iter().map(|b| b.prompts).sum::<usize>(),
        eval.prompts,
        "every evaluated prompt in one bucket"
    );
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].familiarity[1] <= w[1].familiarity[0])
    );
    let (cheap_name, cheap) = &eval.cheapest_single;
    let balanced = eval
        .modes
        .iter()
        .find(|(m, _)| m == "balanced")
        .map(|(_, p)| *p)
        .expect("balanced");
    assert!(
        balanced.quality > cheap.quality,
        "balanced quality {:.3} should beat the cheapest model {cheap_name} ({:.3})",
        balanced.quality,
        cheap.quality
    );
    let triage = &eval.routers[0];
    // The λ sweep alone is a subset of Triage's operating points: its hull cannot be higher.
    let lambda_only = &eval.routers[1];
    assert_eq!(lambda_only.name, "triage, λ sweep only");
    assert!(lambda_only.aiq <= triage.aiq + 1e-12);
    assert!(triage.max_quality >= eval.best_single.1.quality - 0.02);

    // The bootstrap re-scores the very choices the rows were built from: with every prompt
    // counted once it gives back each row's AIQ.
    let boot = eval.bootstrap.as_ref().expect("bootstrap asked for");
    assert_eq!(boot.resamples, 200);
    assert!((boot.triage_aiq - triage.aiq).abs() < 1e-12);
    assert!(boot.triage_aiq_95[0] <= boot.triage_aiq_95[1]);
    match (boot.triage_cost_at_parity_pct, triage.cost_at_parity_pct) {
        (Some(b), Some(r)) => assert!((b - r).abs() < 1e-9, "{b} vs {r}"),
        (b, r) => assert_eq!(b, r),
    }
    assert!((0.0..=1.0).contains(&boot.share_parity_reached));
    let against: Vec<&str> = boot
        .comparisons
        .iter()
        .map(|c| c.against.as_str())
        .collect();
    assert_eq!(
        against,
        [
            eval.routers[2].name.as_str(),
            eval.routers[4].name.as_str(),
            HEADS_ONLY,
            NO_NEIGHBOURHOOD,
            NO_SHARED,
            NO_TRUST_CURVE
        ]
    );
    for c in &boot.comparisons {
        let row = eval
            .routers
            .iter()
            .chain(&eval.ablations)
            .find(|r| r.name == c.against)
            .expect("a row per comparison");
        assert!(
            (c.aiq_difference - (triage.aiq - row.aiq)).abs() < 1e-12,
            "{}",
            c.against
        );
        assert!(c.difference_95[0] <= c.difference_95[1]);
        assert!((0.0..=1.0).contains(&c.share_triage_ahead));
    }

    // Ablations: a row without a part the policy lacks is the policy's own λ sweep.
    let names: Vec<&str> = eval.ablations.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [HEADS_ONLY, NO_NEIGHBOURHOOD, NO_SHARED, NO_TRUST_CURVE]
    );
    let file = policy.file();
    // A neighbour set at weight 0 is there only to measure familiarity: no neighbourhood.
    let no_neighbours = file.neighbours.as_ref().is_none_or(|n| n.weight == 0.0);
    let no_curve = file.familiarity.as_ref().is_none_or(|f| f.curve.is_none());
    let lacks = [
        no_neighbours && file.shared.is_none(),
        no_neighbours,
        file.shared.is_none(),
        no_curve,
    ];
    for (row, lacks) in eval.ablations.iter().zip(lacks) {
        if lacks {
            assert_eq!(row.points, lambda_only.points, "{}", row.name);
        }
    }
    // With a neighbourhood of the train prompts blended in, the ablations take it out again.
    let mut blended = file.clone();
    let train_prompts = triage_train::training_prompts(&prepared.outcomes);
    blended.neighbours = Some(neighbour_set(&prepared, file, &train_prompts, 20, 0.5));
    let blended = Policy::new(blended).expect("blended policy loads");
    let blended_eval = evaluate(
        &prepared,
        &blended,
        &EvalOptions {
            split: Split::Test,
            pair: None,
            resamples: 0,
        },
    )
    .expect("eval of the blended policy");
    assert!(
        blended_eval.bootstrap.is_none(),
        "no resamples were asked for"
    );
    let blended_lambda = &blended_eval.routers[1];
    assert_ne!(
        blended_lambda.points, lambda_only.points,
        "the neighbourhood changed nothing"
    );
    let [heads, no_neighbourhood, no_shared, _] = &blended_eval.ablations[..] else {
        panic!("four ablations expected");
    };
    assert_eq!(no_neighbourhood.points, lambda_only.points);
    if file.shared.is_none() {
        assert_eq!(heads.points, lambda_only.points);
        assert_eq!(no_shared.points, blended_lambda.points);
    }

    // Train → serve: the real server with this policy picks what eval replayed.
    let (_, prompt_ids, chosen) = eval
        .choices
        .iter()
        .find(|(k, _, _)| k == "mode=balanced")
        .expect("balanced choices");
    let mut settings = Settings::load(None).expect("settings");
    settings.policy.path = policy_path;
    settings.log.dir = dir.path().join("log");
    settings.encoder.max_queue_wait_ms = 0;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let engine =
            triage_server::RoutingEngine::from_settings(&settings, &root()).expect("engine");
        let server = triage_server::start(engine, &settings, "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("server");
        let mut client = triage_proto::v1::router_client::RouterClient::connect(format!(
            "http://{}",
            server.addr
        ))
        .await
        .expect("connect");
        let text_of = |id: &str| {
            prepared
                .outcomes
                .prompts
                .iter()
                .find(|p| p.id == id)
                .map(|p| p.text.clone())
                .expect("prompt")
        };
        for (id, expected) in prompt_ids.iter().zip(chosen).take(25) {
            let request = triage_proto::v1::RouteRequest {
                messages: vec![triage_proto::v1::Message {
                    role: "user".into(),
                    content: text_of(id),
                }],
                preferences: Some(triage_proto::v1::Preferences {
                    mode: triage_proto::v1::Mode::Balanced as i32,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let reply = client.route(request).await.expect("route").into_inner();
            assert_eq!(Some(&reply.model), expected.as_ref(), "prompt {id}");
            let f = reply.familiarity.expect("familiarity served");
            assert!((-1.0..=1.0).contains(&f), "{f}");
            assert!(reply.trust.is_some_and(|t| (0.0..=1.0).contains(&t)));
        }
        server.shutdown().await.expect("shutdown");
    });
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn malformed_tables_are_refused_and_no_policy_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("policy.json");
    let cases = [
        (
            "no_quality.csv",
            "prompt_id,prompt,model,cost_usd\np1,hi,gpt-4o-2024-08-06,0.1\n",
            "`quality` is missing",
        ),
        (
            "bad_quality.csv",
            "prompt_id,prompt,model,quality,cost_usd\np1,hi,gpt-4o-2024-08-06,1.5,0.1\n",
            "outside 0..1",
        ),
        (
            "no_cost.csv",
            "prompt_id,prompt,model,quality\np1,hi,gpt-4o-2024-08-06,1\n",
            "neither `cost_usd`",
        ),
        (
            "text_quality.csv",
            "prompt_id,prompt,model,quality,cost_usd\np1,hi,m,good,0.1\n",
            "`quality`",
        ),
        (
            "empty.csv",
            "prompt_id,prompt,model,quality,cost_usd\n",
            "no rows",
        ),
        (
            "repeated.csv",
            "prompt_id,prompt,model,quality,cost_usd\np1,hi,m,1,0.1\np2,yo,m,1,0.1\np1,hi,m,0,0.1\n",
            "rows 0 and 2: prompt_id \"p1\" has two rows for model \"m\"",
        ),
        ("table.xlsx", "whatever", "unknown file type"),
    ];
    for (name, text, expected) in cases {
        let data = write(dir.path(), name, text);
        let err = train(&options(data, out.clone()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains(expected),
            "{name}: {err:?} should mention {expected:?}"
        );
        assert!(!out.exists(), "{name}: no policy may be written");
    }
    let data = write(
        dir.path(),
        "one_model.csv",
        "prompt_id,prompt,model,quality,cost_usd\np1,hi,m,1,0.1\n",
    );
    let mut asked = options(data, out.clone());
    asked.models = Some(vec!["m".into(), "nope".into()]);
    let err = train(&asked)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("--models: nope not in the data, which has: m"),
        "{err}"
    );
    assert!(!out.exists(), "no policy may be written");
}

#[test]
fn leave_one_task_out_tests_each_task_on_a_policy_that_never_saw_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(data) = slice(dir.path()) else {
        return;
    };
    let prepared = prepare(&options(data, dir.path().join("p.json"))).expect("prepare");
    let mut tasks: Vec<&str> = prepared
        .outcomes
        .prompts
        .iter()
        .filter_map(|p| p.task.as_deref())
        .collect();
    tasks.sort_unstable();
    tasks.dedup();
    let by = triage_train::eval::folds::leave_one_task_out(&prepared, 3).expect("runs");
    assert_eq!(by.tasks, tasks);
    assert!(by.tasks.len() >= 2, "{:?}", by.tasks);
    for (task, report) in by.tasks.iter().zip(&by.reports) {
        let in_task = prepared
            .outcomes
            .prompts
            .iter()
            .filter(|p| p.task.as_deref() == Some(task))
            .count();
        assert_eq!(
            report.prompts, in_task,
            "tested on exactly {task}'s prompts"
        );
    }
    assert!(by.summary.iter().all(|s| s.aiq.len() == by.tasks.len()));
}
