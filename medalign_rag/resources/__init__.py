"""Files that ship with the package: the default answering prompt and the demo config."""
