#!/usr/bin/env bash
# Call and response with a keyboard: play a phrase, pause, and the improviser answers in your key.
#   examples/answer_my_keyboard.sh "Keystation"      # any part of your keyboard's MIDI port name
# `improviser ports` lists the names. Linux/ALSA shown; add --api jack on JACK/PipeWire.
set -euo pipefail
keyboard="${1:?give part of the name of the keyboard MIDI port - see: improviser ports}"
# --output: any synth or DAW input (here FluidSynth's port, see pipe_into_a_synth.sh); leave it out
# to get a virtual port "improviser:out" to connect a DAW track to.
# --bpm auto: it answers at the tempo, and on the beat, of the phrase you played (and says the tempo it took).
improviser play --input "$keyboard" --output FLUID --mode respond --respond-after 2 \
    --bpm auto --stability 2 --sessions sessions/ --plot
# While it runs: CC 74 on your keyboard = temperature, CC 71 = note stability, CC 119 = panic (with a
# number for --bpm, CC 76 = tempo). Each session (your notes on the `player` track) lands in sessions/ with a PNG.
