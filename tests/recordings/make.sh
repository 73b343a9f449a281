#!/bin/sh
# Makes the speech recordings the voice tests play as a caller: 16 kHz mono 16-bit WAV,
# and the same speech as a phone carries it (8 kHz mu-law, raw) for the telephony tests.
# Run once (needs espeak-ng and sox); the WAVs are committed so that the timings the
# tests see do not move with espeak's version.
set -eu
cd "$(dirname "$0")"
say() {
  espeak-ng -v en-us -s 150 -w raw.wav "$2"
  sox raw.wav -r 16000 -c 1 -b 16 "$1.wav"
  sox "$1.wav" -r 8000 -c 1 -e mu-law -t raw "$1.ulaw"
  rm -f raw.wav
}
say order_status "Hello, I would like to know where my order is."
say thank_you "Thank you, that is all for today."
