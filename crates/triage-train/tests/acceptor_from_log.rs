//! `train --from-log` retrains the acceptor from what serving logged: verify decisions with
//! their draft plans, the verdicts' draft evidence, and quality feedback on the drafts and the
//! escalation. A real log written through the real store; the traffic is synthetic (a seeded
//! generator) so that the truth is known: two cheap drafts each right 70% of the time, agreeing
//! when both are right, and a dear model right 90% of the time.

mod common;

use common::{options, root};
use triage_log::{
    DecisionRecord, DraftPlanRecord, ErrorKind, EventStore, FeedbackRecord, FileEventLog,
    LogOptions, LoggedCandidate, LoggedDraft, VerificationRecord, encode_features,
};
use triage_policy::Policy;

const DRAFTS: [&str; 2] = ["deepseek-v2.5-0908", "gpt-4o-mini-2024-07-18"];
const DEAR: &str = "gpt-4o-2024-08-06";
const REQUESTS: usize = 400;

/// A small deterministic generator (SplitMix64), so the test needs no RNG crate.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn decision(id: &str, features: &[f32]) -> DecisionRecord {
    let models = [DRAFTS[0], DRAFTS[1], DEAR];
    DecisionRecord {
        request_id: id.into(),
        time_ms: 1,
        policy_version: "p".into(),
        features: encode_features(features),
        input_tokens: 100,
        knob: "quality".into(),
        cost_weight: None,
        candidates: models
            .iter()
            .map(|m| LoggedCandidate {
                model: (*m).into(),
                predicted_quality: 0.7,
                base_quality: None,
                predicted_cost_usd: 0.001,
                eligible: true,
            })
            .collect(),
        chosen: DEAR.into(),
        propensity: 1.0,
        explored: false,
        session_id: String::new(),
        prompt: None,
        api_key: None,
        draft_plan: Some(DraftPlanRecord {
            drafts: DRAFTS.map(str::to_owned).to_vec(),
            predicted_quality: vec![0.7, 0.7],
            threshold: 0.5,
            escalation: vec![DEAR.into()],
        }),
        familiarity: None,
        held_usd: None,
    }
}

fn report(id: &str, model: &str, quality: f64, n: usize) -> FeedbackRecord {
    FeedbackRecord {
        request_id: id.into(),
        feedback_id: format!("{id}:{n}"),
        time_ms: 2,
        model: model.into(),
        quality: Some(quality),
        input_tokens: 100,
        output_tokens: 200,
        cost_usd: if model == DEAR { 0.004 } else { 0.0002 },
        latency_ms: 900,
        error: ErrorKind::None,
        retry_after_ms: None,
        first_byte_ms: None,
        tokens_estimated: false,
        api_key: None,
        hold_usd: None,
        source: Default::default(),
        judged: None,
    }
}

fn draft(model: &str, answer: u64, hedges: bool) -> LoggedDraft {
    LoggedDraft {
        model: model.into(),
        answer: Some(format!("num:{answer}")),
        form: Some("stated".into()),
        chars: 400,
        refuses: false,
        hedges,
    }
}

/// Writes the synthetic verify traffic to a log in `dir`.
async fn write_traffic(dir: &std::path::Path) {
    let log = FileEventLog::open(&LogOptions {
        dir: dir.to_path_buf(),
        segment_bytes: 1 << 20,
        queue_capacity: 4096,
        queue_bytes: 64 << 20,
        retention: None,
        index_max_bytes: None,
        archive: None,
    })
    .expect("log opens");
    let mut draw = Draw(7);
    let mut last = None;
    for i in 0..REQUESTS {
        let id = format!("req-{i}");
        let features: Vec<f32> = (0..28).map(|_| draw.next() as f32 - 0.5).collect();
        log.record_decision(decision(&id, &features))
            .expect("decision");
        let truth = 100 + i as u64;
        let right = [draw.next() < 0.7, draw.next() < 0.7];
        let answers = right.map(|r| {
            if r {
                truth
            } else {
                truth + 1 + (draw.next() * 50.0) as u64
            }
        });
        let drafts: Vec<LoggedDraft> = (0..2)
            .map(|k| draft(DRAFTS[k], answers[k], !right[k] && draw.next() < 0.3))
            .collect();
        let agree = answers[0] == answers[1];
        log.record_verification(VerificationRecord {
            request_id: id.clone(),
            time_ms: 2,
            drafts,
            evidence: Vec::new(),
            probability: if agree { 0.9 } else { 0.1 },
            threshold: 0.5,
            accepted: agree.then(|| DRAFTS[0].into()),
            escalated_to: (!agree).then(|| DEAR.into()),
            api_key: None,
        })
        .await
        .expect("verdict");
        // A judge scored every answer: the drafts and the escalation.
        for (n, (model, good)) in [
            (DRAFTS[0], right[0]),
            (DRAFTS[1], right[1]),
            (DEAR, draw.next() < 0.9),
        ]
        .into_iter()
        .enumerate()
        {
            let q = if good { 1.0 } else { 0.0 };
            last = Some(
                log.record_feedback(report(&id, model, q, n))
                    .await
                    .expect("report")
                    .ticket(),
            );
        }
    }
    log.wait_durable(last.expect("written"))
        .await
        .expect("durable");
}

#[tokio::test]
async fn train_from_log_retrains_the_acceptor_from_logged_draft_evidence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_dir = dir.path().join("log");
    write_traffic(&log_dir).await;
    let out = dir.path().join("policy.json");
    let mut o = options(root().join("unused"), out.clone());
    o.data = None;
    o.from_log = Some(log_dir.into());
    o.force = true;
    let report = tokio::task::spawn_blocking(move || triage_train::train(&o))
        .await
        .expect("joins")
        .expect("trains");
    assert_eq!(report.log_counts.map(|c| c.verifications), Some(REQUESTS));
    let policy = Policy::load(&out).expect("the written policy loads");
    let acceptor = policy
        .file()
        .acceptor
        .as_ref()
        .expect("an acceptor learned from the log");
    let pair = acceptor
        .plans
        .iter()
        .find(|p| p.drafts.len() == 2)
        .expect("a plan of both drafts");
    let agreement = pair.head.weights.last().copied().unwrap_or_default();
    assert!(
        agreement > 0.5,
        "agreement predicts a good draft here, and the head learned it: {:?}",
        pair.head
    );
}
