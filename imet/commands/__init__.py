"""The commands of `python -m imet`, grouped by concern: configure_<command>(parser) and
run_<command>(args) -> int, mapped by imet/cli.py; nothing here is imported until it is run."""
