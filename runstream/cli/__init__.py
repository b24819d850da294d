"""The command line and the demo: the top layer, which may import every other."""
