//! What each upstream call holds of the caller's budget, for a key with limits.
//!
//! A budget is a cap, not a prediction the caller can lower: the engine held the worst case
//! of the planned calls (the chosen model and any drafts) at their catalog prices and the
//! request's `max_tokens` (or all the room a model's context leaves), lowering `max_tokens` to
//! what the key has left. Each call takes its share, and its record settles it. A fallback
//! holds its own worst case before it runs, or is not made. Shares no call took (an escalation
//! that an accepted draft made unnecessary) are given back when the request is done.

use triage_engine::{Charge, RouteError, Routed, Service, Tokens};
use triage_guard::Caller;

/// One call's part of the request's hold.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CallHold {
    /// What the call's record settles (`None`: the key has no limits; nothing held).
    pub usd: Option<f64>,
    /// The answer length the hold covers, when less than the request asked for: sent as the
    /// call's `max_tokens`.
    pub cap: Option<u32>,
}

/// The holds of one request's calls (nothing to keep for a key without limits).
pub struct Holds(Option<Held>);

/// The holds of a request whose key has limits.
struct Held {
    service: Service,
    caller: Caller,
    request_id: String,
    /// What a fallback's worst case reads.
    tokens: Tokens,
    /// Route-time shares no call has taken yet.
    shares: Vec<(String, f64)>,
    cap: Option<u32>,
}

impl Holds {
    /// The holds of `routed`, routed with `charge`.
    pub fn new(service: &Service, caller: &Caller, routed: &Routed, charge: Charge) -> Self {
        let tokens = charge.tokens(routed.outcome.input_tokens);
        Self(
            routed
                .outcome
                .held
                .as_ref()
                .zip(tokens)
                .map(|(held, tokens)| Held {
                    service: service.clone(),
                    caller: caller.clone(),
                    request_id: routed.request_id.clone(),
                    tokens,
                    shares: held.shares.clone(),
                    cap: held.output_cap,
                }),
        )
    }

    /// The share held at routing for a call to `model` (the chosen model, a draft), taken.
    pub fn planned(&mut self, model: &str) -> Option<CallHold> {
        let held = self.0.as_mut()?;
        let i = held.shares.iter().position(|(m, _)| m == model)?;
        let (_, usd) = held.shares.swap_remove(i);
        Some(CallHold {
            usd: Some(usd),
            cap: held.cap,
        })
    }

    /// The hold for a call to `model`: its planned share, or a fresh worst case for a
    /// fallback (refused when the key has no room for it).
    pub async fn call(&mut self, model: &str) -> Result<CallHold, RouteError> {
        if let Some(planned) = self.planned(model) {
            return Ok(planned);
        }
        let Some(held) = &self.0 else {
            return Ok(CallHold::default());
        };
        let fresh = held
            .service
            .hold_call(&held.caller, &held.request_id, model, held.tokens)
            .await?;
        Ok(fresh.map_or_else(CallHold::default, |h| CallHold {
            usd: Some(h.total_usd()),
            cap: h.output_cap,
        }))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let unused: f64 = self.shares.iter().map(|(_, usd)| usd).sum();
        if unused <= 0.0 {
            return;
        }
        let (service, caller, request_id) = (
            self.service.clone(),
            self.caller.clone(),
            std::mem::take(&mut self.request_id),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { service.release_hold(&caller, &request_id, unused).await });
        }
    }
}
