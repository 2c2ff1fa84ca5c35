#!/usr/bin/env bash
# Play the improviser into a software synth (FluidSynth) and record each 30 s session.
# Linux with the ALSA sequencer (the default API). Needs: fluidsynth and a General MIDI soundfont
# (Debian/Ubuntu: sudo apt-get install fluidsynth fluid-soundfont-gm).
# The same synth built in, with nothing to wire: improviser play --synth (pip install -e '.[synth]').
set -euo pipefail
fluidsynth -a pulseaudio -g 0.8 -s -i /usr/share/sounds/sf2/FluidR3_GM.sf2 &   # -s: a server, no prompt
synth=$!
trap 'kill $synth' EXIT
sleep 2
# Connect by name: the improviser plays straight into the synth's port.
improviser play --sessions sessions/ --output FLUID --bpm 90 --stability 2
# Alternatively leave --output out: it opens a virtual port "improviser:out", then wire it with
#   aconnect -l                       # find the client numbers
#   aconnect improviser:0 FLUID:0     # ALSA;  with --api jack:  jack_connect improviser:out <synth port>
# In a DAW: pick "improviser" as the MIDI input of an instrument track and arm it.
