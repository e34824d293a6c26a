"""The CLI's subcommands. Each module has ``add_arguments(parser)`` and ``run(args, ctx)``."""
