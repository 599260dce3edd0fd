// The tokenizer oracle: HuggingFace's tokenizers (Rust, through its Node binding, npm package `tokenizers`)
// encodes and decodes a corpus with each tokenizer.json of a job, and writes what it got. One process does
// the whole job, so the tests pay for node's start and each tokenizer's load once.
//
//   node oracle.js JOB.json OUT.json
//
// JOB.json:  {"items": [{"name": "...", "tokenizer": "/path/tokenizer.json", "texts": ["...", ...],
//                          "idLists": [[id, ...], ...]}, ...]}
// OUT.json:  {"oracle": "tokenizers@x.y.z", "items": {"<name>": {"results": [
//              {"ids": [...], "tokens": [...], "idsSpecial": [...], "tokensSpecial": [...],
//               "decoded": "...", "decodedSkipSpecial": "..."}            (decoded from idsSpecial)
//              or {"error": "..."} when the oracle rejects the text],
//              "decodedIdLists": ["...", ...], "decodedIdListsSkipSpecial": ["...", ...]}}}
//
// Texts may hold lone surrogates (escaped in the JSON); the binding turns them into U+FFFD on the way to Rust.
'use strict';
const fs = require('fs');
const path = require('path');

const modules = process.env.TOKENIZER_ORACLE_MODULES || path.join(__dirname, '..', 'npm', 'node_modules');
const { Tokenizer } = require(path.join(modules, 'tokenizers'));
const version = require(path.join(modules, 'tokenizers', 'package.json')).version;

async function encodeAll(tokenizer, texts, addSpecialTokens) {
  try {
    return await tokenizer.encodeBatch(texts, { addSpecialTokens });
  } catch (e) {
    // One text the oracle rejects fails the batch: encode one by one to find it, keeping the others.
    const out = [];
    for (const t of texts) {
      try { out.push(await tokenizer.encode(t, null, { addSpecialTokens })); } catch (err) { out.push(String(err && err.message || err)); }
    }
    return out;
  }
}

async function decodeAll(tokenizer, idLists, skip) {
  try {
    return await tokenizer.decodeBatch(idLists, skip);
  } catch (e) {
    const out = [];
    for (const ids of idLists) {
      try { out.push(await tokenizer.decode(ids, skip)); } catch (err) { out.push({ error: String(err && err.message || err) }); }
    }
    return out;
  }
}

async function main() {
  const [jobPath, outPath] = process.argv.slice(2);
  if (!jobPath || !outPath) throw new Error('usage: node oracle.js JOB.json OUT.json');
  const job = JSON.parse(fs.readFileSync(jobPath, 'utf8'));
  const items = {};
  for (const item of job.items) {
    const tokenizer = Tokenizer.fromFile(item.tokenizer);
    const plain = await encodeAll(tokenizer, item.texts, false);
    const special = await encodeAll(tokenizer, item.texts, true);
    const okIds = special.map(e => (typeof e === 'string' ? [] : e.getIds()));
    const decoded = await decodeAll(tokenizer, okIds, false);
    const decodedSkip = await decodeAll(tokenizer, okIds, true);
    const results = item.texts.map((_, i) => {
      const p = plain[i], s = special[i];
      if (typeof p === 'string' || typeof s === 'string') return { error: typeof p === 'string' ? p : s };
      if (typeof decoded[i] !== 'string' || typeof decodedSkip[i] !== 'string') return { error: 'decode failed: ' + JSON.stringify([decoded[i], decodedSkip[i]]) };
      return {
        ids: p.getIds(), tokens: p.getTokens(), idsSpecial: s.getIds(), tokensSpecial: s.getTokens(),
        decoded: decoded[i], decodedSkipSpecial: decodedSkip[i],
      };
    });
    // Arbitrary id sequences: decoding must agree where encoding never leads (broken UTF-8, stray special tokens).
    const idLists = item.idLists || [];
    items[item.name] = {
      results,
      decodedIdLists: await decodeAll(tokenizer, idLists, false),
      decodedIdListsSkipSpecial: await decodeAll(tokenizer, idLists, true),
    };
  }
  // Written to a temporary name and renamed, so a cache never holds a half-written file.
  fs.writeFileSync(outPath + '.tmp', JSON.stringify({ oracle: 'tokenizers@' + version, items }));
  fs.renameSync(outPath + '.tmp', outPath);
}

main().catch(e => { console.error(e && e.stack || String(e)); process.exit(1); });
