// Triage from Node with the official `openai` package: `model: "triage"` and the model that
// answered in `response.model`.
//
//     npm install            (in examples/node)
//     TRIAGE_BASE_URL=http://127.0.0.1:8080/v1 node examples/node/quickstart.mjs
import OpenAI from "openai";

const PROMPTS = [
  "What is the capital of France?",
  "Let a, b, c be positive reals with abc = 1. Prove that 1/(a^3(b+c)) + 1/(b^3(c+a)) + " +
    "1/(c^3(a+b)) >= 3/2. Give a complete, rigorous proof, justifying every step and stating " +
    "which inequalities (AM-GM, Cauchy-Schwarz, Muirhead) you use and why their conditions hold.",
  "Write a Python function that implements a retry mechanism with exponential backoff, with " +
    "type hints and async support",
];

const client = new OpenAI({
  baseURL: process.env.TRIAGE_BASE_URL ?? "http://127.0.0.1:8080/v1",
  apiKey: process.env.TRIAGE_API_KEY ?? "unused", // a Triage key when keys are on
});
const firstLine = (text) => (text ?? "").trim().split("\n")[0];

for (const prompt of PROMPTS) {
  const r = await client.chat.completions.create({
    model: "triage",
    messages: [{ role: "user", content: prompt }],
  });
  console.log(`${r.model.padEnd(32)} ${firstLine(r.choices[0].message.content).slice(0, 70)}`);
}

// Routing preferences ride in the body as `triage`: a mode, the models allowed, a budget.
const cheap = await client.chat.completions.create({
  model: "triage",
  messages: [{ role: "user", content: PROMPTS[1] }],
  triage: {
    mode: "cost",
    allowed_models: ["gpt-4o-mini-2024-07-18", "claude-3-haiku-20240307"],
    max_cost_usd: 0.01,
  },
});
console.log(`preferences: ${cheap.model}`);

// Streaming: every chunk names the model that answers.
const stream = await client.chat.completions.create({
  model: "triage",
  messages: [{ role: "user", content: PROMPTS[0] }],
  stream: true,
});
let text = "";
let model;
for await (const chunk of stream) {
  model = chunk.model;
  text += chunk.choices[0]?.delta?.content ?? "";
}
console.log(`streamed:    ${model} ${firstLine(text).slice(0, 60)}`);
