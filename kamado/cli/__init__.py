"""The `kamado` command: one module per subcommand, each with main(argv) -> exit code."""
