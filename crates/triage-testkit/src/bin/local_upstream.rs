//! `triage-local-upstream [--listen ADDR] [--first-byte-ms N] [--chunk-delay-ms N] [--words N]`:
//! runs the local upstream (see the crate docs) until killed, printing `listening on ADDR`.

use std::time::Duration;

use triage_testkit::{Behaviour, LocalUpstream};

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("{name} needs a value")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let listen = arg(&args, "--listen")?.unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let ms = |name| arg::<u64>(&args, name).map(|v| Duration::from_millis(v.unwrap_or(0)));
    let behaviour = Behaviour {
        first_byte: ms("--first-byte-ms")?,
        chunk_delay: ms("--chunk-delay-ms")?,
        answer_words: arg(&args, "--words")?.unwrap_or(12),
        ..Behaviour::default()
    };
    let addr = listen
        .parse()
        .map_err(|e| format!("--listen {listen}: {e}"))?;
    let upstream = LocalUpstream::bind(addr, behaviour)
        .await
        .map_err(|e| e.to_string())?;
    println!("listening on {}", upstream.addr);
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    Ok(())
}
