"""One module per `python -m imet <command>`: each defines `configure(parser)` and
`run(args) -> int`. imet/cli.py lists them; nothing here is imported until it is run."""


