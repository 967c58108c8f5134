"""Kaggle: inside a session (session.py), push-ready kernels (render.py), the local Kaggle
(emulator.py, platform_env.py) and campaigns of kernels across sessions (campaign/).

Where Kaggle mounts a session's inputs, below /kaggle/input: today nested, each kind in its own
folder and this many folders down to the input (competitions/<slug>, datasets/<owner>/<slug>,
notebooks/<owner>/<slug>, models/<owner>/<model>/<framework>/<variation>/<version>); older
sessions mounted each at <slug>/ (flat). Torch-free here: the command line's parser reads it."""
COMPETITIONS, DATASETS, NOTEBOOKS, MODELS = "competitions", "datasets", "notebooks", "models"
INPUT_LEVELS = {COMPETITIONS: 1, DATASETS: 2, NOTEBOOKS: 2, MODELS: 5}
LAYOUTS = ("nested", "flat")  # the emulator's (`--input-layout`); nested is today's Kaggle
# How long a submission kernel may run in each iMet competition, in seconds: the inference kernel
# plans its prediction into it (`imet predict --time-budget`), the campaign checks its plan
# against it. 2019: 9 h (a kernels-only competition); 2020 and 2021: Kaggle's usual 9 h for a
# code competition's notebook, not verified on their pages.
SUBMISSION_LIMIT_S = {"imet-2019-fgvc6": 9 * 3600, "imet-2020-fgvc7": 9 * 3600,
                      "imet-2021-fgvc8": 9 * 3600}
