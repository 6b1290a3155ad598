// The official `openai` npm client against taotoken-proxy: a non-streaming and
// a streaming chat completion and a models list. Exits non-zero on any failure.
import OpenAI from 'openai';
import assert from 'node:assert/strict';

const client = new OpenAI({ baseURL: process.env.PROXY_URL, apiKey: process.env.PROXY_KEY, maxRetries: 0 });

const chat = await client.chat.completions.create({
  model: 'gpt-4o-mini',
  messages: [{ role: 'user', content: 'hello from the openai client' }],
});
assert.equal(chat.choices[0].message.content, 'Echo: hello from the openai client');
assert.equal(chat.model, 'gpt-4o-mini');
assert.ok(chat.usage.total_tokens > 0);

const stream = await client.chat.completions.create({
  model: 'gpt-4o-mini',
  messages: [{ role: 'user', content: 'stream this please' }],
  stream: true,
  stream_options: { include_usage: true },
});
let text = '';
let usage = null;
let chunks = 0;
for await (const chunk of stream) {
  chunks++;
  if (chunk.choices[0]?.delta?.content) text += chunk.choices[0].delta.content;
  if (chunk.usage) usage = chunk.usage;
}
assert.equal(text, 'Echo: stream this please');
assert.ok(chunks >= 5, `only ${chunks} chunks`);
assert.ok(usage && usage.completion_tokens === 4, `usage ${JSON.stringify(usage)}`);

const models = await client.models.list();
const ids = [];
for await (const m of models) ids.push(m.id);
assert.ok(ids.includes('claude-sonnet-4-6'), `models ${ids}`);

let unauthorized = false;
try {
  await new OpenAI({ baseURL: process.env.PROXY_URL, apiKey: 'wrong-key-000000', maxRetries: 0 }).models.list();
} catch (e) {
  unauthorized = e.status === 401;
}
assert.ok(unauthorized, 'a wrong internal key must get 401');

console.log(`openai client OK: chat, stream (${chunks} chunks), ${ids.length} models`);
