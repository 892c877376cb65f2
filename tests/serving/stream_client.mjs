// One streaming completion on a connection of its own, with node's http
// module (nothing pooled, retried or buffered): what load.test.mjs and
// scripts/bench-serving-under-attack.mjs open by the thousand. No npm packages.
import http from 'node:http';

// POSTs `body` (a chat body when it has messages, else a completion) to
// hostname:port and reads the SSE stream. Resolves, never rejects, with
// { status, chunks, text, finish, usage, done, error }: `done` once
// `data: [DONE]` arrived, `error` the stream's error object or what went wrong
// on the wire ('timeout' after `timeoutMs`). `onFirstData` runs when the first
// bytes of the body arrive.
export function stream({ hostname, port, body, timeoutMs, onFirstData }) {
  return new Promise((resolve) => {
    const result = { status: 0, chunks: 0, text: '', finish: null, usage: null, done: false, error: null };
    const req = http.request({ hostname, port, path: body.messages ? '/v1/chat/completions' : '/v1/completions', method: 'POST', agent: false,
      headers: { 'content-type': 'application/json', connection: 'close' } }, (res) => {
      result.status = res.statusCode;
      let buffer = '';
      let first = true;
      res.setEncoding('utf8');
      res.on('data', (data) => {
        if (first) { first = false; onFirstData?.(); }
        buffer += data;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const event = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (!event.startsWith('data: ')) continue;
          const payload = event.slice(6);
          if (payload === '[DONE]') { result.done = true; continue; }
          let chunk;
          try { chunk = JSON.parse(payload); } catch { result.error = `not JSON: ${payload.slice(0, 100)}`; continue; }
          if (chunk.error) result.error = chunk.error;
          if (chunk.usage) result.usage = chunk.usage;
          for (const c of chunk.choices ?? []) {
            result.chunks++;
            result.text += c.text ?? c.delta?.content ?? '';
            if (c.finish_reason) result.finish = c.finish_reason;
          }
        }
      });
      res.on('end', () => resolve(result));
      res.on('error', (e) => { result.error = String(e); resolve(result); });
    });
    req.setTimeout(timeoutMs, () => { result.error = 'timeout'; req.destroy(); resolve(result); });
    req.on('error', (e) => { result.error = String(e); resolve(result); });
    req.end(JSON.stringify(body));
  });
}

// Whether a stream ended as a complete reply of `maxTokens` tokens cut by the length limit.
export function complete_by_length(r, maxTokens) {
  return r.status === 200 && r.done && r.finish === 'length' && r.usage?.completion_tokens === maxTokens && !r.error;
}
