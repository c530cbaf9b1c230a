"""The command line: thin typer commands over persona.porcelain."""
