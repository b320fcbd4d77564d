// The seed's Node walkthrough (AzureOpenAI, deployment "model-router"), pointed at Triage: only
// the endpoint and the key change. The client calls
// /openai/deployments/model-router/chat/completions?api-version=...; the answer names the model
// that answered.
//
//     TRIAGE_ENDPOINT=http://127.0.0.1:8080 node examples/node/model_router.mjs
import { AzureOpenAI } from "openai";

const endpoint = process.env.TRIAGE_ENDPOINT ?? "http://127.0.0.1:8080";
const apiKey = process.env.TRIAGE_KEY ?? "unused";
const apiVersion = "2024-10-21";
const deployment = "model-router";
const modelName = "model-router";

const client = new AzureOpenAI({ endpoint, apiKey, deployment, apiVersion });

const result = await client.chat.completions.create({
  messages: [
    { role: "system", content: "You are a helpful assistant." },
    { role: "user", content: "I am going to Paris, what should I see?" },
  ],
  max_tokens: 8192,
  temperature: 0.7,
  top_p: 0.95,
  frequency_penalty: 0,
  presence_penalty: 0,
  model: modelName,
});

console.log(`${modelName} answered with ${result.model}: ${result.choices[0].message.content}`);
