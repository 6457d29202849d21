from capaug.cli.app import main

main()
