from fusion.embedded.server import main

main()
