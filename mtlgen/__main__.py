from mtlgen.cli import app

app()
