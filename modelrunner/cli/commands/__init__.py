"""One module per verb; cli.main discovers the Command subclasses defined here."""
