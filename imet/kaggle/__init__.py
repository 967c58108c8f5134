"""Kaggle: inside a session (session.py), push-ready kernels (render.py), the local Kaggle
(emulator.py, platform_env.py) and campaigns of kernels across sessions (campaign/)."""
