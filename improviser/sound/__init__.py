"""Sound: the built-in General MIDI synth (FluidSynth with a GM SoundFont).

- ``synth``: finding FluidSynth and a SoundFont, and ``LiveSynth``, a sink of the live engine that
  sounds every message the MIDI port gets, at the same moment, through an audio driver.
- ``render``: a MIDI file to a WAV, the synth driven offline frame by frame.

This layer imports ``errors`` and ``music`` only; ``live`` and the CLI use it.
"""
