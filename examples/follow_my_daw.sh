#!/usr/bin/env bash
# Let a DAW drive the improviser by MIDI clock: it starts, stops and changes tempo with the DAW.
# 1. Run this: it opens a virtual input "improviser:in" and a virtual output "improviser:out".
# 2. In the DAW: send MIDI clock (and the track you want it to hear) to "improviser:in",
#    and record an instrument track whose MIDI input is "improviser:out".
#    JACK:  jack_connect <daw>:midi_out improviser:in ; jack_connect improviser:out <daw>:midi_in
#    ALSA:  aconnect <daw client>:<port> improviser:1 ; aconnect improviser:0 <daw client>:<port>
# 3. Press play in the DAW. Nothing sounds before Start; every note stops on Stop.
set -euo pipefail
improviser play --input virtual --sync clock --mode accompany --sessions sessions/ "$@"
