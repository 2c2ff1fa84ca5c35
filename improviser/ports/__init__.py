"""MIDI ports: mido + python-rtmidi (ALSA, JACK, CoreMIDI, Windows), stuck-note safety, reconnecting outputs.

Knows nothing of music or models; ``improviser.live`` plays into these.
"""
