"""The improviser as a Python object: a stateful generator you step yourself.

    python examples/python_api.py
"""

from improviser import Frame, StreamingGenerator, load_checkpoint
from improviser.model import default_checkpoint

model, info = load_checkpoint(default_checkpoint())
print(f"model trained on {info['trained_on']}")
gen = StreamingGenerator(model, temperature=0.9, note_stability=2, seed=1)

# Let it hear a C major chord for a beat (4 steps): the chord moves its hidden state.
gen.step(heard=Frame.of(onset=[48, 64, 67, 72]), play=False)
for _ in range(3):
    gen.step(heard=Frame.of(held=[48, 64, 67, 72]), play=False)

names = "C C# D Eb E F F# G Ab A Bb B".split()
for step in range(16):  # one bar of 16th notes
    frame = gen.step()
    struck = [f"{names[p % 12]}{p // 12 - 1}" for p in frame.onset.nonzero()[0]]
    print(f"step {step:2d}: sounding {frame.pitches}  struck {' '.join(struck) or '-'}")
