// The ONNX oracle: runs every case of tests/fixtures/onnx/cases.json through
// onnxruntime (CPU) and writes each output as raw little-endian values
// (OUT_DIR/CASE.OUTPUT.bin) with ort.json naming their element types and
// shapes, for test_onnx_vision's parity case to compare hostrun against.
//   node ort_outputs.mjs NODE_MODULES FIXTURE_DIR OUT_DIR
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

const [nodeModules, fixtures, out] = process.argv.slice(2);
if (!out) {
  console.error('usage: node ort_outputs.mjs NODE_MODULES FIXTURE_DIR OUT_DIR');
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(nodeModules), 'x.js'));
const ort = require('onnxruntime-node');

const cases = JSON.parse(fs.readFileSync(path.join(fixtures, 'cases.json'), 'utf8'));
fs.mkdirSync(out, { recursive: true });
const summary = {};
for (const c of cases) {
  // Full graph optimizations could fuse and reorder float math; the oracle runs the graph as written.
  const session = await ort.InferenceSession.create(path.join(fixtures, c.model), {
    executionProviders: ['cpu'], graphOptimizationLevel: 'disabled', intraOpNumThreads: 1,
  });
  const feeds = {};
  for (const input of c.inputs) {
    const bytes = fs.readFileSync(path.join(fixtures, input.file));
    const data = input.dtype === 'float32'
      ? new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4)
      : new BigInt64Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    feeds[input.name] = new ort.Tensor(input.dtype, data, input.shape);
  }
  const results = await session.run(feeds);
  summary[c.name] = {};
  for (const name of c.outputs) {
    const t = results[name];
    let data = t.data;
    let type = t.type;
    if (type === 'bool') {  // written as int64 0 / 1, the executor's integers
      data = BigInt64Array.from(Array.from(data, (v) => BigInt(v ? 1 : 0)));
      type = 'int64';
    }
    fs.writeFileSync(path.join(out, `${c.name}.${name}.bin`), Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    summary[c.name][name] = { type, dims: Array.from(t.dims) };
  }
}
fs.writeFileSync(path.join(out, 'ort.json'), JSON.stringify(summary, null, 1));
console.log(`onnxruntime ${ort.env.versions?.common ?? ''}: ${cases.length} cases written to ${out}`);
