//! Outcome tables from any source: prices from the catalog or implied by the costs, a dev split
//! carved when absent.

use std::path::PathBuf;

use triage_core::{Catalog, Settings};
use triage_train::table::{Outcomes, Split};

/// The catalog the embedded defaults ship.
fn default_catalog() -> Catalog {
    Settings::load(None)
        .expect("settings")
        .catalog()
        .expect("catalog")
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn token_counts_are_priced_from_the_catalog_and_dev_is_carved_deterministically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut csv = String::from("prompt_id,prompt,model,quality,input_tokens,output_tokens\n");
    for i in 0..200 {
        csv.push_str(&format!("p{i},question {i},gpt-4o-2024-08-06,1,1000,100\n"));
        csv.push_str(&format!(
            "p{i},question {i},gpt-4o-mini-2024-07-18,0,1000,200\n"
        ));
    }
    let path = write(&dir, "t.csv", &csv);
    let catalog = default_catalog();
    let a = Outcomes::load(&path, &catalog, None, false).expect("loads");
    let b = Outcomes::load(&path, &catalog, None, false).expect("loads");
    assert_eq!(a.models, ["gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18"]);
    let gpt4o = a.cells[0][0].expect("outcome");
    // 1000 × $2.50/1M + 100 × $10/1M
    assert!((gpt4o.cost_usd - 0.0035).abs() < 1e-12);
    let dev = a.indices(Split::Dev);
    assert!(
        (15..=50).contains(&dev.len()),
        "about 15% of 200 carved: {}",
        dev.len()
    );
    assert_eq!(dev, b.indices(Split::Dev));
    assert!(a.indices(Split::Test).is_empty());

    let unknown = write(
        &dir,
        "u.csv",
        "prompt_id,prompt,model,quality,input_tokens,output_tokens\np,q,mystery-model,1,10,10\n",
    );
    let err = Outcomes::load(&unknown, &catalog, None, false)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("mystery-model") && err.contains("no price"),
        "{err}"
    );
}

#[test]
fn models_known_only_by_their_costs_get_the_price_their_rows_paid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut csv = String::from("prompt_id,prompt,model,quality,cost_usd,output_tokens\n");
    for i in 0..20 {
        // $0.001 for 100 output tokens, then $0.005 for 200: $20 per 1M over both (the cost
        // per token of the rows together, not the mean of their $10 and $25).
        let (cost, tokens) = if i % 2 == 0 {
            (0.001, 100)
        } else {
            (0.005, 200)
        };
        csv.push_str(&format!("p{i},question {i},counted,1,{cost},{tokens}\n"));
        csv.push_str(&format!("p{i},question {i},uncounted,0,0.001,\n"));
        csv.push_str(&format!("p{i},question {i},gpt-4o-2024-08-06,1,0.01,\n"));
    }
    let path = write(&dir, "c.csv", &csv);
    let catalog = default_catalog();
    let o = Outcomes::load(&path, &catalog, None, false).expect("loads");
    let price = |m: &str| {
        let s = o.specs.get(m).expect("priced");
        (s.input_usd_per_1m, s.output_usd_per_1m)
    };
    let (input, output) = price("counted");
    assert_eq!(input, 0.0);
    assert!((output - 20.0).abs() < 1e-9, "{output}");
    // No token counts: its mean cost per call over the 256 tokens assumed for it.
    assert!((price("uncounted").1 - 0.001 / 256.0 * 1e6).abs() < 1e-9);
    // A catalog model keeps its catalog price whatever its rows cost.
    let listed = catalog.get("gpt-4o-2024-08-06").expect("in the catalog");
    assert_eq!(
        price("gpt-4o-2024-08-06"),
        (listed.input_usd_per_1m, listed.output_usd_per_1m)
    );
}

#[test]
fn a_prompt_id_seen_again_with_another_text_keeps_its_first_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        &dir,
        "variants.csv",
        "prompt_id,prompt,model,quality,cost_usd\np1,first text,a,1,0.1\np1,second text,b,0,0.2\n",
    );
    let catalog = default_catalog();
    let o = Outcomes::load(&path, &catalog, None, false).expect("variants load");
    assert_eq!(o.prompts.len(), 1);
    assert_eq!(o.prompts[0].text, "first text");
    assert!(o.cells[0].iter().all(Option::is_some), "both models kept");
}

#[test]
fn rows_with_holes_are_left_out_unless_strict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut csv = String::from("prompt_id,prompt,model,quality,cost_usd\n");
    for i in 0..40 {
        csv.push_str(&format!("p{i},question {i},gpt-4o-2024-08-06,1,0.01\n"));
        // The small model timed out on every fourth prompt (no grade), and its cost is missing
        // on p1; one NaN grade too.
        let quality = match i {
            _ if i % 4 == 0 => String::new(),
            5 => "NaN".into(),
            _ => "0".into(),
        };
        let cost = if i == 1 { "" } else { "0.001" };
        csv.push_str(&format!(
            "p{i},question {i},gpt-4o-mini-2024-07-18,{quality},{cost}\n"
        ));
    }
    let path = write(&dir, "holes.csv", &csv);
    let catalog = default_catalog();
    let o = Outcomes::load(&path, &catalog, None, false).expect("loads, holes left out");
    assert_eq!(
        o.rows,
        80 - 12,
        "10 empty grades, one NaN, one missing cost"
    );
    assert_eq!(
        o.prompts.len(),
        40,
        "every prompt still counts (for the model that has it)"
    );
    let mini = o.model_index("gpt-4o-mini-2024-07-18").expect("kept");
    assert!(o.cells[0][mini].is_none() && o.cells[2][mini].is_some());
    let strict = Outcomes::load(&path, &catalog, None, true)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        strict.contains("row 1") && strict.contains("quality"),
        "{strict}"
    );
    // A table that is all holes says so, rather than that its models are missing.
    let blank = write(
        &dir,
        "blank.csv",
        "prompt_id,prompt,model,quality,cost_usd\np0,q,gpt-4o-2024-08-06,,0.01\n\
         p1,q1,gpt-4o-2024-08-06,NaN,0.01\n",
    );
    let err = Outcomes::load(&blank, &catalog, None, false)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("every row of the table has an empty or NaN quality or cost (2 rows)"),
        "{err}"
    );
}

#[test]
fn only_tasks_keeps_those_prompts_and_names_the_tables_tasks_otherwise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut csv = String::from("prompt_id,prompt,model,quality,cost_usd,task\n");
    for (i, task) in ["law", "math", "law", "physics"].iter().enumerate() {
        csv.push_str(&format!(
            "p{i},question {i},gpt-4o-2024-08-06,1,0.01,{task}\n"
        ));
        csv.push_str(&format!(
            "p{i},question {i},gpt-4o-mini-2024-07-18,0,0.001,{task}\n"
        ));
    }
    let path = write(&dir, "tasks.csv", &csv);
    let table = Outcomes::load(&path, &default_catalog(), None, false).expect("loads");
    let kept = table
        .clone()
        .only_tasks(&["law".into(), "physics".into()])
        .expect("two tasks");
    let ids: Vec<&str> = kept.prompts.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["p0", "p2", "p3"]);
    assert_eq!(kept.cells.len(), 3);
    assert_eq!(kept.cells[2][0].map(|c| c.quality), Some(1.0));
    let err = table
        .only_tasks(&["history".into()])
        .expect_err("no such task")
        .to_string();
    assert!(err.contains("law, math, physics"), "{err}");
}
