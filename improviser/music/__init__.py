"""Music as data: the step grid and MIDI files, key and profile analysis, held-out melodies, listening measures.

The lowest layer: numpy only (music21 for the corpus), no model, no clock, no MIDI ports.
"""
