// Times HuggingFace's tokenizers (npm package `tokenizers`) encoding the benchmark lines, as the baseline of
// SharpLens.TokenizerBench. Run with RAYON_NUM_THREADS=1 so that encodeBatch uses one thread.
//
//   node oracle-bench.js MODULES_DIR TOKENIZER_JSON WARMUP_JSON LINES_JSON PASSES IDS_OUT
//
// Loads the tokenizer, encodes the warm-up lines (other text of the same kind), then times PASSES passes over
// the benchmark lines, each one encodeBatch call without special tokens. Prints
// {"load": s, "passes": [s, ...], "tokens": n}; writes every line's ids to IDS_OUT (int32 little-endian: for each
// line its count, then its ids) so the contestants' ids can be compared with the oracle's.
'use strict';
const fs = require('fs');
const path = require('path');
const [modules, tokenizerJson, warmupJson, linesJson, passesArg, idsOut] = process.argv.slice(2);
const { Tokenizer } = require(path.join(modules, 'tokenizers'));

(async () => {
  const warmup = JSON.parse(fs.readFileSync(warmupJson, 'utf8'));
  const lines = JSON.parse(fs.readFileSync(linesJson, 'utf8'));
  let t0 = process.hrtime.bigint();
  const tokenizer = Tokenizer.fromFile(tokenizerJson);
  const load = Number(process.hrtime.bigint() - t0) / 1e9;
  await tokenizer.encodeBatch(warmup, { addSpecialTokens: false });
  const passes = [];
  let encodings;
  for (let r = 0; r < Number(passesArg); r++) {
    t0 = process.hrtime.bigint();
    encodings = await tokenizer.encodeBatch(lines, { addSpecialTokens: false });
    passes.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  let total = 0;
  const chunks = [];
  for (const e of encodings) {
    const ids = e.getIds();
    total += ids.length;
    const buf = Buffer.alloc(4 * (ids.length + 1));
    buf.writeInt32LE(ids.length, 0);
    for (let i = 0; i < ids.length; i++) buf.writeInt32LE(ids[i], 4 * (i + 1));
    chunks.push(buf);
  }
  fs.writeFileSync(idsOut, Buffer.concat(chunks));
  console.log(JSON.stringify({ load, passes, tokens: total }));
})().catch(e => { console.error(e && e.stack || String(e)); process.exit(1); });
