#!/usr/bin/env bash
# Debian packages the corpus recipe needs (TTS engines, public-domain text), IRSTLM for the demo's n-gram LM and
# pocketsphinx-testdata (recorded human speech the demo decodes). Skips apt when all are present.
set -euo pipefail
packages=(espeak-ng festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts festlex-cmu flite bible-kjv wordnet-base irstlm pocketsphinx-testdata)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
