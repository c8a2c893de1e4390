"""CLI subcommands, one module each (see fleettwin.cli)."""
