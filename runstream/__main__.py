from runstream.cli import main

main()
