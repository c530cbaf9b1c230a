"""``python -m persona`` (and ``accelerate launch -m persona``) run the CLI."""

from persona.cli.app import main

main()
