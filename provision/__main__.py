from provision.cli.main import entry

entry()
