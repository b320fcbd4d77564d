#!/usr/bin/env python3
"""Writes the catalog presets under models/catalogs/ from LiteLLM's maintained price map.

    python3 scripts/catalogs.py            # rewrites models/catalogs/*.toml

The price map ships inside the `litellm` wheel on PyPI (pinned below by version and sha256);
pip downloads it into .cache/, nothing is installed. Prices, context windows and capabilities
come from the map, cached-input prices included. Latency comes from the bundled catalog's entry for the model each preset
model borrows its prior from (the map has none). `prior_from` and `prior_offset` (log-odds)
are starting guesses, not measurements: the closest model the bundled policy was trained on,
and how much better the newer model is expected to be. The router explores each new model
(`exploration.new_model_boost`) and its outcomes replace the prior at the next retrain.
"""
import hashlib
import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LITELLM = "1.110.2"
WHEEL_SHA256 = "9d94d1c7d524b6fd10c14f9c8c6c4f0ac31705f9964ac59dcfd8337c046d8917"
MAP = "litellm/model_prices_and_context_window_backup.json"

PROVIDERS = {
    "openai": ('kind = "openai"\nbase_url = "https://api.openai.com/v1"\n'
               'api_key_env = "OPENAI_API_KEY"'),
    "anthropic": ('kind = "anthropic"\nbase_url = "https://api.anthropic.com/v1"\n'
                  'api_key_env = "ANTHROPIC_API_KEY"\n'
                  'headers = { "anthropic-version" = "2023-06-01" }'),
    "deepseek": ('kind = "openai"\nbase_url = "https://api.deepseek.com/v1"\n'
                 'api_key_env = "DEEPSEEK_API_KEY"'),
}

# (catalog name, price-map key, provider, upstream model or None, prior_from, prior_offset)
SEED_FOUNDRY = [
    ("gpt-4o-2024-08-06", "gpt-4o-2024-08-06", "openai", None, None, 0.0),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18", "openai", None, None, 0.0),
    ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "anthropic", "claude-sonnet-4-5-20250929",
     "claude-3-5-sonnet-20241022", 0.5),
    ("claude-haiku-4-5", "claude-haiku-4-5-20251001", "anthropic", "claude-haiku-4-5-20251001",
     "claude-3-5-haiku-20241022", 0.5),
]
SEED_WIDE = SEED_FOUNDRY + [
    ("gpt-5", "gpt-5", "openai", None, "gpt-4o-2024-08-06", 1.0),
    ("o3", "o3", "openai", None, "gpt-4o-2024-08-06", 1.0),
    # The map lists Opus 4.1 under its Bedrock id only; Anthropic's list price is the same.
    ("claude-opus-4-1", "anthropic.claude-opus-4-1-20250805-v1:0", "anthropic",
     "claude-opus-4-1-20250805", "claude-3-5-sonnet-20241022", 0.8),
    ("deepseek-r1", "deepseek-reasoner", "deepseek", "deepseek-reasoner", "deepseek-v2.5-0908", 1.0),
]
PRESETS = {
    "seed-foundry": ("The seed's Foundry deployment: GPT-4o, GPT-4o mini, Claude Sonnet 4.5 and "
                     "Claude Haiku 4.5.", SEED_FOUNDRY),
    "seed-wide": ("The seed's deployment and the models it also names: GPT-5, o3, Claude Opus "
                  "4.1 and DeepSeek R1.", SEED_WIDE),
}


def price_map():
    cache = ROOT / ".cache" / "litellm"
    wheels = list(cache.glob(f"litellm-{LITELLM}-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary=:all:", "-d", str(cache), f"litellm=={LITELLM}"], check=True)
        wheels = list(cache.glob(f"litellm-{LITELLM}-*.whl"))
    wheel = wheels[0]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        sys.exit(f"{wheel}: sha256 {digest}, expected {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as z:
        return json.loads(z.read(MAP))


def entry(bundled, prices, name, key, provider, upstream, prior_from, offset):
    p = prices[key]
    borrowed = bundled[prior_from or name]
    caps = [c for c, flag in (("vision", "supports_vision"), ("tools", "supports_function_calling"),
                              ("json_output", "supports_response_schema")) if p.get(flag)]
    lat = borrowed["latency"]
    lines = [
        "[[models]]",
        f'name = "{name}"',
        f'provider = "{provider}"',
        *([f'upstream_model = "{upstream}"'] if upstream else []),
        f"input_usd_per_1m = {round(p['input_cost_per_token'] * 1e6, 6)}",
        f"output_usd_per_1m = {round(p['output_cost_per_token'] * 1e6, 6)}",
        *([f"cached_input_usd_per_1m = {round(p['cache_read_input_token_cost'] * 1e6, 6)}"]
          if p.get("cache_read_input_token_cost") else []),
        *([f"cache_write_usd_per_1m = {round(p['cache_creation_input_token_cost'] * 1e6, 6)}"]
          if p.get("cache_creation_input_token_cost") else []),
        f"context_window = {p['max_input_tokens']}",
        f"capabilities = {json.dumps(caps)}",
        # The reasoning parameter rules are OpenAI's and Anthropic's own; other OpenAI-style
        # providers (DeepSeek) take the usual parameters.
        *(["reasoning = true"] if p.get("supports_reasoning") and provider in ("openai", "anthropic")
          else []),
        f"latency = {{ first_token_ms = {lat['first_token_ms']}, output_tokens_per_s = "
        f"{lat['output_tokens_per_s']} }}",
        *([f'prior_from = "{prior_from}"', f"prior_offset = {offset}"] if prior_from else []),
    ]
    return "\n".join(lines)


def main():
    prices = price_map()
    default = tomllib.loads((ROOT / "crates/triage-core/default.toml").read_text())
    bundled = {m["name"]: m for m in default["models"]}
    out = ROOT / "models" / "catalogs"
    out.mkdir(exist_ok=True)
    for preset, (about, models) in PRESETS.items():
        providers = sorted({m[2] for m in models})
        text = [
            f"# {about}",
            f"# Generated by scripts/catalogs.py from the price map of litellm {LITELLM} (PyPI);",
            "# latency borrowed from the bundled catalog; prior_from/prior_offset are starting",
            "# guesses that exploration and retraining replace with outcomes.",
            f"#   triage serve --config models/catalogs/{preset}.toml   (export "
            + ", ".join(tomllib.loads(PROVIDERS[p])["api_key_env"] for p in providers) + ")",
            "",
        ]
        for p in providers:
            text += ["[[providers]]", f'name = "{p}"', PROVIDERS[p], ""]
        for m in models:
            text += [entry(bundled, prices, *m), ""]
        # The models priors borrow from stay listed, disabled: their predictions are the
        # policy's, and they are never chosen.
        sources = sorted({m[4] for m in models if m[4]} - {m[0] for m in models})
        for name in sources:
            source = bundled[name]
            lat = source["latency"]
            text += [
                "[[models]]",
                f'name = "{name}"',
                f'provider = "{source["provider"]}"',
                f"input_usd_per_1m = {source['input_usd_per_1m']}",
                f"output_usd_per_1m = {source['output_usd_per_1m']}",
                f"context_window = {source['context_window']}",
                f"capabilities = {json.dumps(source.get('capabilities', []))}",
                "enabled = false   # a prior's source only",
                f"latency = {{ first_token_ms = {lat['first_token_ms']}, output_tokens_per_s = "
                f"{lat['output_tokens_per_s']} }}",
                "",
            ]
        (out / f"{preset}.toml").write_text("\n".join(text))
        print(f"wrote models/catalogs/{preset}.toml ({len(models)} models)")


if __name__ == "__main__":
    main()
