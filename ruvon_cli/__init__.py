"""The command line (Typer + rich). The library, `ruvoninference`, never imports this package."""
