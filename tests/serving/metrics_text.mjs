// Prometheus text (GET /metrics) as { 'name{labels}': value }; comments and
// blank lines skipped. No imports, so tests and scripts share it freely.
export function parse_metrics(text) {
  const out = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out[line.slice(0, at)] = Number(line.slice(at + 1));
  }
  return out;
}
