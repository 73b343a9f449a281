#!/bin/sh
# Makes the speech recordings the voice tests play as a caller: 16 kHz mono 16-bit WAV.
# Run once (needs espeak-ng and sox); the WAVs are committed so that the timings the
# tests see do not move with espeak's version.
set -eu
cd "$(dirname "$0")"
say() {
  espeak-ng -v en-us -s 150 -w raw.wav "$2"
  sox raw.wav -r 16000 -c 1 -b 16 "$1.wav"
  rm -f raw.wav
}
say order_status "Hello, I would like to know where my order is."
say thank_you "Thank you, that is all for today."
