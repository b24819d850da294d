from runstream.cli.main import main

main()
