#!/bin/sh
# Makes the line the demo's caller says over WebRTC: 16 kHz mono 16-bit WAV. Run once
# (needs espeak-ng and sox); the WAV is shipped with the package, so the demo needs
# neither to call its bot.
set -eu
cd "$(dirname "$0")"
espeak-ng -v en-us -s 150 -w raw.wav "Hi, where is my order?"
sox raw.wav -r 16000 -c 1 -b 16 where_is_my_order.wav
rm -f raw.wav
