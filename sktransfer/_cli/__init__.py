"""The commands of ``sktransfer``, one module per command, each with a
``run(args)`` returning the exit status; :mod:`sktransfer.cli` parses the
command line and imports the module of the command it runs (so that the
help needs none of them)."""
