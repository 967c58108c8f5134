"""Kaggle: inside a session (session.py), push-ready kernels (render.py), the local Kaggle
(emulator.py, platform_env.py) and campaigns of kernels across sessions (campaign/).

Where Kaggle mounts a session's inputs, below /kaggle/input: today nested, each kind in its own
folder and this many folders down to the input (competitions/<slug>, datasets/<owner>/<slug>,
notebooks/<owner>/<slug>, models/<owner>/<model>/<framework>/<variation>/<version>); older
sessions mounted each at <slug>/ (flat). Torch-free here: the command line's parser reads it."""
COMPETITIONS, DATASETS, NOTEBOOKS, MODELS = "competitions", "datasets", "notebooks", "models"
INPUT_LEVELS = {COMPETITIONS: 1, DATASETS: 2, NOTEBOOKS: 2, MODELS: 5}
LAYOUTS = ("nested", "flat")  # the emulator's (`--input-layout`); nested is today's Kaggle
