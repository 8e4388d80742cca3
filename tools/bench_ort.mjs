// tools/bench_ort.mjs -- the ONNX Runtime peer of the benchmark: times the graphs that
// tools/export_onnx.py wrote, on the same weights as ours, and prints one JSON object.
//
//   node tools/bench_ort.mjs ONNX_DIR [--ort PATH] [--threads 2] [--runs 10]
//
// PATH is the onnxruntime-node package folder (default $ORT_NODE, else
// /tmp/ortpeer/node_modules/onnxruntime-node), installed with
//   mkdir -p /tmp/ortpeer && cd /tmp/ortpeer && ONNXRUNTIME_NODE_INSTALL=skip npm install onnxruntime-node
// (the post-install step wants a network we do not have; the CPU library ships in the package).
// Before timing, the outputs are checked against PyTorch's in ONNX_DIR/check.json (cosine).
// Times are for the model alone (inputs already tensors): no decode, resize or tokenizing.
// Each measurement is the median of --runs runs after two warm-up runs.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';

function usage(msg) {
  process.stderr.write(`bench_ort.mjs: ${msg}\nusage: node tools/bench_ort.mjs ONNX_DIR [--ort PATH] [--threads N] [--runs N]\n`);
  process.exit(2);
}

const args = process.argv.slice(2);
let dir = null;
let ortPath = process.env.ORT_NODE || '/tmp/ortpeer/node_modules/onnxruntime-node';
let threads = 2;
let runs = 10;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--ort') ortPath = args[++i];
  else if (args[i] === '--threads') threads = parseInt(args[++i], 10);
  else if (args[i] === '--runs') runs = parseInt(args[++i], 10);
  else if (dir === null) dir = args[i];
  else usage(`unexpected argument ${args[i]}`);
}
if (dir === null) usage('ONNX_DIR is required');
if (!(threads > 0) || !(runs > 0)) usage('--threads and --runs take positive integers');

let ort;
try {
  ort = createRequire(import.meta.url)(ortPath);
} catch (e) {
  process.stdout.write(JSON.stringify({ peer: 'onnxruntime', available: false,
    reason: `cannot load onnxruntime-node from ${ortPath}: ${e.message.split('\n')[0]}` }) + '\n');
  process.exit(0);
}

const check = JSON.parse(readFileSync(join(dir, 'check.json'), 'utf8'));
const n = check.image_size;
const ctx = check.context_length;
const opts = { intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: 'sequential',
  graphOptimizationLevel: 'all' };

function cosine(a, b) {
  let ab = 0, aa = 0, bb = 0;
  for (let i = 0; i < a.length; i++) { ab += a[i] * b[i]; aa += a[i] * a[i]; bb += b[i] * b[i]; }
  return ab / Math.sqrt(aa * bb);
}

function median(xs) {
  const s = [...xs].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

async function timeIt(fn) {
  for (let i = 0; i < 2; i++) await fn();
  const ts = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await fn();
    ts.push(performance.now() - t0);
  }
  return median(ts);
}

function images(batch) {
  const per = 3 * n * n;
  const data = new Float32Array(batch * per);
  for (let b = 0; b < batch; b++)
    for (let i = 0; i < per; i++) data[b * per + i] = Math.fround(Math.sin(0.37 * i));
  return new ort.Tensor('float32', data, [batch, 3, n, n]);
}

function texts(ids, batch) {
  const data = new BigInt64Array(batch * ctx);
  for (let b = 0; b < batch; b++)
    for (let i = 0; i < ctx; i++) data[b * ctx + i] = BigInt(ids[i]);
  return new ort.Tensor('int64', data, [batch, ctx]);
}

const out = { peer: 'onnxruntime', available: true, version: ort.env.versions?.common ?? null,
  threads, runs };
let t0 = performance.now();
const vision = await ort.InferenceSession.create(join(dir, 'vision.onnx'), opts);
out.vision_load_ms = performance.now() - t0;
t0 = performance.now();
const text = await ort.InferenceSession.create(join(dir, 'text.onnx'), opts);
out.text_load_ms = performance.now() - t0;

const img1 = images(1), img8 = images(8);
const short1 = texts(check.short_ids, 1), short8 = texts(check.short_ids, 8);
const long1 = texts(check.long_ids, 1), long8 = texts(check.long_ids, 8);
const runImage = (t) => vision.run({ pixel_values: t });
const runText = (t) => text.run({ input_ids: t });

const ci = (await runImage(img1)).image_embeds.data;
const cs = (await runText(short1)).text_embeds.data;
const cl = (await runText(long1)).text_embeds.data;
out.check = { image_cosine: cosine(ci, check.image_embed), short_text_cosine: cosine(cs, check.short_embed),
  long_text_cosine: cosine(cl, check.long_embed) };
if (Math.min(out.check.image_cosine, out.check.short_text_cosine, out.check.long_text_cosine) < 0.9999) {
  out.available = false;
  out.reason = 'exported graphs disagree with PyTorch';
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(1);
}

out.image_b1_ms = await timeIt(() => runImage(img1));
const b8 = await timeIt(() => runImage(img8));
out.image_b8_ms = b8;
out.image_b8_per_s = 8000 / b8;
out.text_short_b1_ms = await timeIt(() => runText(short1));
out.text_long_b1_ms = await timeIt(() => runText(long1));
const s8 = await timeIt(() => runText(short8));
out.text_short_b8_ms = s8;
out.text_short_b8_per_s = 8000 / s8;
const l8 = await timeIt(() => runText(long8));
out.text_long_b8_ms = l8;
out.text_long_b8_per_s = 8000 / l8;
process.stdout.write(JSON.stringify(out) + '\n');
