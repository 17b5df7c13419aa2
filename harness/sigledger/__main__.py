from sigledger.cli import main

main()
