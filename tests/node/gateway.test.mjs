// The official `openai` Node package against Triage's HTTP gateway (non-streaming, streaming,
// preferences as an extra body field, an error, `AzureOpenAI` with deployment `model-router`), and `@grpc/grpc-js` calling `Route`, over a
// real `triage serve` whose providers point at the local upstream.
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

import OpenAI, { AzureOpenAI } from "openai";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const FRANCE = "What is the capital of France?";
const PROOF =
  "Let $a, b, c$ be positive reals with $abc = 1$. Prove that " +
  "$\\frac{1}{a^3(b+c)} + \\frac{1}{b^3(c+a)} + \\frac{1}{c^3(a+b)} \\ge \\frac{3}{2}$. " +
  "Give a complete, rigorous proof, justifying every step and stating which inequalities " +
  "(AM-GM, Cauchy-Schwarz, Muirhead) you use and why their conditions hold.";
const PROVIDERS = [
  ["openai", "openai"], ["anthropic", "anthropic"], ["deepseek", "openai"],
  ["together", "openai"], ["google", "openai"], ["fireworks", "openai"],
];

const children = [];

/** Starts a process and resolves with its first `n` stdout lines. */
function start(cmd, args, n) {
  const child = spawn(cmd, args, { cwd: ROOT, stdio: ["ignore", "pipe", "inherit"] });
  children.push(child);
  const lines = [];
  return new Promise((ok, fail) => {
    const rl = createInterface({ input: child.stdout });
    rl.on("line", (line) => {
      lines.push(line);
      if (lines.length === n) ok(lines);
    });
    child.on("exit", (code) => fail(new Error(`${cmd} exited ${code} after ${JSON.stringify(lines)}`)));
  });
}

let openai, router, upstream, gateway;

before(async () => {
  const bin = process.env.TRIAGE_TEST_BIN;
  const upstreamBin = process.env.TRIAGE_TEST_UPSTREAM_BIN;
  assert.ok(bin && upstreamBin, "set TRIAGE_TEST_BIN and TRIAGE_TEST_UPSTREAM_BIN (scripts/test.sh does)");
  const [line] = await start(upstreamBin, [], 1);
  upstream = `http://${line.split(" ").at(-1)}`;
  const dir = mkdtempSync(join(tmpdir(), "triage-node-"));
  const config = join(dir, "triage.toml");
  writeFileSync(config, PROVIDERS.map(([name, kind]) =>
    `[[providers]]\nname = "${name}"\nkind = "${kind}"\nbase_url = "${upstream}/v1"\n`).join("\n"));
  const [grpcLine, httpLine] = await start(bin, ["--config", config, "serve", "--listen", "127.0.0.1:0",
    "--http-listen", "127.0.0.1:0", "--data-dir", join(dir, "log")], 2);
  gateway = httpLine.split(" ").at(-1);
  openai = new OpenAI({ baseURL: `${gateway}/v1`, apiKey: "unused", maxRetries: 0 });
  const definition = protoLoader.loadSync(join(ROOT, "proto/triage/v1/router.proto"), {
    keepCase: true, enums: String, defaults: true,
  });
  const { triage } = grpc.loadPackageDefinition(definition);
  router = new triage.v1.Router(grpcLine.split(" ").at(-1), grpc.credentials.createInsecure());
});

after(() => {
  router?.close();
  for (const child of children) child.kill("SIGTERM");
});

const ask = (content, extra = {}) =>
  openai.chat.completions.create({ model: "triage", messages: [{ role: "user", content }], ...extra });

test("easy and hard prompts are answered by different models", async () => {
  const easy = await ask(FRANCE);
  const hard = await ask(PROOF);
  assert.notEqual(easy.model, hard.model);
  assert.ok(easy.choices[0].message.content.startsWith(`[${easy.model}]`));
  assert.ok(hard.usage.completion_tokens > 0);
});

test("streaming names one model in every chunk", async () => {
  const stream = await ask(FRANCE, { stream: true, stream_options: { include_usage: true } });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const models = new Set(chunks.map((c) => c.model));
  assert.equal(models.size, 1);
  const text = chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");
  assert.ok(text.startsWith(`[${[...models][0]}]`), text);
  assert.ok(chunks.at(-1).usage.completion_tokens > 0);
});

test("preferences ride in an extra body field", async () => {
  const allowed = ["gpt-4o-mini-2024-07-18", "claude-3-haiku-20240307"];
  const r = await ask(PROOF, { triage: { allowed_models: allowed, mode: "quality" } });
  assert.ok(allowed.includes(r.model), r.model);
});

test("errors arrive as typed exceptions", async () => {
  await assert.rejects(
    openai.chat.completions.create({ model: "gpt-9", messages: [{ role: "user", content: "x" }] }),
    (e) => e instanceof OpenAI.NotFoundError,
  );
  await assert.rejects(ask(FRANCE, { n: 2 }), (e) => e instanceof OpenAI.BadRequestError && /n/.test(e.message));
});

test("the seed's AzureOpenAI client calls deployment model-router", async () => {
  // As the seed writes it, with only the endpoint and key changed: the client calls
  // /openai/deployments/model-router/chat/completions?api-version=...
  const client = new AzureOpenAI({
    endpoint: gateway, apiKey: "unused", deployment: "model-router", apiVersion: "2024-10-21", maxRetries: 0,
  });
  const result = await client.chat.completions.create({
    messages: [
      { role: "system", content: "You are a helpful assistant." },
      { role: "user", content: "I am going to Paris, what should I see?" },
    ],
    max_tokens: 8192, temperature: 0.7, top_p: 0.95, frequency_penalty: 0, presence_penalty: 0,
    model: "model-router",
  });
  assert.notEqual(result.model, "model-router");
  assert.ok(result.choices[0].message.content.startsWith(`[${result.model}]`), result.model);
  // The model it routed to is rate-limited: the next answers, and the call is recorded with its cost.
  await fetch(`${upstream}/_script`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: result.model, faults: [{ kind: "status", status: 429 }] }),
  });
  const { data, response } = await client.chat.completions.create({
    messages: [{ role: "user", content: "I am going to Paris, what should I see?" }], model: "model-router",
  }).withResponse();
  assert.equal(response.headers.get("x-triage-attempts"), "2");
  assert.notEqual(data.model, result.model);
  assert.ok(Number(response.headers.get("x-triage-cost-usd")) > 0);
});

test("a rate-limited model is answered by the next", async () => {
  const chosen = (await ask(FRANCE)).model;
  await fetch(`${upstream}/_script`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: chosen, faults: [{ kind: "status", status: 429, retry_after: 2 }] }),
  });
  const { data, response } = await ask(FRANCE).withResponse();
  assert.equal(response.headers.get("x-triage-attempts"), "2");
  assert.notEqual(data.model, chosen);
  assert.equal(data.model, response.headers.get("x-triage-model"));
});

test("@grpc/grpc-js calls Route on the same process", async () => {
  const reply = await new Promise((ok, fail) =>
    router.Route({ messages: [{ role: "user", content: FRANCE }], preferences: { mode: "MODE_BALANCED" } },
      (err, r) => (err ? fail(err) : ok(r))));
  assert.ok(reply.request_id);
  assert.equal(reply.candidates[0].model, reply.model);
  assert.equal(reply.candidates.length, 12);
});
