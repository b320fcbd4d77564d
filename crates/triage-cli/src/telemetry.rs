//! Logs and traces: `tracing` events to stderr (text, or JSON with `TRIAGE_LOG_FORMAT=json`),
//! and, in builds with the `otel` feature, spans exported over OTLP/gRPC to
//! `OTEL_EXPORTER_OTLP_ENDPOINT` when that variable is set (the standard `OTEL_*` variables
//! configure the exporter).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// Keeps the exporter alive; dropping it flushes the spans still queued.
pub struct Telemetry {
    #[cfg(feature = "otel")]
    otel: Option<(
        opentelemetry_sdk::trace::SdkTracerProvider,
        tokio::runtime::Runtime,
    )>,
}

/// Installs the global subscriber.
pub fn init() -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // One JSON object per line for log shippers; human-readable otherwise.
    let logs = if std::env::var("TRIAGE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        // Colours only for a person at a terminal; plain text in files, pipes and CI logs.
        use std::io::IsTerminal;
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed()
    };
    let registry = tracing_subscriber::registry().with(filter).with(logs);
    #[cfg(feature = "otel")]
    {
        use opentelemetry::trace::TracerProvider as _;
        let otel = otel_exporter()?;
        let layer = otel.as_ref().map(|(provider, _)| {
            tracing_opentelemetry::layer().with_tracer(provider.tracer("triage"))
        });
        registry.with(layer).init();
        Ok(Telemetry { otel })
    }
    #[cfg(not(feature = "otel"))]
    {
        registry.init();
        Ok(Telemetry {})
    }
}

#[cfg(feature = "otel")]
fn otel_exporter() -> anyhow::Result<
    Option<(
        opentelemetry_sdk::trace::SdkTracerProvider,
        tokio::runtime::Runtime,
    )>,
> {
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
        return Ok(None);
    }
    // The exporter gets its own runtime: commands build theirs later, and a few short exports
    // need no more than one thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("triage-otel")
        .enable_all()
        .build()?;
    let provider = runtime.block_on(async {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        let processor =
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("triage")
            .build();
        Ok::<_, anyhow::Error>(
            opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_span_processor(processor)
                .with_resource(resource)
                .build(),
        )
    })?;
    Ok(Some((provider, runtime)))
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some((provider, runtime)) = self.otel.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("flushing traces failed: {e}");
            }
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
        }
    }
}
