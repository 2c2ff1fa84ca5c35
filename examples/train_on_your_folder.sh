#!/usr/bin/env bash
# Train the improviser on your own MIDI files, then hear what it learned.
#   examples/train_on_your_folder.sh ~/midi/my-pieces
# Unreadable files are skipped and counted; the folder is searched recursively.
set -euo pipefail
folder="${1:?give a folder of MIDI files}"
improviser train "$folder" --out mine.pt --epochs 30     # best checkpoint by validation loss -> mine.pt
improviser generate mine-30s.mid --checkpoint mine.pt --seconds 30
improviser plot mine-30s.mid mine-30s.png
echo "wrote mine.pt, mine-30s.mid and mine-30s.png; send mine.pt to a friend: it holds only tensors"
