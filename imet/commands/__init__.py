"""The commands of `python -m imet`, grouped by concern: a module defines configure_<command>
(parser) and run_<command>(args) -> int for each of its commands. imet/cli.py maps command
names to them; nothing here is imported until it is run."""
