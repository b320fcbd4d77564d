//! The judge: a quality signal Triage gets without anyone's help.
//!
//! A share of answered gateway requests (`judge.sample_rate`, only for the keys `judge.keys`
//! names) is scored by an LLM after the caller has its answer. The choice is made when the
//! request is routed ([`Judge::sample`]); the job is offered once the answer is whole (at the
//! end of a stream for a streamed one) into a bounded queue, and workers (`max_in_flight` at
//! once) call the judge. Nothing here can fail, slow or change a caller's request: a full queue
//! drops the job (counted), a judge that fails, hangs (`timeout_ms`) or answers garbage leaves
//! no score (counted), and the daily cap (`daily_usd`) pauses judging.
//!
//! A verdict is a feedback record on the same decision, `source = "judge"`, with the judge
//! model, the rubric's hash and the operator's spend in its [`Judged`] mark and no cost of the
//! caller's: budgets never see it. Online learning and `train --from-log` take it like a
//! caller's score, which outranks it on the same request and model.
//!
//! Shadow answers (`judge.shadow_rate` of judged requests) teach what the policy did not
//! choose: one other eligible model, cheaper than the chosen one by the decision's own
//! predictions and permitted to the key, is picked at random, asked the same request whole, and
//! judged too. Its answer is shown to no one; its record (`source = "shadow"`) carries the
//! call's real tokens and cost at catalog prices (for training) and the probability it was
//! picked with (for unbiased off-policy estimates); its spend is the operator's, under the cap.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use triage_core::{Conversation, JudgeSettings, Settings};
use triage_engine::metrics::{DropLabel, VerdictLabel};
use triage_engine::{Routed, Service};
use triage_guard::Caller;
use triage_log::{ErrorKind, FeedbackRecord, FeedbackSource, JUDGE_FEEDBACK_PREFIX, Judged};

use crate::call::{Reply, call};
use crate::openai::completion_text;
use crate::rubric::Rubric;
use crate::upstreams::{ProviderError, Target, Upstreams};
use crate::wire::{self, ChatRequest, TriageOptions};

/// The judge, shared by every request (cheap to clone).
#[derive(Clone)]
pub struct Judge {
    inner: Arc<Inner>,
}

struct Inner {
    settings: JudgeSettings,
    service: Service,
    upstreams: Arc<Upstreams>,
    asker: Asker,
    jobs: mpsc::Sender<Job>,
    inbox: Mutex<Option<mpsc::Receiver<Job>>>,
    /// The UTC day (days since the epoch) on which the cap was last logged as reached.
    paused_on: AtomicI64,
}

/// A request chosen for judging, waiting for its answer to be whole.
pub struct Pending {
    judge: Judge,
    caller: Caller,
    request_id: String,
    prompt: String,
    model: String,
    shadow: Option<Shadow>,
}

/// A shadow answer to ask for: the model, the probability it was picked with, the request.
struct Shadow {
    model: String,
    propensity: f64,
    request: ChatRequest,
}

/// What a worker judges.
struct Job {
    pending: Pending,
    answer: String,
}

impl Judge {
    /// The judge `settings.judge` configures, or `None` when it is off.
    pub fn new(
        service: &Service,
        settings: &Settings,
        upstreams: &Arc<Upstreams>,
    ) -> Result<Option<Self>, ProviderError> {
        let s = &settings.judge;
        if !s.enabled() {
            return Ok(None);
        }
        let asker = Asker::new(settings, upstreams)?;
        let (jobs, inbox) = mpsc::channel(s.queue);
        Ok(Some(Self {
            inner: Arc::new(Inner {
                settings: s.clone(),
                service: service.clone(),
                upstreams: Arc::clone(upstreams),
                asker,
                jobs,
                inbox: Mutex::new(Some(inbox)),
                paused_on: AtomicI64::new(-1),
            }),
        }))
    }

    /// Starts the workers (once; later calls do nothing). Call from within the runtime.
    pub fn start(&self) {
        let inbox = self
            .inner
            .inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(inbox) = inbox {
            tokio::spawn(self.clone().work(inbox));
        }
    }

    /// Whether this request's answer is to be judged (and shadowed): the key is one the
    /// operator allows, and the dice say so.
    pub fn sample(
        &self,
        caller: &Caller,
        routed: &Routed,
        request: &ChatRequest,
        model: &str,
    ) -> Option<Pending> {
        let s = &self.inner.settings;
        if !s.admits(caller.key_name()) || fastrand::f64() >= s.sample_rate {
            return None;
        }
        let shadow = (fastrand::f64() < s.shadow_rate)
            .then(|| self.pick_shadow(caller, routed, model))
            .flatten()
            .map(|(model, share)| Shadow {
                model,
                propensity: s.sample_rate * s.shadow_rate * share,
                request: request.unstreamed(),
            });
        Some(Pending {
            judge: self.clone(),
            caller: caller.clone(),
            request_id: routed.request_id.clone(),
            prompt: request.conversation.transcript(),
            model: model.to_owned(),
            shadow,
        })
    }

    /// One other eligible model, callable and permitted to the key, predicted cheaper than
    /// the one that answered: picked uniformly, with its share of the pick.
    fn pick_shadow(
        &self,
        caller: &Caller,
        routed: &Routed,
        answered: &str,
    ) -> Option<(String, f64)> {
        let candidates = &routed.outcome.decision.candidates;
        let cost_of = |m: &str| candidates.iter().find(|c| c.model == m).map(|c| c.cost_usd);
        let ceiling = cost_of(answered)?;
        let cheaper: Vec<&str> = candidates
            .iter()
            .filter(|c| c.exclusion.is_none() && c.model != answered && c.cost_usd < ceiling)
            .filter(|c| caller.may_use(&c.model))
            .filter(|c| self.inner.upstreams.target(&c.model).is_some())
            .map(|c| c.model.as_str())
            .collect();
        if cheaper.is_empty() {
            return None;
        }
        let pick = cheaper[fastrand::usize(..cheaper.len())];
        Some((pick.to_owned(), 1.0 / cheaper.len() as f64))
    }

    fn drop_job(&self, reason: &str) {
        self.inner
            .service
            .metrics()
            .judge_dropped
            .get_or_create(&DropLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Takes jobs off the queue, `max_in_flight` at once.
    async fn work(self, mut inbox: mpsc::Receiver<Job>) {
        let slots = Arc::new(Semaphore::new(self.inner.settings.max_in_flight));
        while let Some(job) = inbox.recv().await {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let judge = self.clone();
            tokio::spawn(async move {
                judge.judge_job(job).await;
                drop(slot);
            });
        }
    }

    async fn judge_job(&self, job: Job) {
        let Job { pending, answer } = job;
        let shadow = match &pending.shadow {
            Some(shadow) => self.shadow_answer(shadow).await,
            None => None,
        };
        self.judge_one(&pending, &pending.model, &answer, None)
            .await;
        if let (Some((text, spent)), Some(shadow)) = (shadow, &pending.shadow) {
            self.judge_one(&pending, &shadow.model, &text, Some((shadow, spent)))
                .await;
        }
    }

    /// Asks the shadow model the request whole: its answer text and what the call cost
    /// (tokens, USD at catalog prices). `None` when over the cap or the call failed.
    async fn shadow_answer(&self, shadow: &Shadow) -> Option<(String, Spent)> {
        let target = self.inner.upstreams.target(&shadow.model)?;
        if !self.has_room() {
            self.drop_job("daily_cap");
            return None;
        }
        let started = Instant::now();
        let deadline = started + Duration::from_millis(self.inner.settings.timeout_ms);
        let answer = call(target, &shadow.request, &shadow.model, deadline, None).await;
        let Ok(Reply::Complete { body, usage }) = answer.result else {
            self.drop_job("failed");
            return None;
        };
        let text = completion_text(&body).to_owned();
        let engine = self.inner.service.engine();
        // Tokenised only when the upstream reported no count.
        let input = usage.input.map_or_else(
            || engine.count_tokens(&shadow.request.conversation.transcript()),
            saturate,
        );
        let output = usage
            .output
            .map_or_else(|| engine.count_tokens(&text), saturate);
        let cost = engine.catalog().get(&shadow.model).map_or(0.0, |spec| {
            spec.cost_usd(f64::from(input), f64::from(output))
        });
        self.spend(cost);
        Some((
            text,
            Spent {
                input,
                output,
                cost,
            },
        ))
    }

    /// Judges `answer` by `model` and records the verdict (for a shadow answer, with its
    /// call's cost and pick probability).
    async fn judge_one(
        &self,
        pending: &Pending,
        model: &str,
        answer: &str,
        shadow: Option<(&Shadow, Spent)>,
    ) {
        if answer.trim().is_empty() {
            self.drop_job("failed");
            return;
        }
        if !self.has_room() {
            self.drop_job("daily_cap");
            return;
        }
        let started = Instant::now();
        let Some((verdict, judge_usd)) = self.ask(&pending.prompt, answer).await else {
            return;
        };
        let m = self.inner.service.metrics();
        m.judge_seconds.observe(started.elapsed().as_secs_f64());
        let Some(quality) = verdict else {
            m.judge_unparsable.inc();
            return;
        };
        let source = match shadow {
            Some(_) => FeedbackSource::Shadow,
            None => FeedbackSource::Judge,
        };
        let spent = shadow.map(|(_, s)| s).unwrap_or_default();
        let record = FeedbackRecord {
            request_id: pending.request_id.clone(),
            feedback_id: format!("{JUDGE_FEEDBACK_PREFIX}{}:{model}", pending.request_id),
            time_ms: triage_engine::feedback::now_ms(),
            model: model.to_owned(),
            quality: Some(quality),
            input_tokens: spent.input,
            output_tokens: spent.output,
            cost_usd: spent.cost,
            latency_ms: u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX),
            error: ErrorKind::None,
            retry_after_ms: None,
            first_byte_ms: None,
            tokens_estimated: false,
            api_key: None,
            hold_usd: None,
            source,
            judged: Some(Judged {
                judge_model: self.inner.asker.name.clone(),
                rubric: self.inner.asker.rubric.hash.clone(),
                spend_usd: judge_usd + spent.cost,
                propensity: shadow.map(|(s, _)| s.propensity),
            }),
        };
        match self.inner.service.record_attempt(&pending.caller, record) {
            Ok(()) => {
                m.judge_verdicts
                    .get_or_create(&VerdictLabel {
                        source: source.as_str().into(),
                    })
                    .inc();
            }
            Err(e) => {
                tracing::info!(request_id = %pending.request_id, error = %e, "judge verdict not recorded");
                self.drop_job("not_recorded");
            }
        }
    }

    /// Calls the judge: its verdict (`None` inside when unreadable) and the call's cost,
    /// counted against the cap. `None` when the call failed.
    async fn ask(&self, prompt: &str, answer: &str) -> Option<(Option<f64>, f64)> {
        let engine = self.inner.service.engine();
        let count = |text: &str| engine.count_tokens(text);
        let Some((verdict, cost)) = self.inner.asker.ask(prompt, answer, &count).await else {
            self.drop_job("failed");
            return None;
        };
        self.spend(cost);
        Some((verdict, cost))
    }

    /// Whether today's spend (the engine's ledger of it, rebuilt from the log at start) is
    /// under the cap; logs once a day when it is not.
    fn has_room(&self) -> bool {
        let now = chrono::Utc::now();
        let controls = self.inner.service.engine().controls();
        let cap = self.inner.settings.daily_usd;
        if controls.judge_spent_today(now) < cap {
            return true;
        }
        let day = now.timestamp().div_euclid(86_400);
        if self.inner.paused_on.swap(day, Ordering::Relaxed) != day {
            tracing::warn!(
                cap_usd = cap,
                "judge paused: its daily cap (judge.daily_usd) is reached; it resumes at 00:00 UTC"
            );
        }
        false
    }

    fn spend(&self, usd: f64) {
        let controls = self.inner.service.engine().controls();
        controls.judge_spend(usd, chrono::Utc::now());
        self.inner.service.metrics().judge_spend_usd.inc_by(usd);
    }
}

impl Pending {
    /// The answer is whole: queue it for the judge (dropped, and counted, when the queue is
    /// full or today's cap is reached).
    pub fn answered(self, answer: String) {
        let judge = self.judge.clone();
        if !judge.has_room() {
            judge.drop_job("daily_cap");
            return;
        }
        let job = Job {
            pending: self,
            answer,
        };
        if judge.inner.jobs.try_send(job).is_err() {
            judge.drop_job("queue_full");
        }
    }
}

/// Tokens and cost of a shadow answer's call.
#[derive(Clone, Copy, Default)]
struct Spent {
    input: u32,
    output: u32,
    cost: f64,
}

/// One call to the judge model: where it is, its name in records, its prices, the rubric and
/// the bounds on time and text. Serving's judge and `triage collect` both ask through it.
pub struct Asker {
    target: Target,
    /// The judge's name in records.
    pub name: String,
    /// USD per 1M input and output tokens.
    price: (f64, f64),
    /// The rubric (its hash marks every verdict).
    pub rubric: Rubric,
    timeout_ms: u64,
    max_text_bytes: usize,
}

impl Asker {
    /// The judge `settings.judge` names (`model`, or `provider` + `upstream_model`).
    pub fn new(settings: &Settings, upstreams: &Upstreams) -> Result<Self, ProviderError> {
        let s = &settings.judge;
        let (target, name, price) = judge_target(settings, upstreams)?;
        Ok(Self {
            target,
            name,
            price,
            rubric: Rubric::load(s.rubric.as_deref())?,
            timeout_ms: s.timeout_ms,
            max_text_bytes: s.max_text_bytes,
        })
    }

    /// The judge's verdict on `answer` to `prompt` (`None` inside when unreadable) and the
    /// call's cost, tokens counted by `count` where the upstream reported none. `None` when
    /// the call failed.
    pub async fn ask(
        &self,
        prompt: &str,
        answer: &str,
        count: &(dyn Fn(&str) -> u32 + Sync),
    ) -> Option<(Option<f64>, f64)> {
        let body = self.rubric.request(prompt, answer, self.max_text_bytes);
        let request = judge_request(body)?;
        let deadline = Instant::now() + Duration::from_millis(self.timeout_ms);
        let reply = call(&self.target, &request, &self.name, deadline, None).await;
        let Ok(Reply::Complete { body, usage }) = reply.result else {
            return None;
        };
        let text = completion_text(&body);
        let asked = request.body.get("messages").map(Value::to_string);
        let input = usage
            .input
            .map_or_else(|| count(asked.as_deref().unwrap_or_default()), saturate);
        let output = usage.output.map_or_else(|| count(text), saturate);
        let (per_in, per_out) = self.price;
        let cost = (f64::from(input) * per_in + f64::from(output) * per_out) / 1e6;
        Some((crate::rubric::verdict(text), cost))
    }
}

/// The judge's upstream, its name in records, and its prices per 1M tokens.
fn judge_target(
    settings: &Settings,
    upstreams: &Upstreams,
) -> Result<(Target, String, (f64, f64)), ProviderError> {
    let s = &settings.judge;
    if let Some(model) = &s.model {
        let problem = |problem| ProviderError::JudgeModel {
            model: model.clone(),
            problem,
        };
        let spec = settings
            .models
            .iter()
            .find(|m| m.name == *model)
            .ok_or_else(|| problem("it is not in the catalog"))?;
        let target = upstreams
            .target(model)
            .cloned()
            .ok_or_else(|| problem("the gateway has no provider for it"))?;
        let price = (spec.input_usd_per_1m, spec.output_usd_per_1m);
        return Ok((target, model.clone(), price));
    }
    // `JudgeSettings::check` made sure both are set when `model` is not.
    let provider = s.provider.clone().unwrap_or_default();
    let upstream_model = s.upstream_model.clone().unwrap_or_default();
    let target = upstreams
        .provider_target(&provider, &upstream_model)
        .ok_or(ProviderError::JudgeProvider { provider })?;
    let price = (s.input_usd_per_1m, s.output_usd_per_1m);
    Ok((target, upstream_model, price))
}

/// The judge's chat request (whole, never streamed).
fn judge_request(body: Value) -> Option<ChatRequest> {
    let Value::Object(body) = body else {
        return None;
    };
    let max_input_tokens =
        u32::try_from(Value::Object(body.clone()).to_string().len()).unwrap_or(u32::MAX);
    Some(ChatRequest {
        body,
        target: wire::Target::Named(String::new()),
        conversation: Conversation::single_user("judge").ok()?,
        stream: false,
        include_usage: false,
        options: TriageOptions::default(),
        max_input_tokens,
        needs: Vec::new(),
    })
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
