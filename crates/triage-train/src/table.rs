//! Outcome tables: one row per (prompt, model) with a quality score and a cost.
//!
//! Read with polars from Parquet, CSV or JSON lines (chosen by file extension), validated, and
//! pivoted into a prompt × model matrix. The schema is documented in `training-data/README.md`.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use polars::prelude::*;
use triage_core::Catalog;
use triage_core::catalog::ModelSpec;

use crate::TrainError;
use crate::fit::UNKNOWN_LENGTH_TOKENS;

/// Which part of the data a prompt belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// Fit.
    Train,
    /// Choose hyper-parameters.
    Dev,
    /// Final report only.
    Test,
}

impl Split {
    fn parse(s: &str) -> Option<Split> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Some(Split::Train),
            "dev" | "val" | "valid" | "validation" => Some(Split::Dev),
            "test" => Some(Split::Test),
            _ => None,
        }
    }

    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }

    /// Parses a command-line split name.
    pub fn from_arg(s: &str) -> Result<Split, TrainError> {
        Split::parse(s).ok_or_else(|| {
            TrainError::Usage(format!("unknown split {s:?}; use train, dev or test"))
        })
    }
}

/// One prompt of the table.
#[derive(Clone, Debug)]
pub struct Prompt {
    /// `prompt_id`.
    pub id: String,
    /// `prompt`.
    pub text: String,
    /// `split` (carved deterministically from train when the table has no dev rows).
    pub split: Split,
    /// `task`, when given.
    pub task: Option<String>,
    /// What cross-validation folds are cut by: prompts with the same key always share a fold
    /// (the id for a table; the features for logged traffic, so repeats of one prompt under
    /// different request ids never sit on both sides of a fold).
    pub fold_key: String,
}

/// One (prompt, model) outcome.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// 0..1.
    pub quality: f64,
    /// Realised cost, USD.
    pub cost_usd: f64,
    /// Answer length, when the table has it.
    pub output_tokens: Option<f64>,
    /// Importance weight when fitting: 1 for a full-information table; for a logged outcome,
    /// the inverse of the probability with which the router chose that model (clipped), so
    /// models seen mostly on prompts the router picked them for are not judged by those alone.
    pub weight: f64,
    /// Whether it came from the server's log (bandit feedback: only the chosen model's outcome
    /// is known) rather than from a full-information table.
    pub logged: bool,
}

/// The table as a prompt × model matrix.
#[derive(Clone, Debug)]
pub struct Outcomes {
    /// Distinct prompts, in first-seen order.
    pub prompts: Vec<Prompt>,
    /// Distinct models, sorted by name.
    pub models: Vec<String>,
    /// `cells[p][m]`: outcome of model `m` on prompt `p`, if the table has one.
    pub cells: Vec<Vec<Option<Outcome>>>,
    /// What each model's decisions are replayed with: the serving catalog's entry where it has
    /// one (its prices, context window, capabilities, `enabled`: exactly what `Route` decides
    /// with), else an entry at the table's price with no limits (see [`Outcomes::load`]).
    pub specs: HashMap<String, ModelSpec>,
    /// sha256 of the file, for the policy's training metadata.
    pub data_sha256: String,
    /// sha256 of each source the rows come from (a table file; a log), recorded in the policy:
    /// the promotion gate uses it to tell whether the serving policy was fitted on these
    /// prompts too.
    pub sources: Vec<String>,
    /// Rows read.
    pub rows: usize,
}

pub(crate) fn read_frame(path: &Path) -> Result<DataFrame, TrainError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let data_err = |e: PolarsError| TrainError::Data(format!("{}: {e}", path.display()));
    let file =
        File::open(path).map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
    match ext.as_str() {
        "parquet" => ParquetReader::new(file).finish().map_err(data_err),
        "csv" => CsvReadOptions::default()
            .with_has_header(true)
            .into_reader_with_file_handle(file)
            .finish()
            .map_err(data_err),
        "jsonl" | "ndjson" | "json" => JsonReader::new(file)
            .with_json_format(if ext == "json" {
                JsonFormat::Json
            } else {
                JsonFormat::JsonLines
            })
            .finish()
            .map_err(data_err),
        _ => Err(TrainError::Data(format!(
            "{}: unknown file type {ext:?}; use .parquet, .csv or .jsonl",
            path.display()
        ))),
    }
}

pub(crate) fn strings(df: &DataFrame, name: &str) -> Result<Vec<Option<String>>, TrainError> {
    let col = df.column(name).map_err(|_| missing(name))?;
    let col = col
        .cast(&DataType::String)
        .map_err(|e| mistyped(name, "text", e))?;
    let ca = col.str().map_err(|e| mistyped(name, "text", e))?;
    Ok(ca.iter().map(|v| v.map(str::to_owned)).collect())
}

fn numbers(df: &DataFrame, name: &str) -> Result<Option<Vec<Option<f64>>>, TrainError> {
    let Ok(col) = df.column(name) else {
        return Ok(None);
    };
    if !col.dtype().is_primitive_numeric() && !col.dtype().is_bool() && !col.dtype().is_null() {
        return Err(TrainError::Data(format!(
            "column `{name}` has type {}, expected numbers",
            col.dtype()
        )));
    }
    let col = col
        .cast(&DataType::Float64)
        .map_err(|e| mistyped(name, "numbers", e))?;
    let ca = col.f64().map_err(|e| mistyped(name, "numbers", e))?;
    Ok(Some(ca.iter().collect()))
}

fn missing(name: &str) -> TrainError {
    TrainError::Data(format!(
        "required column `{name}` is missing (see training-data/README.md)"
    ))
}

fn mistyped(name: &str, expected: &str, e: PolarsError) -> TrainError {
    TrainError::Data(format!("column `{name}` cannot be read as {expected}: {e}"))
}

fn sha256_file(path: &Path) -> Result<String, TrainError> {
    use sha2::Digest;
    let bytes =
        std::fs::read(path).map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
    Ok(hex::encode(sha2::Sha256::digest(&bytes)))
}

/// A price for a model the table gives only `cost_usd` for (no price columns, not in the
/// catalog), so that decisions can be replayed on it: all of the cost put on output tokens, at the
/// rate its rows paid per output token, or, without token counts, at its mean cost per call over
/// the length the policy assumes when it has none ([`UNKNOWN_LENGTH_TOKENS`]). Either way the
/// policy's cost estimate for the model averages its observed cost.
fn implied_price(rows: impl Iterator<Item = Outcome>) -> (f64, f64) {
    let (mut cost, mut calls, mut counted_cost, mut tokens) = (0.0, 0.0, 0.0, 0.0);
    for o in rows {
        cost += o.cost_usd;
        calls += 1.0;
        if let Some(t) = o.output_tokens.filter(|t| *t > 0.0) {
            counted_cost += o.cost_usd;
            tokens += t;
        }
    }
    let per_token = if tokens > 0.0 {
        counted_cost / tokens
    } else {
        cost / f64::max(calls, 1.0) / UNKNOWN_LENGTH_TOKENS
    };
    (0.0, per_token * 1e6)
}

/// What decisions on each of `names` are replayed with. Serving decides with its catalog, so a
/// model the catalog has is replayed with its catalog entry, whatever the table's rows paid
/// (realised costs stay the rows'); a table price that differs is warned about, as eval and
/// serving would otherwise rank the model differently. A model the catalog lacks is priced from
/// its rows' price columns, else from its `cost_usd` ([`implied_price`]), with a warning: serving
/// cannot route to it until it has a catalog entry, and its decisions match serving's only if
/// that entry has the same prices.
fn decision_specs(
    names: &[String],
    cells: &[Vec<Option<Outcome>>],
    row_prices: &HashMap<String, (f64, f64)>,
    catalog: &Catalog,
) -> HashMap<String, ModelSpec> {
    let mut specs = HashMap::new();
    let (mut repriced, mut uncatalogued, mut implied) = (Vec::new(), Vec::new(), Vec::new());
    for (m, name) in names.iter().enumerate() {
        let row_price = row_prices.get(name).copied();
        let spec = match (catalog.get(name), row_price) {
            (Some(spec), row) => {
                let listed = (spec.input_usd_per_1m, spec.output_usd_per_1m);
                if row.is_some_and(|r| r != listed) {
                    repriced.push(name.as_str());
                }
                spec.clone()
            }
            (None, Some(price)) => {
                uncatalogued.push(name.as_str());
                table_spec(name, price)
            }
            (None, None) => {
                implied.push(name.as_str());
                table_spec(name, implied_price(cells.iter().filter_map(|row| row[m])))
            }
        };
        specs.insert(name.clone(), spec);
    }
    if !repriced.is_empty() {
        tracing::warn!(
            models = %repriced.join(", "),
            "the table's price columns differ from the catalog's for these models: decisions \
             are replayed at the catalog's prices (what serving charges), realised costs stay \
             the table's"
        );
    }
    if !uncatalogued.is_empty() {
        tracing::info!(
            models = %uncatalogued.join(", "),
            "models not in the catalog (--config) are replayed at the table's prices; serving \
             decides as eval only with catalog entries at those prices"
        );
    }
    if !implied.is_empty() {
        tracing::warn!(
            models = %implied.join(", "),
            "models with neither a catalog entry nor price columns are priced from their \
             cost_usd, all on output tokens: serving will price their input too, so give their \
             catalog entries (--config) for eval to decide as serving does"
        );
    }
    specs
}

/// A catalog entry for a model known only from a table: its price, and no capability, context
/// or latency limits (tables carry none).
pub fn table_spec(name: &str, (input, output): (f64, f64)) -> ModelSpec {
    ModelSpec {
        name: name.to_owned(),
        provider: "replay".into(),
        input_usd_per_1m: input,
        output_usd_per_1m: output,
        context_window: u32::MAX,
        capabilities: vec![
            triage_core::catalog::Capability::Vision,
            triage_core::catalog::Capability::Tools,
            triage_core::catalog::Capability::JsonOutput,
        ],
        enabled: true,
        latency: triage_core::catalog::LatencyProfile {
            first_token_ms: 0.0,
            output_tokens_per_s: 1.0,
        },
        prior_from: None,
        prior_offset: 0.0,
        upstream_model: None,
        reasoning: false,
        cached_input_usd_per_1m: None,
        cache_write_usd_per_1m: None,
    }
}

/// The prompt × model matrix of the kept rows (table row, prompt, model, outcome); a second row
/// for the same cell is an error naming both rows.
/// Rows left out for an empty or NaN quality or cost, by prompt and by model.
#[derive(Default)]
struct Holes {
    rows: usize,
    prompts: Vec<String>,
    seen: std::collections::HashSet<String>,
    models: std::collections::BTreeMap<String, usize>,
}

impl Holes {
    fn add(&mut self, prompt: &str, model: &str) {
        self.rows += 1;
        if self.seen.insert(prompt.to_owned()) {
            self.prompts.push(prompt.to_owned());
        }
        *self.models.entry(model.to_owned()).or_default() += 1;
    }

    /// One warning for all of them (`--strict` refuses such tables instead).
    fn warn(&self) {
        if self.rows == 0 {
            return;
        }
        const SHOWN: usize = 10;
        let mut prompts = self.prompts[..self.prompts.len().min(SHOWN)].join(", ");
        if self.prompts.len() > SHOWN {
            prompts.push_str(&format!(" and {} more", self.prompts.len() - SHOWN));
        }
        let models: Vec<String> = self
            .models
            .iter()
            .map(|(m, n)| format!("{m} ({n})"))
            .collect();
        tracing::warn!(
            rows = self.rows,
            prompts = self.prompts.len(),
            "rows with an empty or NaN quality or cost were left out (prompts: {prompts}; models: \
             {}); each model is trained on the prompts it has (--strict refuses such tables)",
            models.join(", ")
        );
    }
}

fn pivot(
    rows: &[(usize, usize, String, Outcome)],
    prompts: &[Prompt],
    names: &[String],
) -> Result<Vec<Vec<Option<Outcome>>>, TrainError> {
    let model_index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut cells = vec![vec![None; names.len()]; prompts.len()];
    let mut first_row = vec![vec![0; names.len()]; prompts.len()];
    for (row, p, m, o) in rows {
        let m = model_index[m.as_str()];
        if cells[*p][m].replace(*o).is_some() {
            return Err(TrainError::Data(format!(
                "rows {} and {row}: prompt_id {:?} has two rows for model {:?}; give one row per \
                 (prompt, model), averaging repeated samples into it",
                first_row[*p][m], prompts[*p].id, names[m]
            )));
        }
        first_row[*p][m] = *row;
    }
    Ok(cells)
}

impl Outcomes {
    /// Only the prompts whose `task` is one of `tasks` (an error naming the table's tasks when
    /// none is).
    pub fn only_tasks(mut self, tasks: &[String]) -> Result<Self, TrainError> {
        let keep: Vec<bool> = self
            .prompts
            .iter()
            .map(|p| p.task.as_ref().is_some_and(|t| tasks.contains(t)))
            .collect();
        if !keep.contains(&true) {
            let mut present: Vec<&str> = self
                .prompts
                .iter()
                .filter_map(|p| p.task.as_deref())
                .collect();
            present.sort_unstable();
            present.dedup();
            return Err(TrainError::Usage(format!(
                "--tasks {}: no prompt of the table has one of these tasks; it has: {}",
                tasks.join(","),
                if present.is_empty() {
                    "no task column".to_owned()
                } else {
                    present.join(", ")
                }
            )));
        }
        let mut flags = keep.iter();
        self.prompts
            .retain(|_| flags.next().copied().unwrap_or(false));
        let mut flags = keep.iter();
        self.cells
            .retain(|_| flags.next().copied().unwrap_or(false));
        Ok(self)
    }

    /// Reads and validates an outcome table. `catalog` prices rows that carry token counts but
    /// neither `cost_usd` nor per-row prices. Only `models` are kept when given.
    ///
    /// Real outcome logs have holes (a model timed out, a grader failed): a row whose quality or
    /// cost is empty or NaN is left out, with one warning that counts them and names the
    /// prompts and models; the model is trained on the prompts it has. With `strict`, such a
    /// row is an error instead.
    pub fn load(
        path: &Path,
        catalog: &Catalog,
        models: Option<&[String]>,
        strict: bool,
    ) -> Result<Self, TrainError> {
        let df = read_frame(path)?;
        if df.height() == 0 {
            return Err(TrainError::Data(format!(
                "{}: the table has no rows",
                path.display()
            )));
        }
        let ids = strings(&df, "prompt_id")?;
        let texts = strings(&df, "prompt")?;
        let model_col = strings(&df, "model")?;
        let quality = numbers(&df, "quality")?.ok_or_else(|| missing("quality"))?;
        let cost = numbers(&df, "cost_usd")?;
        let input_tokens = numbers(&df, "input_tokens")?;
        let output_tokens = numbers(&df, "output_tokens")?;
        let in_price = numbers(&df, "input_usd_per_1m")?;
        let out_price = numbers(&df, "output_usd_per_1m")?;
        let split = if df.column("split").is_ok() {
            Some(strings(&df, "split")?)
        } else {
            None
        };
        let task = if df.column("task").is_ok() {
            Some(strings(&df, "task")?)
        } else {
            None
        };
        if cost.is_none() && (input_tokens.is_none() || output_tokens.is_none()) {
            return Err(TrainError::Data(
                "the table has neither `cost_usd` nor both `input_tokens` and `output_tokens`: \
                 costs cannot be known"
                    .into(),
            ));
        }

        let keep = |m: &str| models.is_none_or(|list| list.iter().any(|x| x == m));
        let mut prompt_index: HashMap<String, usize> = HashMap::new();
        let mut prompts: Vec<Prompt> = Vec::new();
        let mut rows_kept = Vec::new();
        // The first row (and its prompt_id) that named a prompt_id again with another text, and
        // how many did: some public tables carry such variants.
        let mut other_texts: Option<(usize, String)> = None;
        let mut other_text_rows = 0usize;
        let mut prices: HashMap<String, (f64, f64)> = HashMap::new();
        let mut holes = Holes::default();
        for row in 0..df.height() {
            let at = |what: &str| TrainError::Data(format!("row {row}: `{what}` is empty"));
            let model = model_col[row].clone().ok_or_else(|| at("model"))?;
            if !keep(&model) {
                continue;
            }
            let id = ids[row].clone().ok_or_else(|| at("prompt_id"))?;
            let Some(q) = quality[row].filter(|q| !q.is_nan()) else {
                if strict {
                    return Err(at("quality"));
                }
                holes.add(&id, &model);
                continue;
            };
            if !(0.0..=1.0).contains(&q) {
                return Err(TrainError::Data(format!(
                    "row {row}: quality {q} is outside 0..1 (rescale scores to 0..1)"
                )));
            }
            let row_price = match (&in_price, &out_price) {
                (Some(i), Some(o)) => i[row].zip(o[row]),
                _ => None,
            };
            let price = row_price.or_else(|| {
                catalog
                    .get(&model)
                    .map(|m| (m.input_usd_per_1m, m.output_usd_per_1m))
            });
            if let Some(p) = row_price {
                prices.entry(model.clone()).or_insert(p);
            }
            let out_tok = output_tokens
                .as_ref()
                .and_then(|o| o[row])
                .filter(|t| !t.is_nan());
            let in_tok = input_tokens
                .as_ref()
                .and_then(|t| t[row])
                .filter(|t| !t.is_nan());
            let given_cost = cost.as_ref().and_then(|c| c[row]).filter(|c| !c.is_nan());
            let cost_usd = match (given_cost, price, in_tok.zip(out_tok)) {
                (Some(c), _, _) => c,
                (None, Some((pi, po)), Some((inp, out))) => (inp * pi + out * po) / 1e6,
                // A cost column with this row's cell empty, or token counts missing: a hole.
                (None, Some(_), None) | (None, None, _) if cost.is_some() || price.is_some() => {
                    if strict {
                        return Err(at(if cost.is_some() {
                            "cost_usd"
                        } else {
                            "input_tokens or output_tokens"
                        }));
                    }
                    holes.add(&id, &model);
                    continue;
                }
                (None, _, _) => {
                    return Err(TrainError::Data(format!(
                        "row {row}: model {model:?} has no cost_usd and no price; add it to the \
                         catalog or give input_usd_per_1m/output_usd_per_1m columns"
                    )));
                }
            };
            if !cost_usd.is_finite() || cost_usd < 0.0 {
                return Err(TrainError::Data(format!(
                    "row {row}: cost {cost_usd} is not a finite number >= 0"
                )));
            }
            let p = match prompt_index.get(&id) {
                Some(&p) => {
                    if texts[row].as_deref().is_some_and(|t| t != prompts[p].text) {
                        if other_texts.is_none() {
                            other_texts = Some((row, id.clone()));
                        }
                        other_text_rows += 1;
                    }
                    p
                }
                None => {
                    let text = texts[row].clone().ok_or_else(|| at("prompt"))?;
                    let s = match split.as_ref().and_then(|s| s[row].as_deref()) {
                        Some(name) => Split::parse(name).ok_or_else(|| {
                            TrainError::Data(format!(
                                "row {row}: unknown split {name:?}; use train, dev or test"
                            ))
                        })?,
                        None => Split::Train,
                    };
                    let task = task.as_ref().and_then(|t| t[row].clone());
                    prompts.push(Prompt {
                        fold_key: id.clone(),
                        id: id.clone(),
                        text,
                        split: s,
                        task,
                    });
                    prompt_index.insert(id, prompts.len() - 1);
                    prompts.len() - 1
                }
            };
            rows_kept.push((
                row,
                p,
                model,
                Outcome {
                    quality: q,
                    cost_usd,
                    output_tokens: out_tok,
                    weight: 1.0,
                    logged: false,
                },
            ));
        }
        if rows_kept.is_empty() && holes.rows > 0 {
            return Err(TrainError::Data(format!(
                "every row of {} has an empty or NaN quality or cost ({} rows): there is \
                 nothing to learn from; fill in the grades and costs",
                match models {
                    Some(list) => format!("the selected models ({})", list.join(", ")),
                    None => "the table".into(),
                },
                holes.rows
            )));
        }
        if rows_kept.is_empty() {
            let mut present: Vec<&str> = model_col.iter().flatten().map(String::as_str).collect();
            present.sort_unstable();
            present.dedup();
            return Err(TrainError::Data(format!(
                "none of the selected models ({}) is in the table, which has: {}",
                models.unwrap_or_default().join(", "),
                present.join(", ")
            )));
        }
        holes.warn();
        if let Some((row, id)) = other_texts {
            tracing::warn!(
                rows = other_text_rows,
                example_row = row,
                example_prompt_id = %id,
                "rows give another prompt text for a prompt_id seen before; the first text is used"
            );
        }
        let mut names: Vec<String> = rows_kept.iter().map(|(_, _, m, _)| m.clone()).collect();
        names.sort();
        names.dedup();
        let cells = pivot(&rows_kept, &prompts, &names)?;
        let specs = decision_specs(&names, &cells, &prices, catalog);
        let sha = sha256_file(path)?;
        if !prompts.iter().any(|p| p.split == Split::Dev) {
            carve_dev(&mut prompts);
        }
        Ok(Self {
            prompts,
            models: names,
            cells,
            specs,
            sources: vec![sha.clone()],
            data_sha256: sha,
            rows: rows_kept.len(),
        })
    }

    /// Indices of prompts in `split`.
    pub fn indices(&self, split: Split) -> Vec<usize> {
        (0..self.prompts.len())
            .filter(|&i| self.prompts[i].split == split)
            .collect()
    }

    /// Index of `model`.
    pub fn model_index(&self, model: &str) -> Option<usize> {
        self.models.iter().position(|m| m == model)
    }
}

/// Moves ~15% of train prompts to dev, chosen by a hash of the prompt id (stable across runs).
pub(crate) fn carve_dev(prompts: &mut [Prompt]) {
    for p in prompts.iter_mut().filter(|p| p.split == Split::Train) {
        if carved_into_dev(&p.id) {
            p.split = Split::Dev;
        }
    }
}

/// Whether the prompt keyed `key` belongs to the ~15% carved out as dev (a stable hash).
pub(crate) fn carved_into_dev(key: &str) -> bool {
    use sha2::Digest;
    let h = sha2::Sha256::digest(key.as_bytes());
    u16::from_be_bytes([h[0], h[1]]) % 100 < 15
}
