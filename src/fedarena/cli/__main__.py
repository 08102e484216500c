from fedarena.cli import main

main()
