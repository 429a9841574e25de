// The chat page of stip-client serve --http: talks to the daemon's own
// OpenAI-compatible API (/v1/chat/completions with stream: true) on the same
// origin. The conversation lives in this page (and is sent whole with every
// request, as the API is stateless). No build step, no dependencies.
'use strict';

const $ = (id) => document.getElementById(id);
const state = { messages: [], controller: null };

function headers() {
  const h = { 'Content-Type': 'application/json' };
  const key = $('api-key').value.trim();
  if (key) h.Authorization = 'Bearer ' + key;
  return h;
}

function addMessage(role, text) {
  const div = document.createElement('div');
  div.className = 'message ' + role;
  div.textContent = text;
  $('conversation').appendChild(div);
  div.scrollIntoView({ block: 'end' });
  return div;
}

function setBusy(busy) {
  $('send').disabled = busy;
  $('stop').disabled = !busy;
  $('prompt').disabled = busy;
}

async function errorText(response) {
  try {
    const j = await response.json();
    return (j.error && j.error.message) || response.statusText;
  } catch (e) {
    return response.statusText;
  }
}

async function loadModels() {
  try {
    const r = await fetch('/v1/models', { headers: headers() });
    if (!r.ok) throw new Error(await errorText(r));
    const j = await r.json();
    const select = $('model');
    select.textContent = '';
    for (const m of j.data) {
      const o = document.createElement('option');
      o.value = m.id;
      o.textContent = m.id;
      select.appendChild(o);
    }
    $('status').textContent = 'Ready.';
  } catch (e) {
    $('status').textContent = 'Cannot list the models: ' + e.message;
  }
}

// Reads server-sent events from a fetch body; calls onData with each data field.
async function readEvents(body, onData) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split('\n').filter((l) => l.startsWith('data: '))
                        .map((l) => l.slice(6)).join('\n');
      if (data && onData(data) === false) return;
    }
  }
}

async function send(text) {
  state.messages.push({ role: 'user', content: text });
  addMessage('user', text);
  const out = addMessage('assistant streaming', '');
  setBusy(true);
  $('status').textContent = 'Generating...';
  state.controller = new AbortController();
  const started = performance.now();
  let first = null;
  let answer = '';
  let usage = null;
  let finish = null;
  try {
    const r = await fetch('/v1/chat/completions', {
      method: 'POST',
      headers: headers(),
      signal: state.controller.signal,
      body: JSON.stringify({
        model: $('model').value,
        messages: state.messages,
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: Number($('max-tokens').value) || undefined,
        temperature: Number($('temperature').value),
      }),
    });
    if (!r.ok) throw new Error(await errorText(r));
    await readEvents(r.body, (data) => {
      if (data === '[DONE]') return false;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices || []) {
        const piece = c.delta && c.delta.content;
        if (piece) {
          if (first === null) first = performance.now();
          answer += piece;
          out.textContent = answer;
          out.scrollIntoView({ block: 'end' });
        }
        if (c.finish_reason) finish = c.finish_reason;
      }
      return true;
    });
    out.classList.remove('streaming');
    out.dataset.done = 'true';
    state.messages.push({ role: 'assistant', content: answer });
    const secs = (performance.now() - started) / 1000;
    $('status').textContent = 'Done (' + (finish || 'stopped') + ')' +
        (first !== null ? ', first token after ' + Math.round(first - started) + ' ms' : '') +
        (usage ? ', ' + usage.completion_tokens + ' tokens in ' + secs.toFixed(2) + ' s' : '');
    if (usage) {
      $('counters').textContent = 'Last answer: ' + usage.prompt_tokens + ' prompt tokens and ' +
          usage.completion_tokens + ' new tokens; each one crossed to the cloud only as x\u2032 ' +
          'and came back only as o\u2032.';
    }
  } catch (e) {
    out.classList.remove('streaming');
    if (e.name === 'AbortError') {
      out.dataset.done = 'stopped';
      if (answer) state.messages.push({ role: 'assistant', content: answer });
      $('status').textContent = 'Stopped.';
    } else {
      out.remove();
      state.messages.pop();
      addMessage('error', e.message);
      $('status').textContent = 'Error.';
    }
  } finally {
    state.controller = null;
    setBusy(false);
    $('prompt').focus();
  }
}

$('composer').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('prompt').value;
  if (!text.trim() || state.controller) return;
  $('prompt').value = '';
  send(text);
});
$('prompt').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey) {
    e.preventDefault();
    $('composer').requestSubmit();
  }
});
$('stop').addEventListener('click', () => {
  if (state.controller) state.controller.abort();
});
$('new-chat').addEventListener('click', () => {
  if (state.controller) state.controller.abort();
  state.messages = [];
  $('conversation').textContent = '';
  $('counters').textContent = '';
  $('status').textContent = 'New conversation.';
});
$('api-key').addEventListener('change', () => {
  sessionStorage.setItem('stip-api-key', $('api-key').value);
  loadModels();
});
$('api-key').value = sessionStorage.getItem('stip-api-key') || '';
loadModels();
