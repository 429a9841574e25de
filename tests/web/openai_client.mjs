// The official OpenAI client (npm "openai") against stip-client's HTTP API.
// Usage: node openai_client.mjs NODE_MODULES_DIR BASE_URL API_KEY MODEL PROMPT MAX_TOKENS
// Prints one JSON object: what each call returned, for the C++ test to check.
import { createRequire } from 'node:module';
const [modules, baseURL, apiKey, model, prompt, maxTokens] = process.argv.slice(2);
const require = createRequire(modules + '/');
const { default: OpenAI } = await import(require.resolve('openai'));

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 120000 });
const out = {};
const models = await client.models.list();
out.models = models.data.map((m) => m.id);

const messages = [{ role: 'user', content: prompt }];
const greedy = { model, messages, temperature: 0, max_tokens: Number(maxTokens) };
const plain = await client.chat.completions.create(greedy);
out.chat = {
  text: plain.choices[0].message.content,
  finish_reason: plain.choices[0].finish_reason,
  usage: plain.usage,
  object: plain.object,
};

const stream = await client.chat.completions.create({
  ...greedy, stream: true, stream_options: { include_usage: true } });
let text = '';
let chunks = 0;
let finish = null;
let usage = null;
for await (const chunk of stream) {
  chunks++;
  if (chunk.usage) usage = chunk.usage;
  for (const c of chunk.choices) {
    if (c.delta?.content) text += c.delta.content;
    if (c.finish_reason) finish = c.finish_reason;
  }
}
out.stream = { text, chunks, finish_reason: finish, usage };

const lp = await client.chat.completions.create({ ...greedy, logprobs: true, top_logprobs: 5 });
out.logprobs = lp.choices[0].logprobs.content;

const completion = await client.completions.create(
  { model, prompt, temperature: 0, max_tokens: Number(maxTokens) });
out.completion = { text: completion.choices[0].text, finish_reason: completion.choices[0].finish_reason };

try {
  await client.chat.completions.create({ ...greedy, model: 'no-such-model' });
  out.unknown_model = 'accepted';
} catch (e) {
  out.unknown_model = { status: e.status, code: e.code, type: e.type, param: e.param };
}
process.stdout.write(JSON.stringify(out) + '\n');
