#!/usr/bin/env bash
# Make samples/sample.wav: ~8 s, 32 kHz mono 16-bit, for `make run` and the docs.
#   0.0–3.2 s  speech (espeak-ng), over light pink noise
#   3.2–6.0 s  a siren: a sine sweeping 650↔1300 Hz (sox synth)
#   6.0–8.0 s  an alarm: 1 kHz square-wave beeps, 0.15 s on / 0.1 s off
# Deterministic: espeak-ng has no randomness and sox runs with -R (repeatable noise and dither).
# Needs espeak-ng and sox (scripts/system-deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-samples/sample.wav}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rate=32000
sox_=(sox -R -V1)

espeak-ng -v en-us -s 165 -w "$tmp/speech-raw.wav" "Hello, this is streamtag, listening to the world."
"${sox_[@]}" "$tmp/speech-raw.wav" -r $rate -c 1 "$tmp/speech.wav" trim 0 3.2 pad 0 3.2 trim 0 3.2 norm -3

# siren: four 0.7 s sweeps up and down
"${sox_[@]}" -n -r $rate -c 1 "$tmp/up.wav" synth 0.35 sine 650:1300 vol 0.6 fade h 0.03 0.35 0.03
"${sox_[@]}" -n -r $rate -c 1 "$tmp/down.wav" synth 0.35 sine 1300:650 vol 0.6 fade h 0.03 0.35 0.03
"${sox_[@]}" "$tmp/up.wav" "$tmp/down.wav" "$tmp/up.wav" "$tmp/down.wav" "$tmp/up.wav" "$tmp/down.wav" \
    "$tmp/up.wav" "$tmp/down.wav" "$tmp/siren.wav" trim 0 2.8

# alarm: eight beeps
"${sox_[@]}" -n -r $rate -c 1 "$tmp/beep.wav" synth 0.15 square 1000 vol 0.35 fade h 0.005 0.15 0.005 pad 0 0.1
"${sox_[@]}" $(for _ in 1 2 3 4 5 6 7 8; do echo "$tmp/beep.wav"; done) "$tmp/alarm.wav" trim 0 2.0

"${sox_[@]}" "$tmp/speech.wav" "$tmp/siren.wav" "$tmp/alarm.wav" "$tmp/events.wav"
"${sox_[@]}" -n -r $rate -c 1 "$tmp/noise.wav" synth 8.0 pinknoise vol 0.05
mkdir -p "$(dirname "$out")"
"${sox_[@]}" -m "$tmp/events.wav" "$tmp/noise.wav" -r $rate -c 1 -b 16 "$out" norm -1
soxi "$out" | grep -E 'Sample Rate|Channels|Duration|File Size' >&2
